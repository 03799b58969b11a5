"""The recipes called in-process, as a notebook or another tool would: tiny data, tmp store."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_mlflow import tmp_store

from histomlf.config import ConfigError, TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from histomlf.data.synth import generate_dataset

    out = tmp_path_factory.mktemp("synthetic") / "idc"
    generate_dataset(out, patients=12, patches_per_patient=30, seed=3)
    return out


def tiny_config(data_dir: Path, **changes) -> TrainConfig:
    return TrainConfig(
        model="simplecnn",
        epochs=1,
        batch_size=32,
        dense_units=16,
        augment="none",
        early_stopping_patience=0,
        data_dir=str(data_dir),
        experiment="in-process",
        **changes,
    )


def test_a_test_metric_name_is_refused_before_any_data_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gate_metric .*write 'roc_auc'"):
        tiny_config(tmp_path / "does-not-exist", gate_metric="test_roc_auc")


def test_train_recipe_returns_what_it_logged_and_gates_the_champion(
    tmp_path: Path, synthetic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from histomlf.recipes.train import train

    monkeypatch.setenv("HISTOMLF_CACHE", str(tmp_path / "cache"))
    with tmp_store(tmp_path) as store:
        result = train(tiny_config(synthetic, register_as="idc-in-process"))
        client = MlflowClient(store.tracking_uri)
        run = client.get_run(result["run_id"])
        artifacts = {a.path for folder in ("evaluation", "predictions", "data", "images")
                     for a in client.list_artifacts(run.info.run_id, folder)}
        explained = {a.path for folder in ("explain/gradcam", "explain/patients")
                     for a in client.list_artifacts(run.info.run_id, folder)}
        index_path = client.download_artifacts(run.info.run_id, "explain/index.json", str(tmp_path))
        version = client.get_model_version_by_alias("idc-in-process", "champion")

    metrics = result["metrics"]
    for key in ("test_roc_auc", "test_balanced_accuracy", "test_f1", "decision_threshold",
                "test_roc_auc_ci_low", "test_patient_roc_auc"):
        assert run.data.metrics[key] == pytest.approx(metrics[key]), key
    assert 0.0 <= metrics["test_roc_auc_ci_low"] <= metrics["test_roc_auc_ci_high"] <= 1.0
    assert run.data.params["model"] == "simplecnn" and run.data.params["epochs"] == "1"
    assert run.data.tags["histomlf.data_source"] == "folder"
    assert {"evaluation/test_roc.png", "evaluation/test_confusion_matrix.json",
            "evaluation/test_bootstrap_ci.json", "evaluation/training_curves.png",
            "predictions/test_predictions.csv", "predictions/val_predictions.csv",
            "predictions/test_patients.csv", "data/split.csv"} <= artifacts
    assert result["gate"].promoted and version.run_id == result["run_id"]

    # explanations (on by default): the index lists exactly what was logged
    import json

    index = json.loads(Path(index_path).read_text())
    listed = {e["file"] for e in index["gradcam"]}
    listed |= {p[key] for p in index["patients"] for key in ("image", "grids")}
    assert listed and listed == explained
    assert {e["kind"] for e in index["gradcam"]} <= {"tp", "tn", "fp", "fn"}
    assert index["layer"] == "block3_relu" and index["threshold"] == metrics["decision_threshold"]
    image_keys = {p.split("/")[1].split("+")[0] for p in artifacts if p.endswith(".png")
                  and p.startswith("images/")}
    assert image_keys == {f"gradcam~{e['kind']}_{e['rank']}" for e in index["gradcam"]}
    assert run.data.metrics["seconds_explain"] > 0


def test_cv_screens_chosen_folds_of_the_same_split_and_can_log_their_models(
    tmp_path: Path, synthetic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`only_folds` trains a subset of the seeded K folds (the recipe study's cheap screen): the
    fold it trains is the full protocol's fold of that number, patients and all."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from histomlf.data.scan import scan_to_cache
    from histomlf.data.splits import load_split, patient_kfold
    from histomlf.recipes.cv import cross_validate

    monkeypatch.setenv("HISTOMLF_CACHE", str(tmp_path / "cache"))
    config = tiny_config(synthetic, explain=False)
    with tmp_store(tmp_path) as store:
        result = cross_validate(config, 3, only_folds=(2,), log_models=True)
        client = MlflowClient(store.tracking_uri)
        parent = client.get_run(result["run_id"])
        (child,) = client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        split_csv = client.download_artifacts(child.info.run_id, "data/split.csv", str(tmp_path))
        logged = load_split(split_csv)
        model = mlflow.pyfunc.load_model(f"runs:/{child.info.run_id}/model")
    with pytest.raises(ValueError, match="only_folds must be fold numbers from 1 to 3"):
        cross_validate(config, 3, only_folds=(4,))

    assert [row["fold"] for row in result["folds"]] == [1]
    assert child.info.run_name == "fold-2-of-3" and parent.data.params["only_folds"] == "2"
    assert parent.info.run_name.endswith("-folds2") and "seconds_fit" in child.data.metrics
    assert result["summary"]["test_roc_auc_sd"] == 0.0
    expected = patient_kfold(scan_to_cache(synthetic).manifest, 3, seed=config.seed,
                             val_fraction=config.val_fraction)[1]  # fmt: skip
    key = ["patient_id", "split"]
    rows = [frame.sort_values(key)[key].values.tolist() for frame in (logged, expected)]
    assert rows[0] == rows[1]
    assert model.metadata.metadata["model"] == "simplecnn"


@pytest.mark.slow
def test_cv_final_refit_trains_one_model_on_every_patient(
    tmp_path: Path, synthetic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`final="refit"`: one model on every patient (the logged split says so) for the folds'
    epochs, with the out-of-fold threshold and Platt map inside it, scored only out-of-fold,
    registered, and refused a test split by `evaluate`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from histomlf.data.scan import scan_to_cache
    from histomlf.data.splits import load_split
    from histomlf.errors import UserError
    from histomlf.evaluation.calibration import PlattMap
    from histomlf.models.averaging import calibration_of
    from histomlf.recipes.cv import cross_validate
    from histomlf.recipes.evaluate import refuse_fold_ensemble_split
    from histomlf.schema import ModelMeta, RunKind, Tag, VersionTag

    monkeypatch.setenv("HISTOMLF_CACHE", str(tmp_path / "cache"))
    config = tiny_config(synthetic, explain=False, calibrate="platt")
    with tmp_store(tmp_path) as store:
        result = cross_validate(config, 2, final="refit", register_as="idc-refit-test")
        final = result["final"]
        client = MlflowClient(store.tracking_uri)
        run = client.get_run(final["run_id"])
        split = load_split(client.download_artifacts(run.info.run_id, "data/split.csv",
                                                     str(tmp_path)))
        model = mlflow.pyfunc.load_model(final["model_uri"])
        with pytest.raises(UserError, match="refitted on every patient"):
            refuse_fold_ensemble_split(final["model_uri"], "test")
        version = client.get_model_version("idc-refit-test", final["gate"].version)

    patients = set(scan_to_cache(synthetic).manifest["patient_id"].astype(str))
    assert set(split["patient_id"].astype(str)) == patients and set(split["split"]) == {"train"}
    assert run.data.tags[Tag.KIND] == RunKind.CV_FINAL
    assert run.data.params["final"] == "refit" and run.data.params["refit_epochs"] == "1"
    assert run.data.params["val_patches"] == "0" and run.data.params["test_patches"] == "0"
    assert int(run.data.params["train_patients"]) == len(patients) == final["patients"]
    assert not [k for k in run.data.metrics if k.startswith("test_")]
    assert "oof_roc_auc" in run.data.metrics
    assert model.metadata.metadata[ModelMeta.FINAL] == ModelMeta.CV_REFIT
    keras_model = model.unwrap_python_model().keras_model
    calibration = calibration_of(keras_model)
    platt = PlattMap(run.data.metrics["platt_slope"], run.data.metrics["platt_intercept"])
    if not platt.is_identity:
        assert calibration == (platt.slope, platt.intercept)
    assert "refit itself trained on all" in version.tags[VersionTag.SCORES]


@pytest.mark.slow
def test_calibrate_platt_maps_a_train_runs_model_by_its_validation_patients(
    tmp_path: Path, idc_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`calibrate: platt` on a train run, on real patients: the map is fitted on the
    validation patients only and, on the test patients it never saw, leaves ROC-AUC and the
    labels as they were. (Whether it lowers their ECE depends on ~8 validation patients: on
    this sample, 2 epochs on 1,200 patches, it did not — 0.054 -> 0.083 —; see
    benchmarks/cv_final.py's single_platt.)"""
    import keras
    import numpy as np

    from histomlf.evaluation.metrics import classification_metrics, expected_calibration_error
    from histomlf.models.averaging import calibration_of
    from histomlf.training.workflow import predict_probabilities, train_and_score

    monkeypatch.setenv("HISTOMLF_CACHE", str(tmp_path / "cache"))
    config = tiny_config(idc_sample, max_samples=600, calibrate="platt",
                         balance="class_weight", explain=False)
    outcome = train_and_score(config, work_dir=tmp_path / "work")
    calibration = outcome.calibration
    assert calibration is not None and calibration.status == "platt"
    assert calibration_of(outcome.model) == (calibration.platt.slope, calibration.platt.intercept)
    raw_model = next(layer for layer in outcome.model.layers if isinstance(layer, keras.Model))
    test = outcome.evaluation.splits["test"]
    labels = test.rows["label"].to_numpy()
    raw = predict_probabilities(raw_model, test.rows, outcome.data, config.batch_size)
    np.testing.assert_allclose(test.probabilities, calibration.platt(raw), atol=1e-5)
    assert not set(test.rows["patient_id"]) & set(outcome.data.rows["val"]["patient_id"])
    before = classification_metrics(labels, raw, 0.5)["roc_auc"]
    after = classification_metrics(labels, test.probabilities, 0.5)["roc_auc"]
    assert abs(before - after) < 1e-3  # rank-preserving up to float32 ties
    raw_threshold = calibration.platt.threshold  # the labels: the same cut on either scale
    assert np.mean((raw >= 0.5) == (test.probabilities >= raw_threshold(0.5))) > 0.995
    assert calibration.val_ece_uncalibrated == pytest.approx(expected_calibration_error(
        outcome.evaluation.splits["val"].rows["label"].to_numpy(),
        predict_probabilities(raw_model, outcome.evaluation.splits["val"].rows, outcome.data,
                              config.batch_size)), abs=1e-4)  # fmt: skip


@pytest.mark.slow
def test_cv_final_platt_lowers_ece_on_held_back_real_patients(
    tmp_path: Path, idc_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CV-final map, fitted on the pooled out-of-fold predictions of 40 real patients,
    on 12 other patients of the sample that no fold saw: ROC-AUC unchanged, ECE lower."""
    import shutil

    import keras

    from histomlf.data.scan import scan_to_cache
    from histomlf.evaluation.metrics import classification_metrics, expected_calibration_error
    from histomlf.recipes.cv import cross_validate
    from histomlf.tracking.scoring import keras_model_of, load_model
    from histomlf.training.workflow import predict_probabilities, prepare_data

    monkeypatch.setenv("HISTOMLF_CACHE", str(tmp_path / "cache"))
    patients = sorted(p.name for p in idc_sample.iterdir() if p.is_dir())
    fitted, held_back = patients[:40], patients[40:]
    data_dir = tmp_path / "idc-40"
    for patient in fitted:
        shutil.copytree(idc_sample / patient, data_dir / patient)
    config = tiny_config(data_dir, max_samples=900, calibrate="platt", explain=False)
    with tmp_store(tmp_path):
        final = cross_validate(config.replace(epochs=2), 2, final="ensemble")["final"]
        model = keras_model_of(load_model(final["model_uri"]))
    held = scan_to_cache(idc_sample).manifest
    held = held[held["patient_id"].astype(str).isin(held_back)].reset_index(drop=True)
    data = prepare_data(config.replace(data_dir=str(idc_sample), max_samples=0))
    mean = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    labels = held["label"].to_numpy()
    raw = predict_probabilities(mean, held, data, 64)
    calibrated = predict_probabilities(model, held, data, 64)
    before, after = (classification_metrics(labels, p, 0.5) for p in (raw, calibrated))
    assert abs(before["roc_auc"] - after["roc_auc"]) < 1e-3
    ece_raw = expected_calibration_error(labels, raw)
    ece_calibrated = expected_calibration_error(labels, calibrated)
    print(f"{len(held_back)} held-back patients, {len(held)} patches: "
          f"ECE {ece_raw:.3f} -> {ece_calibrated:.3f}")
    assert ece_calibrated < ece_raw


@pytest.mark.slow
def test_a_calibrated_train_run_logs_its_map_and_the_reliability_before_it(
    tmp_path: Path, synthetic: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import mlflow
    from mlflow.tracking import MlflowClient

    from histomlf.models.averaging import calibration_of
    from histomlf.recipes.train import train
    from histomlf.schema import Artifact

    monkeypatch.setenv("HISTOMLF_CACHE", str(tmp_path / "cache"))
    with tmp_store(tmp_path) as store:
        result = train(tiny_config(synthetic, explain=False, calibrate="platt"))
        client = MlflowClient(store.tracking_uri)
        run = client.get_run(result["run_id"])
        logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
        record = json.loads(mlflow.artifacts.load_text(
            f"runs:/{run.info.run_id}/{Artifact.CALIBRATION}"))
        model = mlflow.pyfunc.load_model(result["model_uri"])
    assert run.data.params["calibrate"] == "platt"
    assert {Artifact.CALIBRATION, Artifact.evaluation("val", "reliability_uncalibrated")} <= logged
    assert record["status"] == run.data.params["calibration"] == "platt"
    assert record["val_ece_uncalibrated"] == pytest.approx(
        run.data.metrics["val_ece_uncalibrated"])
    slope, intercept = run.data.metrics["platt_slope"], run.data.metrics["platt_intercept"]
    assert calibration_of(model.unwrap_python_model().keras_model) == pytest.approx(
        (slope, intercept))
    assert model.metadata.metadata["platt_slope"] == repr(slope)
    assert "Platt map" in result["calibration"]
