"""The user's path end to end: `mlflow run .` (main) registers a champion, the gate judges a
second run, and a real `mlflow models serve` of `models:/NAME@champion` answers PNGs."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers_mlflow import isolated_tracking, post_json, sample_patches, serve
from mlflow.tracking import MlflowClient
from test_train_e2e import mlflow_run, tracking_env

from histomlf.data.patches import decode_patch

pytestmark = pytest.mark.slow

NAME = "idc-classifier"


def champion(client: MlflowClient):
    return client.get_model_version_by_alias(NAME, "champion")


def test_main_registers_gates_and_serves(tmp_path: Path, idc_sample: Path) -> None:
    uri = tracking_env(tmp_path)["MLFLOW_TRACKING_URI"]
    client = MlflowClient(uri, registry_uri=uri)
    base = {"data_dir": str(idc_sample), "experiment": "smoke"}

    mlflow_run(tmp_path, "main", base, "main-e2e")
    first = champion(client)
    assert str(first.version) == "1"
    for tag in ("model", "data_digest", "split_digest", "gate_metric", "gate_score", "run_id"):
        assert first.tags.get(tag), (tag, first.tags)
    assert first.tags["model"] == "simplecnn"
    # what a user sees in the UI: a training experiment, a name and a description that say
    # what ran (mlflow run's random name replaced), the verdict on the registered version
    run = client.get_run(first.run_id)
    assert re.fullmatch(r"simplecnn-none-idc-sample-[0-9a-f]{6}", run.info.run_name)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    note = run.data.tags["mlflow.note.content"]
    assert "**Data**" in note and "ROC-AUC" in note and "idc-classifier v1" in note
    assert first.description.startswith("Gate on test roc_auc: champion")
    assert "ROC-AUC" in first.description

    # Same data and split, another training budget: the gate re-scores the champion on the
    # same patient-level test split and its decision must agree with the two logged scores.
    mlflow_run(tmp_path, "main", {**base, "epochs": "2", "learning_rate": "0.003"}, "main-e2e")
    second = client.get_model_version(NAME, "2")
    new, old = float(second.tags["gate_score"]), float(second.tags["gate_champion_score"])
    promoted = str(champion(client).version) == "2"
    assert promoted == (new > old), second.tags
    assert second.tags["gate_decision"] in ("champion", "challenger")
    if not promoted:
        assert "challenger" in second.aliases and second.tags["gate_reason"]

    # Another patient split (new seed) has another split digest: never auto-promoted.
    holder = champion(client).version
    mlflow_run(tmp_path, "main", {**base, "seed": "11"}, "main-e2e")
    third = client.get_model_version(NAME, "3")
    assert champion(client).version == holder
    assert "challenger" in third.aliases
    assert "digest" in third.tags["gate_reason"]

    paths = sample_patches(idc_sample, full=5, border=2)
    payload = {
        "dataframe_split": {
            "columns": ["image"],
            "data": [[base64.b64encode(p.read_bytes()).decode()] for p in paths],
        }
    }
    with isolated_tracking():
        mlflow.set_tracking_uri(uri)
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        keras_model = model.unwrap_python_model().keras_model
    batch = np.stack([decode_patch(p.read_bytes()) for p in paths]).astype(np.float32)
    expected = np.asarray(keras_model(batch, training=False)).reshape(-1)

    with serve(f"models:/{NAME}@champion", tracking_uri=uri, log_dir=tmp_path) as served:
        answer = post_json(f"{served.url}/invocations", payload)
        assert answer.status == 200, answer.body
        rows = answer.json()["predictions"]
        got = np.array([row["probability"] for row in rows])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        bad = post_json(
            f"{served.url}/invocations",
            {"dataframe_split": {"columns": ["image"], "data": [["not base64!"]]}},
        )
        assert 400 <= bad.status < 500 and "base64" in bad.body
        again = post_json(f"{served.url}/invocations", payload)
        assert again.status == 200


def test_main_without_data_is_the_synthetic_demo_under_its_own_name(tmp_path: Path) -> None:
    """The README's first command: no data, so the demo experiment on synthetic patches,
    registered as `idc-classifier-demo` and never as the real model's name."""
    started = time.perf_counter()
    result = mlflow_run(tmp_path, "main", {}, "demo-e2e")
    seconds = time.perf_counter() - started
    print(f"main entry point without data: {seconds:.0f} s")  # reported in the benchmarks
    client = MlflowClient(tracking_env(tmp_path)["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("demo-e2e")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["histomlf.data_source"] == "synthetic" and tags["histomlf.demo"] == "true"
    assert tags["histomlf.resolved.experiment"] == "demo"
    assert "test_roc_auc" in run.data.metrics
    demo = client.get_model_version_by_alias("idc-classifier-demo", "champion")
    assert demo.run_id == run.info.run_id
    assert client.search_registered_models("name = 'idc-classifier'") == []
    assert "SYNTHETIC" in result.stdout and "say nothing about real tissue" in result.stdout
    assert "mlflow models serve -m models:/idc-classifier-demo@champion" in result.stdout
