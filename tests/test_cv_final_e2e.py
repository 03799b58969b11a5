"""The CV-final model of the shared study: the fold models' mean, calibrated, registered,
scored in process and through a real `mlflow models serve`, with out-of-fold scores only."""

from __future__ import annotations

import base64
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from helpers_mlflow import keras_probabilities, post_json, sample_patches, serve
from mlflow.tracking import MlflowClient
from study_store import CV_FINAL_NAME, tracking_env

from histomlf.data.patches import decode_patch
from histomlf.evaluation.calibration import PlattMap
from histomlf.models.averaging import calibration_of
from histomlf.schema import Artifact, Folder, MlflowTag, RunKind, Tag, VersionTag
from histomlf.tracking.pyfunc import predict_patches

pytestmark = pytest.mark.slow


def keras_model_of(uri: str) -> keras.Model:
    return mlflow.pyfunc.load_model(uri).unwrap_python_model().keras_model


def final_run(client: MlflowClient, study_store):
    children = client.search_runs(
        [study_store.experiment_id],
        filter_string=f"tags.`{MlflowTag.PARENT_RUN_ID}` = '{study_store.cv_parent_id}'",
    )
    finals = [r for r in children if r.data.tags.get(Tag.KIND) == RunKind.CV_FINAL]
    folds = sorted(
        (r for r in children if r.data.tags.get(Tag.KIND) == RunKind.CV_FOLD),
        key=lambda r: int(r.data.tags[Tag.FOLD]),
    )
    assert len(finals) == 1 and len(folds) == 2
    return finals[0], folds


def test_final_model_is_the_calibrated_mean_of_the_fold_models(
    study_store, idc_sample: Path, tmp_path: Path
) -> None:
    client = MlflowClient(study_store.tracking_uri)
    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri):
        final, folds = final_run(client, study_store)
        metrics = final.data.metrics
        assert not [k for k in metrics if k.startswith("test_")]
        assert {"oof_roc_auc", "oof_roc_auc_ci_low", "oof_ece", "oof_ece_uncalibrated",
                "fold_mean_roc_auc", "platt_slope", "platt_intercept"} <= set(metrics)
        artifacts = {a.path for a in client.list_artifacts(final.info.run_id, Folder.PREDICTIONS)}
        assert Artifact.predictions("oof") in artifacts
        # The pooled table scores every patient of both folds once.
        pooled = mlflow.artifacts.load_text(
            f"runs:/{final.info.run_id}/{Artifact.predictions('oof')}"
        ).splitlines()
        fold_test = sum(int(f.data.params["test_patches"]) for f in folds)
        assert len(pooled) - 1 == fold_test

        version = client.get_model_version_by_alias(CV_FINAL_NAME, "champion")
        assert version.tags[VersionTag.KIND] == RunKind.CV_FINAL
        assert version.tags[VersionTag.FOLD_RUNS] == ",".join(f.info.run_id for f in folds)
        assert "Out-of-fold, pooled over" in version.description
        final_model = keras_model_of(f"models:/{CV_FINAL_NAME}/{version.version}")
        members = [
            keras_model_of(f"runs:/{f.info.run_id}/model") for f in folds
        ]
        paths = sample_patches(idc_sample, full=6, border=2)
        batch = np.stack([decode_patch(p.read_bytes()) for p in paths]).astype(np.float32)
        mean = np.mean([keras_probabilities(m, batch) for m in members], axis=0)
        slope, intercept = calibration_of(final_model)
        assert (slope, intercept) == pytest.approx(
            (metrics["platt_slope"], metrics["platt_intercept"])
        )
        inner = [layer for layer in final_model.layers if isinstance(layer, keras.Model)][0]
        np.testing.assert_allclose(keras_probabilities(inner, batch), mean, atol=1e-6)
        expected = PlattMap(slope, intercept)(mean)
        served_in_process = predict_patches(
            mlflow.pyfunc.load_model(f"models:/{CV_FINAL_NAME}@champion"),
            batch.astype(np.uint8),
        )
        np.testing.assert_allclose(served_in_process["probability"], expected, atol=1e-5)
        threshold = metrics["decision_threshold"]
        assert threshold == pytest.approx(
            PlattMap(slope, intercept).threshold(metrics["uncalibrated_threshold"])
        )

        images = [base64.b64encode(p.read_bytes()).decode() for p in paths]
        payload = {"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}}
        with serve(
            f"models:/{CV_FINAL_NAME}@champion",
            tracking_uri=study_store.tracking_uri,
            log_dir=tmp_path,
        ) as server:
            reply = post_json(f"{server.url}/invocations", payload)
        assert reply.status == 200, reply.body
        served = np.array([row["probability"] for row in reply.json()["predictions"]])
        np.testing.assert_allclose(served, expected, atol=1e-5)
        assert [row["label"] for row in reply.json()["predictions"]] == [
            int(p >= threshold) for p in served
        ]


def test_evaluate_refuses_a_test_split_for_a_fold_ensemble(study_store, idc_sample: Path) -> None:
    from study_store import invoke_cli

    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri):
        client = MlflowClient(study_store.tracking_uri)
        runs_before = len(client.search_runs([study_store.experiment_id]))
        result = invoke_cli(
            "evaluate", f"models:/{CV_FINAL_NAME}@champion", str(idc_sample), "--split", "test",
            expect_exit=1,
        )
        assert "cross-validation ensemble" in result.output
        assert "no unseen test split" in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert len(client.search_runs([study_store.experiment_id])) == runs_before


def test_registry_list_says_the_ensemble_is_scored_out_of_fold(study_store) -> None:
    from study_store import invoke_cli

    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri):
        listed = invoke_cli("registry", "list", CV_FINAL_NAME).output
        train_listed = invoke_cli("registry", "list", "idc-study").output
    assert "SCORED ON" in listed and "out-of-fold on" in listed
    assert "test split" in train_listed and "out-of-fold" not in train_listed
