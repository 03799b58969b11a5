"""`mlflow run . -e train` end to end on the real sample, checked through MlflowClient."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT
from helpers_wait import wait_for
from mlflow.tracking import MlflowClient
from sklearn import metrics as skm

from histomlf.config import TrainConfig
from histomlf.evaluation.metrics import METRICS
from histomlf.models.backbones import BACKBONES

pytestmark = pytest.mark.slow

SPLITS = ("train", "val", "test", "test_patient")
NAMES = tuple(METRICS)
CONFIG_KEYS = tuple(field.name for field in dataclasses.fields(TrainConfig))


def tracking_env(tmp_path: Path) -> dict[str, str]:
    # In-process MLflow calls of earlier tests export MLFLOW_* variables (experiment id,
    # tracking URI, credentials); a subprocess must see only the store of this test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    env["HISTOMLF_CACHE"] = str(tmp_path / "cache")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def mlflow_run(
    tmp_path: Path, entry: str, params: dict[str, str], experiment: str, timeout: int = 900
) -> subprocess.CompletedProcess:
    env = tracking_env(tmp_path)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment, artifact_location=str(tmp_path / "artifacts"))
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(REPO_ROOT),
        "-e",
        entry,
        "--env-manager",
        "local",
        "--experiment-name",
        experiment,
    ]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def only_run(client: MlflowClient, experiment: str):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    found = client.search_runs([experiment_id])
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
def test_mlflow_run_train_logs_everything(tmp_path: Path, idc_sample: Path, backbone: str) -> None:
    mlflow_run(
        tmp_path,
        "train",
        {
            "data_dir": str(idc_sample),
            "model": backbone,
            "weights": "none",
            "max_samples": "64",
            "epochs": "1",
            "batch_size": "16",
            "learning_rate": "1e-3",
            "experiment": "smoke",
            "explain": "true",
        },
        "e2e",
    )
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = only_run(client, "e2e")
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert set(CONFIG_KEYS) <= set(params)
    assert params["model"] == backbone and params["epochs"] == "1" and params["max_samples"] == "64"
    assert float(params["learning_rate"]) == 1e-3
    metrics = run.data.metrics
    expected = {f"{s}_{n}" for s in SPLITS for n in NAMES}
    expected |= {f"test_{n}_ci_low" for n in NAMES} | {f"test_{n}_ci_high" for n in NAMES}
    assert expected <= set(metrics), sorted(expected - set(metrics))
    # per-epoch curves and final scores never share a key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_loss")] == [0]
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1
    assert run.data.tags["histomlf.data_digest"] and run.data.tags["histomlf.split_digest"]
    assert run.data.tags.get("mlflow.parentRunId") is None

    artifacts = artifact_paths(client, run.info.run_id)
    for path in (
        "config/resolved.yaml",
        "data/split.csv",
        "predictions/test_predictions.csv",
        "evaluation/test_confusion_matrix.png",
        "evaluation/test_confusion_matrix.json",
        "evaluation/test_roc.png",
        "evaluation/test_pr.png",
        "evaluation/test_reliability.png",
        "evaluation/training_curves.png",
        "environment/pip-freeze.txt",
        "environment/facts.json",
    ):
        assert path in artifacts, sorted(artifacts)
    assert any(p.startswith("model") or "MLmodel" in p for p in artifacts) or run.outputs

    local = client.download_artifacts(
        run.info.run_id, "predictions/test_predictions.csv", str(tmp_path)
    )
    predictions = pd.read_csv(local)
    y, p = predictions["label"].to_numpy(), predictions["probability"].to_numpy()
    threshold = metrics["decision_threshold"]
    y_hat = (p >= threshold).astype(int)
    assert np.array_equal(y_hat, predictions["predicted"].to_numpy())
    assert metrics["test_accuracy"] == pytest.approx(skm.accuracy_score(y, y_hat))
    assert metrics["test_f1"] == pytest.approx(skm.f1_score(y, y_hat, zero_division=0))
    assert metrics["test_precision"] == pytest.approx(
        skm.precision_score(y, y_hat, zero_division=0)
    )
    assert metrics["test_recall"] == pytest.approx(skm.recall_score(y, y_hat, zero_division=0))
    assert metrics["test_balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, y_hat))
    assert metrics["test_specificity"] == pytest.approx(skm.recall_score(y, y_hat, pos_label=0))
    assert metrics["test_roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert metrics["test_pr_auc"] == pytest.approx(skm.average_precision_score(y, p))
    assert metrics["test_brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert metrics["test_loss"] == pytest.approx(
        skm.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])
    )
    low, high = metrics["test_roc_auc_ci_low"], metrics["test_roc_auc_ci_high"]
    assert 0.0 <= low <= high <= 1.0

    # Grad-CAM overlays at the backbone table's layer and patient maps, as the index lists
    index_file = client.download_artifacts(run.info.run_id, "explain/index.json", str(tmp_path))
    index = json.loads(Path(index_file).read_text())
    assert index["layer"] == BACKBONES[backbone].explain_layer
    listed = {e["file"] for e in index["gradcam"]}
    listed |= {p[key] for p in index["patients"] for key in ("image", "grids")}
    assert index["gradcam"] and index["patients"] and listed <= artifacts
    kinds = {e["kind"] for e in index["gradcam"]}
    assert kinds <= {"tp", "tn", "fp", "fn"}
    assert {p.split("/")[1].split("+")[0] for p in artifacts if p.startswith("images/")} == {
        f"gradcam~{e['kind']}_{e['rank']}" for e in index["gradcam"]
    }


def test_cpu_rerun_reproduces_the_metrics(tmp_path: Path, idc_sample: Path) -> None:
    env = tracking_env(tmp_path)
    command = [
        sys.executable,
        "-m",
        "histomlf",
        "train",
        "--experiment",
        "smoke",
        "--data-dir",
        str(idc_sample),
        "--max-samples",
        "160",
        "--epochs",
        "2",
        "--json",
    ]
    results = []
    for _ in range(2):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = (r["metrics"] for r in results)
    assert results[0]["run_id"] != results[1]["run_id"]
    for key in ("test_roc_auc", "test_loss", "val_loss", "decision_threshold", "test_f1"):
        assert first[key] == second[key], key


def test_bad_config_is_one_line_error(tmp_path: Path, idc_sample: Path) -> None:
    env = tracking_env(tmp_path)
    for args, message in (
        (["--model", "vgg17"], "vgg17"),
        (["--augment", "heavy"], "augment"),
        (["--experiment", "nope"], "unknown experiment"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "histomlf", "train", "--data-dir", str(idc_sample), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode != 0
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_a_killed_run_resumes_from_its_last_epoch(tmp_path: Path, idc_sample: Path) -> None:
    env = tracking_env(tmp_path)
    uri = env["MLFLOW_TRACKING_URI"]
    command = [
        sys.executable,
        "-m",
        "histomlf",
        "train",
        "--experiment",
        "smoke",
        "--data-dir",
        str(idc_sample),
        "--max-samples",
        "400",
        "--epochs",
        "4",
        "--json",
    ]
    first = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = MlflowClient(uri)

    def two_epochs_backed_up():
        found = client.search_runs([e.experiment_id for e in client.search_experiments()])
        history = [client.get_metric_history(r.info.run_id, "epoch/val_loss") for r in found]
        steps = {m.step for metrics in history for m in metrics}
        return found[0] if 1 in steps else None

    try:
        crashed = wait_for(two_epochs_backed_up, 600, "the first attempt's two epochs",
                           process=first)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)

    # Run options (registration, its gate metric) are not the recipe: the resume still finds
    # the crashed attempt's work folder.
    rerun = [*command, "--register-as", "resume-check", "--gate-metric", "f1"]
    done = subprocess.run(rerun, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    resumed = client.get_run(json.loads(done.stdout.strip().splitlines()[-1])["run_id"])
    assert resumed.data.tags["histomlf.resumed"] == "true"
    assert resumed.info.run_name == crashed.info.run_name  # the same recipe, the same name
    assert client.get_registered_model("resume-check").name == "resume-check"
    history = client.get_metric_history(resumed.info.run_id, "epoch/val_loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]  # every epoch, backfilled or not
    killed = client.get_run(crashed.info.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["histomlf.resumed_by"] == resumed.info.run_id
