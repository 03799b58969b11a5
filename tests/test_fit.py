"""Two-phase fit on tiny synthetic data: history, freezing, resume, early stopping, seeds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from histomlf.config import TrainConfig
from histomlf.models import create_model
from histomlf.training.fit import (
    HISTORY_KEYS,
    MONITOR,
    backbone_layers,
    fit,
    make_deterministic,
    make_optimizer,
)

BATCH = 8


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 patches whose red channel is brighter for IDC, so a CNN can learn something."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 160, (n, 50, 50, 3)).astype(np.int32)
    images[..., 0] += 90 * labels[:, None, None]
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.float32)


def datasets(n_train: int = 32, n_val: int = 16) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    x, y = synthetic(n_train, 0)
    xv, yv = synthetic(n_val, 1)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    val = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(BATCH)
    return train, val


def tiny_config(**changes: object) -> TrainConfig:
    base = {"epochs": 1, "batch_size": BATCH, "early_stopping_patience": 0, "learning_rate": 1e-2}
    return TrainConfig(**{**base, **changes})


def backbone_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {
        layer.name: [np.array(w) for w in layer.get_weights()] for layer in backbone_layers(model)
    }


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


class EpochsSeen(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.begun: list[int] = []
        self.logs: list[dict] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.begun.append(epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.logs.append(dict(logs or {}))


class SnapshotAtPhaseEnd(keras.callbacks.Callback):
    """Backbone weights at the end of each `model.fit` call, i.e. of each phase."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[dict[str, list[np.ndarray]]] = []

    def on_train_end(self, logs: dict | None = None) -> None:
        self.snapshots.append(backbone_weights(self.model))


class CrashAt(keras.callbacks.Callback):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


@pytest.fixture
def deterministic() -> Iterator[None]:
    make_deterministic(0)
    yield
    tf_config.disable_op_determinism()


def test_two_phase_fit_history_and_result(tmp_path: Path, deterministic: None) -> None:
    train, val = datasets()
    seen = EpochsSeen()
    config = tiny_config(epochs=2, fine_tune_epochs=1, fine_tune_layers=4)
    result = fit(create_model("simplecnn"), config, train, val, callbacks=[seen], work_dir=tmp_path)

    expected_keys = {*HISTORY_KEYS, *(f"val_{key}" for key in HISTORY_KEYS)}
    assert set(result.history) == expected_keys
    assert set(seen.logs[0]) == expected_keys
    assert result.epochs == [0, 1, 2] and result.phases == [1, 1, 2]
    assert seen.begun == [0, 1, 2]
    assert result.epochs_run == 3 and result.phase_epochs(2) == [2]
    assert all(len(values) == 3 for values in result.history.values())
    assert result.monitor == MONITOR == "val_roc_auc"
    assert result.best_epoch in result.epochs
    assert result.best_value == max(result.history["val_roc_auc"])
    assert result.images_per_second > 0 and result.wall_seconds >= result.train_seconds > 0
    assert not result.resumed
    assert not (tmp_path / "backup").exists()


def test_random_weights_train_the_whole_network_in_phase_1(tmp_path: Path) -> None:
    train, val = datasets()
    model = create_model("simplecnn")
    before = backbone_weights(model)
    fit(model, tiny_config(), train, val, work_dir=tmp_path, verbose=0)
    after = backbone_weights(model)
    assert not same(before["block1_conv"], after["block1_conv"])
    assert not same(before["block1_bn"], after["block1_bn"])  # BN learns with random weights


def test_file_weights_freeze_backbone_then_fine_tune_top_layers(tmp_path: Path) -> None:
    train, val = datasets()
    weights_file = tmp_path / "backbone.weights.h5"
    create_model("simplecnn").get_layer("backbone").save_weights(weights_file)
    model = create_model("simplecnn", weights=str(weights_file))
    loaded = backbone_weights(model)
    head_before = [np.array(w) for w in model.get_layer("dense").get_weights()]
    snapshot = SnapshotAtPhaseEnd()
    # backbone: block{1,2,3}_{conv,bn,relu,pool}; the top 4 layers are block3's
    config = tiny_config(weights=str(weights_file), fine_tune_epochs=1, fine_tune_layers=4)
    fit(model, config, train, val, callbacks=[snapshot], work_dir=tmp_path / "run", verbose=0)

    after_phase1, after_phase2 = snapshot.snapshots
    for name, values in loaded.items():
        assert same(values, after_phase1[name]), f"{name} changed while frozen"
    assert not same(head_before, model.get_layer("dense").get_weights())
    assert not same(after_phase1["block3_conv"], after_phase2["block3_conv"])
    for name in ("block1_conv", "block2_conv", "block1_bn", "block2_bn", "block3_bn"):
        assert same(after_phase1[name], after_phase2[name]), f"{name} changed in phase 2"


def test_early_stopping_and_epoch_numbering_across_phases(tmp_path: Path) -> None:
    """A model that cannot change (frozen backbone, lr 0) stops after `patience` epochs."""
    train, val = datasets()
    weights_file = tmp_path / "backbone.weights.h5"
    create_model("simplecnn").get_layer("backbone").save_weights(weights_file)
    model = create_model("simplecnn", weights=str(weights_file), dropout=0.0)
    config = tiny_config(
        weights=str(weights_file),
        epochs=6,
        learning_rate=0.0,
        early_stopping_patience=1,
        fine_tune_epochs=1,
        fine_tune_layers=2,
    )
    result = fit(model, config, train, val, work_dir=tmp_path / "run", verbose=0)
    assert result.epochs == [0, 1, 2] and result.phases == [1, 1, 2]
    assert result.best_epoch == 0


@pytest.mark.slow
def test_rerun_resumes_after_a_crash(tmp_path: Path) -> None:
    train, val = datasets()
    config = tiny_config(epochs=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(
            create_model("simplecnn"), config, train, val, callbacks=[CrashAt(1)], work_dir=tmp_path
        )
    assert (tmp_path / "backup" / "phase1").exists()

    seen = EpochsSeen()
    result = fit(create_model("simplecnn"), config, train, val, callbacks=[seen], work_dir=tmp_path)
    assert seen.begun == [1, 2]
    assert result.resumed
    assert result.epochs == [0, 1, 2] and result.epochs_run == 3

    fresh = EpochsSeen()
    fit(create_model("simplecnn"), config, train, val, callbacks=[fresh], work_dir=tmp_path)
    assert fresh.begun == [0, 1, 2]  # a finished fit leaves nothing to resume


@pytest.mark.slow
def test_rerun_resumes_in_phase_2(tmp_path: Path) -> None:
    train, val = datasets()
    config = tiny_config(epochs=1, fine_tune_epochs=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(
            create_model("simplecnn"), config, train, val, callbacks=[CrashAt(2)], work_dir=tmp_path
        )
    seen = EpochsSeen()
    result = fit(create_model("simplecnn"), config, train, val, callbacks=[seen], work_dir=tmp_path)
    assert seen.begun == [2]
    assert result.epochs == [0, 1, 2] and result.phases == [1, 2, 2]


@pytest.mark.slow
def test_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    train, val = datasets()
    config = tiny_config(epochs=2, dropout=0.3)
    runs = []
    try:
        for run in range(2):
            make_deterministic(123)
            model = create_model("simplecnn", dropout=0.3)
            result = fit(model, config, train, val, work_dir=tmp_path / str(run), verbose=0)
            runs.append((model.get_weights(), result.history))
    finally:
        tf_config.disable_op_determinism()
    (weights_a, history_a), (weights_b, history_b) = runs
    assert same(weights_a, weights_b)
    assert history_a == history_b


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_optimizers_by_name(name: str) -> None:
    optimizer = make_optimizer(name, 0.01)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    if name == "sgd":
        assert optimizer.momentum == 0.9


def test_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="adam"):
        make_optimizer("lion", 0.01)


def real_patches(sample_dir: Path, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` full-size 50x50 patches of each class from the real sample (`class<C>`)."""
    from PIL import Image

    chosen: dict[float, list[np.ndarray]] = {0.0: [], 1.0: []}
    for path in sorted(sample_dir.rglob("*.png")):
        label = float(path.stem.rsplit("class", 1)[1])
        if len(chosen[label]) < per_class:
            with Image.open(path) as image:
                if image.size == (50, 50):
                    chosen[label].append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        if all(len(images) == per_class for images in chosen.values()):
            break
    labels = np.repeat([0.0, 1.0], per_class).astype(np.float32)
    return np.stack(chosen[0.0] + chosen[1.0]), labels


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_study_backbones_fine_tune_one_step_on_real_patches(
    name: str, idc_sample: Path, tmp_path: Path
) -> None:
    x, y = real_patches(idc_sample, 4)
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(8, seed=0).batch(4)
    model = create_model(name)
    before = backbone_weights(model)
    config = tiny_config(model=name, fine_tune_epochs=1, fine_tune_layers=3, learning_rate=1e-4)
    result = fit(
        model, config, data.repeat(), data, steps_per_epoch=1, work_dir=tmp_path, verbose=0
    )
    assert result.epochs == [0, 1] and result.phases == [1, 2]
    bn = [layer.name for layer in backbone_layers(model) if "bn" in layer.name]
    if bn:  # ResNet50: BatchNorm statistics move in phase 1 (random weights) only
        assert not same(before[bn[0]], backbone_weights(model)[bn[0]])
    assert np.isfinite(result.history["val_loss"]).all()


def test_cosine_schedule_decays_over_the_phase_to_five_percent() -> None:
    from histomlf.training.fit import phase_learning_rate

    assert phase_learning_rate(0.01, "constant", 5, 10) == 0.01
    schedule = phase_learning_rate(0.01, "cosine", 5, 10)
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(25)) == pytest.approx(0.01 * (0.05 + 0.95 * 0.5), rel=1e-5)
    assert float(schedule(50)) == pytest.approx(0.0005, rel=1e-5)
    with pytest.raises(ValueError, match="lr_schedule"):
        phase_learning_rate(0.01, "step", 5, 10)


def test_a_truncated_first_backup_starts_the_fit_afresh(tmp_path: Path) -> None:
    # A process killed while writing its first backup leaves a truncated file and no older one.
    backup = tmp_path / "backup" / "phase1"
    backup.mkdir(parents=True)
    (backup / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 88)
    train, val = datasets()
    seen = EpochsSeen()
    result = fit(
        create_model("simplecnn"),
        tiny_config(epochs=2),
        train,
        val,
        callbacks=[seen],
        work_dir=tmp_path,
    )
    assert seen.begun == [0, 1]
    assert result.epochs == [0, 1]
