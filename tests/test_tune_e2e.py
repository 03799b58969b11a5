"""Keras Tuner searches end to end on the real sample, checked as a user would: the run tree.

Each tuner runs a tiny search (simplecnn, ~100 patches, 1-2 epochs) through `mlflow run . -e
tune` or `histomlf tune` against a tmp sqlite store; the tests then read the store through
`MlflowClient`: one parent, exactly N trial runs with params, per-epoch and final metrics and a
confusion matrix, a leaderboard, the winner's test metrics and its registered version. The
helpers here are shared with the resume and distributed tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 300
EXPERIMENT = "tune-e2e"
VAL_METRICS = ("val_accuracy", "val_precision", "val_recall", "val_specificity", "val_f1",
               "val_balanced_accuracy", "val_roc_auc", "val_pr_auc", "val_brier", "val_ece",
               "val_loss")
TEST_METRICS = tuple(name.replace("val_", "test_") for name in VAL_METRICS)
SMOKE = {"max_samples": "100", "epochs": "1", "batch_size": "32"}


def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One histomlf cache for all tuning tests: the sample is scanned and packed once."""
    path = tmp_path_factory.getbasetemp() / "tune-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_cache(tmp_path_factory)


def tune_env(tmp_path: Path, cache: Path) -> dict[str, str]:
    """A clean environment pointing at `tmp_path`'s sqlite store and the shared cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "KERASTUNER_", "HISTOMLF_TUNE"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    env["MLFLOW_EXPERIMENT_NAME"] = EXPERIMENT
    env["HISTOMLF_CACHE"] = str(cache)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def store(tmp_path: Path) -> MlflowClient:
    """The tmp store's client; creates the test experiment with artifacts under tmp_path."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT, artifact_location=str(tmp_path / "artifacts"))
    return client


def tune_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "histomlf", "tune", *args]


def mlflow_run_command(params: dict[str, str]) -> list[str]:
    command = [sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "-e", "tune",
               "--env-manager", "local", "--experiment-name", EXPERIMENT]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    return command


def as_args(options: dict[str, str]) -> list[str]:
    return [item for key, value in options.items() for item in (f"--{key}", str(value))]


def run_ok(command: list[str], tmp_path: Path, env: dict[str, str],
           timeout: int = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run to completion within `timeout` s (its whole process group is killed on overrun)."""
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(command[2:5])} ran over {timeout} s:\n{output[-6000:]}")
    assert process.returncode == 0, output[-8000:]
    return subprocess.CompletedProcess(command, process.returncode, output, "")


def runs_of(client: MlflowClient) -> list[Any]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return list(client.search_runs([experiment.experiment_id], max_results=1000))


def searches(client: MlflowClient) -> list[Any]:
    return [r for r in runs_of(client) if r.data.tags.get("histomlf.kind") == "tune"]


def trial_runs(client: MlflowClient, parent_id: str) -> list[Any]:
    return [r for r in runs_of(client) if r.data.tags.get("mlflow.parentRunId") == parent_id]


def first_epoch_logged(client: MlflowClient, trial_id: str, epoch: int = 0) -> Any:
    """The run of `trial_id` once its epoch `epoch` metrics are in the store, else None."""
    for run in runs_of(client):
        if run.data.tags.get("histomlf.trial_id") != trial_id or run.info.status != "RUNNING":
            continue
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_loss")}
        if epoch in steps:
            return run
    return None


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def assert_search(client: MlflowClient, parent: Any, trials: int, *, tuned: tuple[str, ...],
                  failed: int = 0) -> list[Any]:
    """One FINISHED parent with exactly `trials` trial runs, all checked; returns them."""
    assert parent.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in parent.data.tags
    children = trial_runs(client, parent.info.run_id)
    done = [r for r in children if r.info.status in ("FINISHED", "FAILED")]
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert len(done) == trials, [(r.info.run_name, r.info.status) for r in children]
    ids = [r.data.tags["histomlf.trial_id"] for r in done]
    assert len(set(ids)) == trials
    assert sum(r.info.status == "FAILED" for r in done) == failed
    for run in done:
        tags = run.data.tags
        # the name says which trial and what it tried: `trial-<id> name=value ...`
        assert run.info.run_name.startswith(f"trial-{tags['histomlf.trial_id']}")
        shown = run.info.run_name.split(" ")[1:]
        assert shown and all(item.split("=")[0] in tuned for item in shown), run.info.run_name
        assert tags["histomlf.hparams"].startswith(" ".join(shown))
        assert tags["histomlf.kind"] == "tune-trial"
        assert tags["histomlf.search_id"] == parent.info.run_id
        assert set(tuned) <= set(run.data.params) and "model" in run.data.params
        if run.info.status == "FAILED":
            assert tags["histomlf.error"]
            assert "error.txt" in artifact_paths(client, run.info.run_id)
            continue
        assert set(VAL_METRICS) <= set(run.data.metrics), sorted(run.data.metrics)
        assert client.get_metric_history(run.info.run_id, "epoch/train_loss")
        artifacts = artifact_paths(client, run.info.run_id)
        assert {"evaluation/val_confusion_matrix.png",
                "evaluation/val_confusion_matrix.json"} <= artifacts
        assert tags["histomlf.early_stopped"] in ("true", "false")

    artifacts = artifact_paths(client, parent.info.run_id)
    assert {"search/leaderboard.json", "search/best.json", "search/spec.json",
            "evaluation/test_confusion_matrix.png"} <= artifacts
    local = client.download_artifacts(parent.info.run_id, "search/leaderboard.json")
    board = json.loads(Path(local).read_text())
    assert {"trial", "status", "val_roc_auc", "duration_s", *tuned} <= set(board["columns"])
    assert len(board["data"]) == trials
    metrics = parent.data.metrics
    assert set(TEST_METRICS) <= set(metrics), sorted(metrics)
    best_run = client.get_run(parent.data.tags["histomlf.best_run_id"])
    assert best_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert best_run.data.tags["histomlf.best_trial"] == "true"
    assert metrics["best_val_roc_auc"] == pytest.approx(
        max(r.data.metrics.get("val_roc_auc", -1) for r in done))
    assert parent.data.tags["histomlf.best_model_uri"] == best_run.data.tags["histomlf.model_uri"]
    return done


def test_mlflow_run_random_search_registers_the_winner(tmp_path: Path, idc_sample: Path,
                                                       shared_cache: Path) -> None:
    client = store(tmp_path)
    params = {"experiment": "tune_smoke", "data_dir": str(idc_sample), "tuner": "random",
              "max_trials": "2", "executions_per_trial": "2", "register_as": "idc-tuned", **SMOKE}
    run_ok(mlflow_run_command(params), tmp_path, tune_env(tmp_path, shared_cache))
    (parent,) = searches(client)
    assert [r.info.run_id for r in runs_of(client) if "mlflow.parentRunId" not in r.data.tags] \
        == [parent.info.run_id]
    children = assert_search(client, parent, 2, tuned=("learning_rate", "dropout", "dense_units"))
    assert parent.data.params["tuner"] == "random" and parent.data.params["max_trials"] == "2"
    for run in children:
        # Two executions: epoch 0 of each at steps 0 and 1 (stride = 1 epoch).
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/train_loss")]
        assert sorted(steps) == [0, 1]
        assert run.data.tags["histomlf.executions"] == "2"
    version = client.get_model_version_by_alias("idc-tuned", "champion")
    assert version.run_id == parent.data.tags["histomlf.best_run_id"]
    assert version.tags["split_digest"] == parent.data.tags["histomlf.split_digest"]


def test_bayesian_search(tmp_path: Path, idc_sample: Path, shared_cache: Path) -> None:
    client = store(tmp_path)
    args = as_args({"data-dir": str(idc_sample), "tuner": "bayesian", "max-trials": "2", **SMOKE})
    run_ok(tune_command(["-e", "tune_smoke", *args]), tmp_path, tune_env(tmp_path, shared_cache))
    (parent,) = searches(client)
    assert_search(client, parent, 2, tuned=("learning_rate", "dropout", "dense_units"))
    assert parent.data.tags["histomlf.tuner"] == "bayesian"


def test_hyperband_search_continues_a_trial(tmp_path: Path, idc_sample: Path,
                                            shared_cache: Path) -> None:
    client = store(tmp_path)
    # max_epochs 2, factor 2: bracket 1 runs two 1-epoch trials, then continues the better one.
    args = as_args({"data-dir": str(idc_sample), "tuner": "hyperband", "max-trials": "3",
                    "max-epochs": "2", "factor": "2", **SMOKE})
    run_ok(tune_command(["-e", "tune_smoke", *args]), tmp_path, tune_env(tmp_path, shared_cache))
    (parent,) = searches(client)
    children = assert_search(client, parent, 3, tuned=("learning_rate", "dropout", "dense_units"))
    by_id = {r.data.tags["histomlf.trial_id"]: r for r in children}
    continued = by_id["2"]
    tags = continued.data.tags
    assert (tags["histomlf.hyperband.round"], tags["histomlf.hyperband.epochs"],
            tags["histomlf.hyperband.initial_epoch"]) == ("1", "2", "1")
    assert by_id[tags["histomlf.hyperband.continues"]].data.tags[
        "histomlf.hyperband.outcome"] == "promoted"
    assert {r.data.tags["histomlf.hyperband.outcome"] for r in children} == {
        "promoted", "discarded", "final"}
    # The continued trial trains epoch 1 only, logged at its own epoch number.
    history = client.get_metric_history(continued.info.run_id, "epoch/train_loss")
    assert [m.step for m in history] == [1]
    assert continued.data.params["epochs"] == "2"


def test_grid_search_records_a_failed_trial(tmp_path: Path, idc_sample: Path,
                                            shared_cache: Path) -> None:
    client = store(tmp_path)
    experiment = tmp_path / "grid.yaml"
    experiment.write_text(
        "model: simplecnn\nweights: none\nepochs: 1\nbatch_size: 32\nmax_samples: 100\n"
        "augment: none\nearly_stopping_patience: 0\n"
        "search:\n  tuner: grid\n  max_trials: 3\n  space:\n"
        "    weights: [none, /nonexistent/backbone.weights.h5]\n    dense_units: [8, 16]\n")
    run_ok(tune_command(["-e", str(experiment), "--data-dir", str(idc_sample)]), tmp_path,
           tune_env(tmp_path, shared_cache))
    (parent,) = searches(client)
    children = assert_search(client, parent, 3, tuned=("weights", "dense_units"), failed=1)
    failed = next(r for r in children if r.info.status == "FAILED")
    assert failed.data.params["weights"] == "/nonexistent/backbone.weights.h5"
    assert parent.data.metrics["trials_failed"] == 1.0
