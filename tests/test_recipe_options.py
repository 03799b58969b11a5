"""The recipe options of issue 12: each option's check, what it does, and one run with several."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from helpers_data import sample_rows
from helpers_mlflow import tmp_store

from histomlf.config import ConfigError, TrainConfig
from histomlf.data.augment import augment_batch, mixup_batch, mixup_weights
from histomlf.data.pipeline import make_dataset
from histomlf.explain.gradcam import GradCam
from histomlf.models import create_model
from histomlf.training.fit import (
    compile_model,
    make_optimizer,
    phase_learning_rate,
    regularisation,
)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"label_smoothing": 0.5}, "label_smoothing must be in [0, 0.5), got 0.5"),
        ({"label_smoothing": -0.1}, "label_smoothing must be in [0, 0.5), got -0.1"),
        ({"weight_decay": -1e-4}, "weight_decay must be a finite number >= 0, got -0.0001"),
        ({"weight_decay": float("inf")}, "weight_decay must be a finite number >= 0, got inf"),
        ({"mixup": -0.2}, "mixup must be a finite number >= 0, got -0.2"),
        ({"mixup": float("nan")}, "mixup must be a finite number >= 0, got nan"),
        ({"tta": "d4"}, "tta must be one of none, dihedral8; got 'd4'"),
        ({"augment": "strongest"}, "augment must be one of none, light, strong, stronger; got"),
        ({"model": "vgg51px"}, "model must be one of "),
        ({"snapshots": 0}, "snapshots must be >= 1, got 0"),
        ({"snapshots": 3, "epochs": 10, "lr_schedule": "cosine", "early_stopping_patience": 0},
         "snapshots=3 needs epochs = a multiple of snapshots=3 (equal cycles); got 10"),
        ({"snapshots": 2, "epochs": 10, "early_stopping_patience": 0},
         "snapshots=2 needs lr_schedule = cosine (one cosine cycle per snapshot); got constant"),
        ({"snapshots": 2, "epochs": 10, "lr_schedule": "cosine"},
         "snapshots=2 needs early_stopping_patience = 0 (every cycle runs to its end); got 3"),
    ],
)
def test_each_option_refuses_a_bad_value_in_one_line(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        TrainConfig(**changes)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    if "model" in changes:
        assert "vgg50px" in str(error.value)


def test_defaults_keep_todays_recipe() -> None:
    config = TrainConfig()
    assert (config.mixup, config.label_smoothing, config.weight_decay, config.tta) == (
        0.0, 0.0, 0.0, "none",
    )  # fmt: skip
    assert regularisation(config) == {"label_smoothing": 0.0, "weight_decay": 0.0}


def test_label_smoothing_and_weight_decay_reach_the_compiled_model() -> None:
    model = create_model("simplecnn", dense_units=8)
    compile_model(model, "adam", 1e-3, label_smoothing=0.1, weight_decay=1e-4)
    assert model.loss.label_smoothing == pytest.approx(0.1)
    assert float(model.optimizer.weight_decay) == pytest.approx(1e-4)
    compile_model(model, "adam", 1e-3)
    assert model.loss.label_smoothing == 0.0 and model.optimizer.weight_decay is None
    assert float(make_optimizer("adamw", 1e-3).weight_decay) == pytest.approx(0.004)
    assert float(make_optimizer("sgd", 1e-3, 0.01).weight_decay) == pytest.approx(0.01)


def test_weight_decay_is_decoupled_from_the_gradient() -> None:
    """With a zero gradient Adam moves nothing, and decay alone shrinks w by lr * decay * w."""
    variable = keras.Variable(np.array([2.0, -4.0], np.float32))
    optimizer = make_optimizer("adam", 0.1, weight_decay=0.5)
    optimizer.apply_gradients([(keras.ops.zeros((2,)), variable)])
    np.testing.assert_allclose(np.asarray(variable), [2.0 * 0.95, -4.0 * 0.95], rtol=1e-6)


def test_mixup_blends_images_and_labels_with_the_same_weights() -> None:
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (64, 50, 50, 3), dtype=np.uint8))
    labels = tf.constant((np.arange(64) % 2).astype(np.float32))
    seed = tf.constant([3, 4], tf.int64)
    mixed, soft = mixup_batch(images, labels, seed, alpha=0.4)
    lam, partner = (np.asarray(t) for t in mixup_weights(64, seed, 0.4))
    assert sorted(partner.tolist()) == list(range(64)) and ((0 <= lam) & (lam <= 1)).all()
    assert mixed.dtype == tf.float32 and soft.dtype == tf.float32
    x, y = images.numpy().astype(np.float32), labels.numpy()
    share = lam[:, None, None, None]
    np.testing.assert_allclose(mixed, share * x + (1 - share) * x[partner], atol=1e-3)
    np.testing.assert_allclose(soft, lam * y + (1 - lam) * y[partner], atol=1e-6)
    again, _ = mixup_batch(images, labels, seed, alpha=0.4)
    np.testing.assert_array_equal(again, mixed)
    # Beta(alpha, alpha): mean 1/2 and, for alpha < 1, most draws near 0 or 1.
    many, _ = mixup_weights(20_000, seed, 0.4)
    assert abs(float(np.mean(many)) - 0.5) < 0.02
    assert np.mean((np.asarray(many) < 0.1) | (np.asarray(many) > 0.9)) > 0.4


def test_mixup_in_the_pipeline_only_mixes_training_batches(idc_sample: Path) -> None:
    from keras.src.trainers.data_adapters.tf_dataset_adapter import make_class_weight_map_fn

    rows = sample_rows(idc_sample).iloc[::8].reset_index(drop=True)
    train = make_dataset(rows, batch_size=32, training=True, seed=1, mixup=0.4)
    images, labels = next(iter(train))
    assert images.dtype == tf.float32 and images.shape == (32, 50, 50, 3)
    soft = labels.numpy()
    assert ((soft >= 0) & (soft <= 1)).all() and ((soft > 0.01) & (soft < 0.99)).any()
    # Keras' class weights weigh a mixed patch by its dominant (rounded) label.
    weights = {0: 0.25, 1: 0.75}
    _, _, sample_weight = make_class_weight_map_fn(weights)(images, labels)
    np.testing.assert_allclose(sample_weight, np.where(np.round(soft) == 1, 0.75, 0.25))
    plain_images, plain_labels = next(iter(make_dataset(rows, batch_size=32, training=False)))
    assert plain_images.dtype == tf.uint8 and set(plain_labels.numpy()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="mixup alpha must be >= 0"):
        make_dataset(rows, batch_size=32, training=True, mixup=-1.0)


def test_stronger_stain_jitter_moves_colours_more_than_strong(idc_sample: Path) -> None:
    rows = sample_rows(idc_sample).iloc[::8].reset_index(drop=True)
    images, _ = next(iter(make_dataset(rows, batch_size=64, training=False)))
    seed = tf.constant([5, 6], tf.int64)
    light = augment_batch(images, seed, "light").numpy().astype(np.float32)
    change = {
        mode: np.abs(augment_batch(images, seed, mode).numpy().astype(np.float32) - light).mean()
        for mode in ("strong", "stronger")
    }
    assert augment_batch(images, seed, "stronger").dtype == tf.uint8
    assert 0 < change["strong"] and change["stronger"] > 2 * change["strong"]


def test_snapshot_cycles_restart_the_cosine_at_the_full_rate() -> None:
    rate = phase_learning_rate(0.01, "cosine", epochs=4, steps_per_epoch=10, cycles=2)
    at = {step: float(rate(step)) for step in (0, 10, 19, 20, 30, 39)}
    assert at[0] == pytest.approx(0.01) and at[20] == pytest.approx(0.01)
    assert at[19] < 0.001 and at[39] < 0.001 and at[10] == pytest.approx(at[30])
    single = phase_learning_rate(0.01, "cosine", epochs=4, steps_per_epoch=10)
    assert float(single(20)) < 0.01


def test_snapshot_ensemble_serves_the_mean_of_the_cycle_end_models(
    tmp_path: Path, idc_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny in-process fit with 2 one-epoch cycles: two different snapshots, one Keras model
    whose probability is their mean, explained by Grad-CAM like any histomlf model."""
    from histomlf.explain.averaged import explainer_for
    from histomlf.training.workflow import build_model, train_and_score

    monkeypatch.setenv("HISTOMLF_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(
        epochs=2, snapshots=2, lr_schedule="cosine", early_stopping_patience=0, batch_size=32,
        dense_units=8, max_samples=200, explain=False, data_dir=str(idc_sample),
    )  # fmt: skip
    outcome = train_and_score(config, work_dir=tmp_path / "work")
    first, second = outcome.fit.snapshot_weights
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert outcome.model.name == "snapshots2"
    assert not (tmp_path / "work" / "snapshots").exists()
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, (12, 50, 50, 3)).astype(np.float32)
    members = []
    for weights in (first, second):
        member = build_model(config)
        member.set_weights(weights)
        members.append(member.predict(batch, verbose=0))
    ensemble = outcome.model.predict(batch, verbose=0)
    np.testing.assert_allclose(ensemble, np.mean(members, axis=0), rtol=0, atol=1e-6)
    assert 0.0 <= outcome.metrics()["test_roc_auc"] <= 1.0
    heatmaps = explainer_for(outcome.model)(batch[:2])
    assert heatmaps.shape == (2, 50, 50) and np.isfinite(heatmaps).all()


def test_vgg50px_is_cpu_sized_explainable_and_trains_a_step() -> None:
    model = create_model("vgg50px", dense_units=16)
    assert 200_000 < model.count_params() < 400_000
    assert GradCam(model).cells == (12, 12)
    compile_model(model, "adam", 1e-3, label_smoothing=0.1, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 50, 50, 3)).astype(np.float32)
    y = (np.arange(16) % 2).astype(np.float32)
    before = [w.copy() for w in model.get_layer("backbone").get_weights()]
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    after = model.get_layer("backbone").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.slow
def test_train_recipe_with_several_options_on_logs_a_tta_model(
    tmp_path: Path, idc_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One tiny in-process run: vgg50px + stronger stain jitter + mixup + label smoothing +
    weight decay + TTA. The logged model is the TTA model and scores the test patches within
    1e-5 of the run's own evaluation."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from histomlf.recipes.train import train
    from histomlf.tracking.pyfunc import predict_patches
    from histomlf.tracking.scoring import keras_model_of

    monkeypatch.setenv("HISTOMLF_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(
        model="vgg50px", epochs=1, batch_size=32, dense_units=16, augment="stronger",
        mixup=0.4, label_smoothing=0.1, weight_decay=1e-4, tta="dihedral8",
        early_stopping_patience=0, max_samples=200, explain=False,
        data_dir=str(idc_sample), experiment="options",
    )  # fmt: skip
    with tmp_store(tmp_path) as store:
        result = train(config)
        client = MlflowClient(store.tracking_uri)
        run = client.get_run(result["run_id"])
        csv = client.download_artifacts(
            result["run_id"], "predictions/test_predictions.csv", str(tmp_path)
        )
        loaded = mlflow.pyfunc.load_model(result["model_uri"])

    params = run.data.params
    assert (params["model"], params["tta"], params["mixup"]) == ("vgg50px", "dihedral8", "0.4")
    assert params["label_smoothing"] == "0.1" and params["augment"] == "stronger"
    assert 0.0 <= result["metrics"]["test_roc_auc"] <= 1.0
    assert keras_model_of(loaded).name == "vgg50px_tta"
    logged = pd.read_csv(csv).head(40)
    from histomlf.data.patches import decode_patch

    batch = np.stack([decode_patch(Path(p).read_bytes()) for p in logged["path"]])
    served = predict_patches(loaded, batch)["probability"].to_numpy()
    np.testing.assert_allclose(served, logged["probability"].to_numpy(), rtol=0, atol=1e-5)


def test_tuning_refuses_a_snapshot_ensemble_instead_of_ignoring_it(tmp_path: Path) -> None:
    from histomlf.tuning.settings import SearchSettings
    from histomlf.tuning.tuners import create_tuner

    config = TrainConfig(snapshots=2, epochs=4, lr_schedule="cosine", early_stopping_patience=0)
    with pytest.raises(ConfigError, match="snapshots=2 applies to train and cv"):
        create_tuner(None, SearchSettings(), config, tmp_path)
