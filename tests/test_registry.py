"""The champion gate on real registered models: worse -> challenger, better -> champion, other
data -> challenger with a reason; promotion and demotion by hand, from Python and the CLI."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers_mlflow import (
    TmpStore,
    isolated_tracking,
    sample_patches,
    tiny_keras_model,
    tmp_store,
)
from sklearn.metrics import roc_auc_score

from histomlf.evaluation.gate import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    higher_is_better,
    is_better,
)
from histomlf.tracking.pyfunc import log_patch_classifier
from histomlf.tracking.registry import demote, list_versions, promote, register_and_gate

NAME = "idc-gate"
DIGESTS = {"data_digest": "d" * 16, "split_digest": "s" * 16}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, idc_sample: Path):
    """A tmp store, real patches with labels, and three logged models ordered worst..best."""
    with tmp_store(tmp_path_factory.mktemp("registry")) as store:
        yield store, *scored_models(store, idc_sample)


def scored_models(store: TmpStore, idc_sample: Path):
    """A scoring function (ROC AUC on real patches) and four logged models, worst first."""
    paths = sample_patches(idc_sample, full=60, border=4)
    frame = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in paths]})
    labels = np.array([int("class1" in p.name) for p in paths])
    assert 0 < labels.sum() < len(labels)

    def score(model_uri: str) -> float:
        probability = mlflow.pyfunc.load_model(model_uri).predict(frame)["probability"]
        return float(roc_auc_score(labels, probability))

    logged = []
    for seed in range(4):
        with store.start_run() as run:
            info = log_patch_classifier(tiny_keras_model(seed=seed, filters=8), threshold=0.5)
        logged.append((score(info.model_uri), run.info.run_id, info.model_uri))
    logged.sort()
    scores = [s for s, _, _ in logged]
    assert len(set(scores)) == len(scores), scores
    return score, logged


def gate(world, index: int, digests=DIGESTS, score_champion=None, name=NAME):
    _, score, logged = world
    new_score, run_id, model_uri = logged[index]
    return register_and_gate(
        run_id,
        model_uri,
        name,
        gate_metric="roc_auc",
        new_score=new_score,
        digests=digests,
        tags={"model": f"tiny-{index}"},
        score_champion=score_champion or score,
    )


def aliases(name: str = NAME) -> dict[str, str]:
    model = mlflow.MlflowClient().get_registered_model(name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def tags(version: str, name: str = NAME) -> dict[str, str]:
    return dict(mlflow.MlflowClient().get_model_version(name, version).tags)


def test_gate_then_promote_and_demote_by_hand(world) -> None:
    _, _, logged = world
    called: list[str] = []

    def never(uri: str) -> float:
        called.append(uri)
        raise AssertionError("digests differ: the champion must not be re-scored")

    first = gate(world, 1)
    assert (first.version, first.alias, first.promoted) == ("1", CHAMPION, True)
    assert "no champion yet" in first.reason
    assert aliases() == {CHAMPION: "1"}
    first_tags = tags("1")
    assert first_tags["model"] == "tiny-1" and first_tags["gate_decision"] == CHAMPION
    assert first_tags["data_digest"] == DIGESTS["data_digest"]
    assert first_tags["split_digest"] == DIGESTS["split_digest"]
    assert first_tags["run_id"] == logged[1][1] and "git_commit" in first_tags
    assert first_tags["promoted_by"] == "gate"

    worse = gate(world, 0)
    assert (worse.version, worse.alias, worse.promoted) == ("2", CHALLENGER, False)
    assert worse.champion_version == "1"
    assert worse.champion_score == pytest.approx(logged[1][0])
    assert f"{logged[0][0]:.6g}" in worse.reason and f"{logged[1][0]:.6g}" in worse.reason
    assert "does not beat champion v1" in tags("2")["gate_reason"]
    assert aliases() == {CHAMPION: "1", CHALLENGER: "2"}

    better = gate(world, 2)
    assert (better.version, better.alias, better.promoted) == ("3", CHAMPION, True)
    assert "beats champion v1" in better.reason
    assert aliases() == {CHAMPION: "3", CHALLENGER: "2"}
    assert tags("1")["replaced_by"] == "3"
    assert float(tags("3")["gate_champion_score"]) == pytest.approx(logged[1][0])

    other_split = {**DIGESTS, "split_digest": "t" * 16}
    best_elsewhere = gate(world, 3, digests=other_split, score_champion=never)
    assert (best_elsewhere.version, best_elsewhere.alias) == ("4", CHALLENGER)
    assert not called
    assert "different split_digest" in tags("4")["gate_reason"]
    assert aliases() == {CHAMPION: "3", CHALLENGER: "4"}

    assert promote(NAME, "4", by="alice", reason="reviewed on the new split") == "3"
    assert aliases() == {CHAMPION: "4"}
    assert tags("4")["promoted_by"] == "alice"
    assert tags("4")["promotion_reason"] == "reviewed on the new split"
    assert tags("3")["replaced_by"] == "4"

    assert demote(NAME, by="bob") == "4"
    assert aliases() == {}
    assert tags("4")["demoted_from"] == CHAMPION and tags("4")["demoted_by"] == "bob"
    with pytest.raises(RegistryError, match="has no alias 'champion'"):
        demote(NAME)

    listed = list_versions(NAME)
    assert [v.version for v in listed] == ["1", "2", "3", "4"]
    assert listed[1].tags["gate_decision"] == CHALLENGER


def test_champion_that_cannot_be_rescored_keeps_its_place(world) -> None:
    def broken(uri: str) -> float:
        raise RuntimeError(f"cannot load {uri}")

    gate(world, 0, name="idc-broken")
    decision = gate(world, 3, name="idc-broken", score_champion=broken)
    assert decision.alias == CHALLENGER
    assert "could not re-score champion v1: RuntimeError: cannot load models:/idc-broken/1" in (
        decision.reason
    )
    assert aliases("idc-broken") == {CHAMPION: "1", CHALLENGER: "2"}


def test_unknown_names_and_metrics_are_refused(world) -> None:
    with pytest.raises(RegistryError, match="no registered model named 'nope'"):
        promote("nope", "1")
    gate(world, 0, name="idc-unknown")
    with pytest.raises(RegistryError, match="has no version 9 \\(versions: 1\\)"):
        promote("idc-unknown", "9")
    _, _, logged = world
    with pytest.raises(RegistryError, match="unknown gate metric 'speed'"):
        register_and_gate(logged[0][1], logged[0][2], "idc-never", gate_metric="speed",
                          new_score=1.0, digests=DIGESTS, tags={},
                          score_champion=float)  # fmt: skip
    with pytest.raises(RegistryError, match="no registered model named 'idc-never'"):
        list_versions("idc-never")


def test_metric_directions() -> None:
    assert higher_is_better("roc_auc") and higher_is_better("test_balanced_accuracy")
    assert not higher_is_better("val_loss") and not higher_is_better("brier")
    assert is_better("ece", 0.01, 0.02) and not is_better("f1", 0.5, 0.5)
    assert not is_better("roc_auc", math.nan, 0.1) and not is_better("roc_auc", 0.9, math.nan)


def test_cli_lists_promotes_and_demotes(world) -> None:
    from histomlf.cli.registry import registry

    store, _, _ = world
    gate(world, 1, name="idc-cli")
    gate(world, 0, name="idc-cli")
    runner = CliRunner()

    def run(*args: str):
        # The CLI sets the process-wide tracking URI to the same store; the fixture restores it.
        return runner.invoke(registry, ["--tracking-uri", store.tracking_uri, *args])

    listed = run("list", "idc-cli")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "ALIASES", "MODEL"]
    assert lines[1].split()[:3] == ["1", "champion", "tiny-1"]
    assert lines[2].split()[:3] == ["2", "challenger", "tiny-0"]
    assert "does not beat champion v1" in lines[2]

    promoted = run("promote", "idc-cli", "2")
    assert promoted.exit_code == 0 and "v2 is now champion (was v1)" in promoted.output
    demoted = run("demote", "idc-cli")
    assert demoted.exit_code == 0 and "v2 is no longer champion" in demoted.output

    for args, message in [
        (("list", "missing"), "no registered model named 'missing'"),
        (("promote", "idc-cli", "7"), "has no version 7"),
        (("promote", "idc-cli", "two"), "a model version is a number"),
        (("demote", "idc-cli", "--alias", "champion"), "has no alias 'champion'"),
    ]:
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_fails_fast_on_a_dead_tracking_server() -> None:
    from helpers_wait import free_port

    from histomlf.cli.registry import registry

    with isolated_tracking():
        result = CliRunner().invoke(
            registry, ["--tracking-uri", f"http://127.0.0.1:{free_port()}", "list", "x"]
        )
    assert result.exit_code == 1
    assert "unreachable" in result.output and "Traceback" not in result.output
