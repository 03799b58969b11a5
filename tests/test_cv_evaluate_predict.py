"""The `cv`, `evaluate` and `predict` verbs end to end on the real sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from test_train_e2e import mlflow_run, tracking_env

pytestmark = pytest.mark.slow


def histomlf(tmp_path: Path, *args: str, timeout: int = 600) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "histomlf", *args],
        env=tracking_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_cv_nests_one_run_per_fold_with_mean_and_sd(tmp_path: Path, idc_sample: Path) -> None:
    mlflow_run(
        tmp_path,
        "cv",
        {"data_dir": str(idc_sample), "experiment": "smoke", "folds": "3", "max_samples": "96",
         "final": "ensemble", "register_as": "idc-cv-e2e"},
        "cv-e2e",
    )
    client = MlflowClient(tracking_env(tmp_path)["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("cv-e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    children = [r for r in nested if r.data.tags.get("histomlf.kind") == "cv-fold"]
    finals = [r for r in nested if r.data.tags.get("histomlf.kind") == "cv-final"]
    assert len(finals) == 1 and len(nested) == 4
    # mlflow run . -e cv -P final=ensemble -P register_as=...: the ensemble is the champion.
    champion = client.get_model_version_by_alias("idc-cv-e2e", "champion")
    assert champion.run_id == finals[0].info.run_id and champion.tags["kind"] == "cv-final"
    assert "oof_roc_auc" in finals[0].data.metrics
    assert sorted(r.data.tags["histomlf.fold"] for r in children) == ["0", "1", "2"]
    assert sorted(r.info.run_name for r in children) == [f"fold-{k}-of-3" for k in (1, 2, 3)]
    assert parent.data.tags["mlflow.note.content"].startswith("**3-fold cross-validation")
    kind = client.get_experiment(experiment.experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"
    assert all(r.info.status == "FINISHED" for r in runs)
    aucs = [r.data.metrics["test_roc_auc"] for r in children]
    assert parent.data.metrics["test_roc_auc_mean"] == pytest.approx(np.mean(aucs))
    assert parent.data.metrics["test_roc_auc_sd"] == pytest.approx(np.std(aucs, ddof=1))
    # folds test disjoint patients that together cover all of them
    test_patients = []
    for child in children:
        path = client.download_artifacts(
            child.info.run_id, "data/split.csv", str(tmp_path / child.info.run_id)
        )
        split = pd.read_csv(path, dtype={"patient_id": str})
        test_patients += split.loc[split["split"] == "test", "patient_id"].tolist()
    assert len(test_patients) == len(set(test_patients)) == 52


def test_evaluate_and_predict_a_trained_model(tmp_path: Path, idc_sample: Path) -> None:
    trained = json.loads(
        histomlf(
            tmp_path,
            "train",
            "--experiment",
            "smoke",
            "--data-dir",
            str(idc_sample),
            "--max-samples",
            "0",
            "--json",
        )
        .strip()
        .splitlines()[-1]
    )
    model_uri = trained["model_uri"]

    evaluated = json.loads(
        histomlf(tmp_path, "evaluate", model_uri, str(idc_sample)).strip().splitlines()[-1]
    )
    # the training run's own split and threshold: the same test numbers as training logged
    for key in ("test_roc_auc", "test_accuracy", "test_f1"):
        assert evaluated["metrics"][key] == pytest.approx(trained["metrics"][key], abs=1e-6), key

    # `histomlf explain` on the logged model: the chosen patient's map and the overlays
    patient = "10261"
    explained = histomlf(tmp_path, "explain", model_uri, str(idc_sample), "--out",
                         str(tmp_path / "x"), "--patients", patient, "--patches", "1")
    assert "patient maps" in explained
    index = json.loads((tmp_path / "x" / "explain" / "index.json").read_text())
    assert [p["patient_id"] for p in index["patients"]] == [patient]
    assert (tmp_path / "x" / "explain" / "patients" / f"{patient}.png").is_file()
    assert all((tmp_path / "x" / e["file"]).is_file() for e in index["gradcam"])
    assert all(e["patient_id"] == patient for e in index["gradcam"])
    unknown = subprocess.run(
        [sys.executable, "-m", "histomlf", "explain", model_uri, str(idc_sample), "--out",
         str(tmp_path / "y"), "--patients", "99999"],
        env=tracking_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    last = unknown.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: unknown patient(s)") and "99999" in last, unknown.stderr

    out = tmp_path / "preds.csv"
    histomlf(tmp_path, "predict", model_uri, str(idc_sample), "--out", str(out))
    patches = pd.read_csv(out)
    assert len(patches) == 1900
    assert set(patches.columns) >= {"path", "patient_id", "x", "y", "probability", "label"}
    assert patches["probability"].between(0, 1).all()
    patients = pd.read_csv(tmp_path / "preds.patients.csv")
    assert len(patients) == 52 and patients["patches"].sum() == 1900
