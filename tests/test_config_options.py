"""Recipe vs run, one table of options, and checks that answer before anything heavy loads."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from histomlf.choices import AUGMENT_CHOICES, TTA_CHOICES
from histomlf.cli import main
from histomlf.cli.errors import shown_as_one_line
from histomlf.cli.options import use_experiment_name
from histomlf.cli.train import next_steps
from histomlf.config import ConfigError, TrainConfig, recipe_fields, run_fields, verb_fields
from histomlf.errors import UserError
from histomlf.tuning.settings import SearchSettings, SearchSpec, setting_names
from histomlf.tuning.tuner_table import tuner_names

# A generous bound that still fails the old behaviour (TensorFlow and MLflow imported, a run
# opened: 10-20 s on the shared test machine).
FAST_S = 3.0
# Free-text run options need a valid value of their own; the others are derived from the field.
RUN_TEXT_CHANGED = {
    "data_dir": "/elsewhere/idc",
    "register_as": "idc-classifier",
    "devices": "2",
    "experiment": "vgg16",
}


def changed_value(field: dataclasses.Field) -> object:
    """A valid value other than `field`'s default: another choice, the other bool, one more."""
    if field.name in RUN_TEXT_CHANGED:
        return RUN_TEXT_CHANGED[field.name]
    choices = field.metadata.get("choices")
    if choices:
        return next(c for c in (choices() if callable(choices) else choices)
                    if c != field.default)
    if isinstance(field.default, bool):
        return not field.default
    if isinstance(field.default, int | float):
        return field.default + 1
    return f"{field.default}-changed"


RUN_OPTIONS_CHANGED = {f.name: changed_value(f) for f in dataclasses.fields(TrainConfig)
                       if f.name in run_fields()}


def options_of(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


def test_run_fields_are_the_run_plumbing() -> None:
    changed = TrainConfig().replace(**RUN_OPTIONS_CHANGED)  # valid, and every one changed
    assert all(getattr(changed, k) != getattr(TrainConfig(), k) for k in run_fields())
    assert set(recipe_fields()) | set(run_fields()) == {
        f.name for f in dataclasses.fields(TrainConfig)
    }
    assert set(TrainConfig().as_params()) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_only_the_recipe_names_the_run_and_its_work_folder() -> None:
    from histomlf.recipes.train import resumable_work_dir, train_run_name

    data = SimpleNamespace(data_digest="d" * 8, split_digest="s" * 8)
    base = TrainConfig(data_dir="/data/idc")
    moved = base.replace(**{**RUN_OPTIONS_CHANGED, "data_dir": "/mnt/copy/idc"})
    assert base.recipe_digest() == moved.recipe_digest()
    assert resumable_work_dir(base, data) == resumable_work_dir(moved, data)
    assert train_run_name(base) == train_run_name(moved.replace(data_dir="/other/idc"))
    for change in ({"epochs": 6}, {"augment": "strong"}, {"seed": 1}, {"max_samples": 10}):
        assert base.replace(**change).recipe_digest() != base.recipe_digest(), change
        assert resumable_work_dir(base.replace(**change), data) != resumable_work_dir(base, data)
    other_data = SimpleNamespace(data_digest="e" * 8, split_digest="s" * 8)
    assert resumable_work_dir(base, other_data) != resumable_work_dir(base, data)


def test_each_verb_offers_the_recipe_and_only_the_run_options_it_uses() -> None:
    verbs = {name: options_of(main.commands[name]) for name in ("train", "cv", "tune")}
    for name, options in verbs.items():
        assert set(recipe_fields()) <= set(options), name
        assert "experiment_name" in options and "experiment" in options, name
    assert set(run_fields()) - {"experiment"} <= set(verbs["train"])
    for name, options in verbs.items():
        taken = set(verb_fields(name))
        assert taken == set(options) & {f.name for f in dataclasses.fields(TrainConfig)}, name
    # cv registers only its --final ensemble model; it explains nothing.
    assert "explain" not in verbs["cv"] and {"register_as", "gate_metric"} <= set(verbs["cv"])
    assert "devices" not in verbs["tune"] and set(setting_names()) <= set(verbs["tune"])
    assert not set(setting_names()) - {"log_models"} & set(verbs["train"])


def test_options_are_generated_from_the_field_metadata() -> None:
    train = options_of(main.commands["train"])
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name, option in train.items():
        if name in fields and name != "experiment":  # -e: the file itself, not a field value
            assert option.help == fields[name].metadata["help"], name
            assert option.default is None, name
            assert f"--{name.replace('_', '-')}" in option.opts, name
            if "_" in name:
                assert f"--{name}" in option.opts, name  # the `mlflow run -P key=value` twin
    assert list(train["augment"].type.choices) == list(AUGMENT_CHOICES)
    assert list(train["tta"].type.choices) == list(TTA_CHOICES)
    assert train["explain"].type is click.BOOL and train["epochs"].type is click.INT
    tune = options_of(main.commands["tune"])
    assert list(tune["tuner"].type.choices) == tuner_names()
    search_fields = {f.name: f for f in dataclasses.fields(SearchSettings)}
    for name in setting_names():
        assert tune[name].help == search_fields[name].metadata["help"], name


def test_every_tuner_of_the_table_is_a_keras_tuner_oracle() -> None:
    """The table is the only list of tuners: each names an oracle `IdcTuner` runs."""
    import keras_tuner as kt

    from histomlf.tuning.tuner_table import TunerSpec, _table, tuner_spec
    from histomlf.tuning.tuners import create_oracle

    assert tuner_names() == ["bayesian", "grid", "hyperband", "random"]
    for name in tuner_names():
        oracle = create_oracle(SearchSettings(tuner=name, max_trials=7), TrainConfig(seed=3))
        assert isinstance(oracle, kt.Oracle) and (oracle.max_trials, oracle.seed) == (7, 3)
        assert oracle.objective.name == "val_roc_auc"
    with pytest.raises(ValueError, match="two tuners are named 'a'"):
        _table(TunerSpec("a", "RandomSearchOracle"), TunerSpec("a", "GridSearchOracle"))
    with pytest.raises(ConfigError, match="unknown tuner 'optuna'"):
        tuner_spec("optuna")


@pytest.mark.parametrize(
    ("config", "settings", "message"),
    [
        (TrainConfig(devices="2"), SearchSettings(), "devices=2 applies to train and cv"),
        (
            TrainConfig(snapshots=2, epochs=4, lr_schedule="cosine", early_stopping_patience=0),
            SearchSettings(),
            "snapshots=2 applies to train and cv",
        ),
        (TrainConfig(), SearchSettings(tuner="hyperband", space={"epochs": [1, 2]}),
         "hyperband sets each trial's epochs itself"),
    ],
)
def test_two_setting_checks_run_when_the_search_is_specified(config, settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchSpec(config, settings)


def test_user_errors_are_one_line_and_bugs_keep_their_traceback() -> None:
    with pytest.raises(click.ClickException, match="^bad key$"):
        with shown_as_one_line():
            raise ConfigError("bad key")
    with pytest.raises(click.ClickException, match="^first$"):
        with shown_as_one_line():
            raise UserError("first\nsecond")
    for bug in (ValueError("a bug"), RuntimeError("a bug in a search")):
        with pytest.raises(type(bug), match="a bug"):
            with shown_as_one_line():
                raise bug


def test_next_steps_are_numbered_as_printed_and_name_the_website() -> None:
    from histomlf.cli.train import print_summary
    from histomlf.evaluation.metrics import HEADLINE, headline_keys

    metrics = {k: 0.5 for k in headline_keys("test_", HEADLINE)}  # what the summary prints
    gate = SimpleNamespace(name="idc-classifier", version="3", alias="champion", reason="first")
    for result, count in (({}, 2), ({"gate": gate}, 4)):
        full = {"run_id": "r", "model_uri": "m", "metrics": metrics, **result}

        @click.command()
        def show(full=full) -> None:
            print_summary(full)

        lines = CliRunner().invoke(show).output.splitlines()
        numbered = [line for line in lines if line[:4].strip().rstrip(".").isdigit()]
        assert [line.split(".")[0].strip() for line in numbered] == [
            str(n) for n in range(1, count + 1)
        ]
        assert len(next_steps(full)) == count
    assert any(
        "histomlf web --model models:/idc-classifier@champion" in step
        for step in next_steps({"gate": gate})
    )


def test_experiment_name_is_mlflows_and_refuses_a_conflict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    use_experiment_name("")
    assert "MLFLOW_EXPERIMENT_NAME" not in os.environ
    use_experiment_name("idc-study")
    assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "idc-study"
    with pytest.raises(ConfigError, match="already decides"):
        use_experiment_name("x", fixed_by="the search's parent run P")
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")
    with pytest.raises(ConfigError, match="mlflow run --experiment-name"):
        use_experiment_name("x")


UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    env["HISTOMLF_CACHE"] = str(tmp_path / "cache")
    return env


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data-dir", "/nonexistent"], "data_dir='/nonexistent': no such folder"),
        (["cv", "--data-dir", "/nonexistent"], "data_dir='/nonexistent': no such folder"),
        (["tune", "--data-dir", "/nonexistent"], "data_dir='/nonexistent': no such folder"),
        (["tune", "--snapshots", "2", "--epochs", "2", "--lr-schedule", "cosine",
          "--early-stopping-patience", "0"], "snapshots=2 applies to train and cv"),
        (["predict", "models:/idc-classifier", "."], "malformed model URI 'models:/idc-classif"),
        (["predict", "runs:/abc", "."], "malformed model URI 'runs:/abc'"),
        (["predict", "/no/such/model", "."], "no model at '/no/such/model'"),
        (["evaluate", "models:/idc@champion", "/nonexistent"], "no data at '/nonexistent'"),
        # well-formed but naming nothing: the store is asked without MLflow (and not created)
        (["predict", "models:/no-such-model@champion", "."], "no registered model 'no-such-m"),
        (["predict", "models:/no-such-model/1", "."], "no registered model 'no-such-model'"),
        (["predict", f"runs:/{UNKNOWN_RUN}/model", "."], f"no run '{UNKNOWN_RUN}'"),
    ],
)
def test_a_mistake_answers_in_seconds_and_leaves_no_run(
    tmp_path: Path, args: list[str], message: str
) -> None:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "histomlf", *args], env=clean_env(tmp_path), cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [f"Error: {done.stderr.strip()[7:]}"]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert seconds <= FAST_S, f"{' '.join(args)} took {seconds:.1f} s"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_an_unknown_model_in_a_store_that_exists_answers_in_seconds(tmp_path: Path) -> None:
    """A real store with one run and one registered model: each URI naming something else
    is one line within FAST_S, and the store holds the same runs afterwards."""
    import sqlite3

    env = clean_env(tmp_path)
    made = subprocess.run(
        [sys.executable, "-c", "import mlflow\n"
         "with mlflow.start_run() as run: mlflow.log_param('a', 1)\n"
         "mlflow.MlflowClient().create_registered_model('idc')\n"
         "print(run.info.run_id)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    database = tmp_path / "mlflow.db"

    def runs() -> int:
        with sqlite3.connect(database) as connection:
            return connection.execute("SELECT count(*) FROM runs").fetchone()[0]

    for uri, message in [
        ("models:/no-such-model@champion", "no registered model 'no-such-model'"),
        ("models:/idc@champion", "registered model 'idc' has no alias 'champion'"),
        ("models:/idc/3", "registered model 'idc' has no version 3"),
        (f"runs:/{UNKNOWN_RUN}/model", f"no run '{UNKNOWN_RUN}'"),
    ]:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "histomlf", "predict", uri, "."], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        seconds = time.perf_counter() - started
        assert done.returncode == 1, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
        assert seconds <= FAST_S, f"predict {uri} took {seconds:.1f} s"
        assert runs() == 1


def test_checks_run_before_tensorflow_or_mlflow_is_imported(tmp_path: Path) -> None:
    """The CLI's import path for train, cv, tune and predict loads neither before its checks."""
    probe = """
import json, sys
from histomlf.cli import main
seen = {}
for args in (["train", "--data-dir", "/nonexistent"], ["cv", "--data-dir", "/nonexistent"],
             ["tune", "--data-dir", "/nonexistent"], ["predict", "models:/x", "."]):
    try:
        main(args, standalone_mode=False)
    except Exception as error:
        seen[args[0]] = [type(error).__name__,
                         sorted(m for m in ("tensorflow", "keras", "keras_tuner", "mlflow")
                                if m in sys.modules)]
print(json.dumps(seen))
"""
    done = subprocess.run([sys.executable, "-c", probe], env=clean_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {verb: ["ClickException", []] for verb in ("train", "cv", "tune", "predict")}
