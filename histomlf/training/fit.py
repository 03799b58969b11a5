"""Two-phase training of a `histomlf.models` classifier; returns metrics, logs nowhere.

Phase 1 trains for `config.epochs`. With pretrained backbone weights (`imagenet` or a file)
the backbone is frozen and only the head learns, so large early gradients from a random head
do not wreck the pretrained features. With `weights="none"` the whole network trains in
phase 1: freezing random features would leave a linear model on noise.

Phase 2 (`config.fine_tune_epochs > 0`) unfreezes the top `config.fine_tune_layers` layers
of the backbone (0 = all of them), keeps every BatchNormalization layer frozen (so it runs
in inference mode and keeps its statistics, as the Keras transfer-learning guide advises),
recompiles at `config.fine_tune_learning_rate` and continues the epoch numbering.

Each phase early-stops on `val_roc_auc` (patience `config.early_stopping_patience`, 0 =
off) and restores its best weights. `BackupAndRestore` in `work_dir/backup/phase<N>` plus a
phase-1 checkpoint make a rerun with the same `work_dir` resume after its last finished
epoch; a completed fit cleans up, so the next run in that folder starts fresh.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from histomlf.choices import LR_SCHEDULE_CHOICES, OPTIMIZER_CHOICES
from histomlf.config import TrainConfig
from histomlf.models.heads import BACKBONE_NAME
from histomlf.training.callbacks import (
    EpochHistoryRecorder,
    SnapshotSaver,
    ThroughputMeter,
    read_history,
)

MONITOR = "val_roc_auc"
HISTORY_KEYS = ("loss", "accuracy", "roc_auc", "pr_auc", "precision", "recall")
HISTORY_FILE = "history.jsonl"
_PHASE1_WEIGHTS = "phase1.weights.h5"
_PHASE1_STATE = "phase1.json"


@dataclass(frozen=True)
class FitResult:
    """What a fit produced, epoch by epoch, over both phases.

    `history` maps each Keras metric name (`HISTORY_KEYS` and their `val_` twins) to one
    value per row; `epochs` holds each row's 0-based epoch index (the Keras `epoch`, also
    the step the tracking callback logs) and `phases` its phase (1 or 2). `best_epoch` is
    the epoch with the highest `val_roc_auc` (None without validation), whose weights the
    model holds at the end of its phase. `images_per_second` counts training batches times
    `batch_size` (full batches assumed) over training-step time, validation excluded.
    """

    history: dict[str, list[float]]
    epochs: list[int]
    phases: list[int]
    epochs_run: int
    best_epoch: int | None
    best_value: float | None
    monitor: str
    wall_seconds: float
    train_seconds: float
    images_per_second: float
    resumed: bool
    # Snapshot ensembles (`config.snapshots` > 1): the weights at the end of each cosine cycle.
    snapshot_weights: tuple[list[Any], ...] = ()

    def phase_epochs(self, phase: int) -> list[int]:
        return [epoch for epoch, p in zip(self.epochs, self.phases, strict=True) if p == phase]

    def final(self, key: str) -> float:
        """The last epoch's value of `key` (e.g. `val_roc_auc`)."""
        return self.history[key][-1]


def make_deterministic(seed: int) -> None:
    """Seed Python, NumPy and the backend, and make TensorFlow ops deterministic.

    Same seed + same data + same device -> identical weights. Op determinism also turns off
    XLA auto-compilation in Keras and may slow some ops; call once per process, first.
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_optimizer(
    name: str, learning_rate: Any, weight_decay: float = 0.0
) -> keras.optimizers.Optimizer:
    """`adam`, `adamw`, `sgd` (momentum 0.9) or `rmsprop` at `learning_rate`.

    `weight_decay` > 0 is Keras 3's decoupled decay, the same for every optimizer: after each
    step every trainable variable shrinks by `variable * weight_decay * learning_rate` (so
    `adam` with it is AdamW). 0 keeps each optimizer's default: none, AdamW's 0.004.
    """
    decay = {"weight_decay": weight_decay} if weight_decay > 0 else {}
    factories = {
        "adam": lambda: keras.optimizers.Adam(learning_rate, **decay),
        "adamw": lambda: keras.optimizers.AdamW(learning_rate, **decay),
        "sgd": lambda: keras.optimizers.SGD(learning_rate, momentum=0.9, **decay),
        "rmsprop": lambda: keras.optimizers.RMSprop(learning_rate, **decay),
    }
    if name not in OPTIMIZER_CHOICES:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZER_CHOICES)}")
    return factories[name]()


def training_metrics() -> list[keras.metrics.Metric]:
    """Fresh metric objects named so history keys are stable across phases and runs."""
    return [
        keras.metrics.BinaryAccuracy(name="accuracy"),
        keras.metrics.AUC(curve="ROC", name="roc_auc"),
        keras.metrics.AUC(curve="PR", name="pr_auc"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
    ]


def phase_learning_rate(
    learning_rate: float,
    schedule: str,
    epochs: int,
    steps_per_epoch: int | None,
    cycles: int = 1,
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A constant rate, or a cosine decay over the phase's steps down to 5 % of it.

    Cosine decay settles the weights at the end of short CPU runs, where a constant rate left
    validation scores jumping from epoch to epoch. `cycles` > 1 restarts the decay at full
    rate that many times in equal cycles (SGDR, Loshchilov & Hutter 2017): the snapshot
    ensemble's schedule.
    """
    if schedule == "constant" or not steps_per_epoch or epochs <= 0:
        return learning_rate
    if schedule == "cosine" and cycles > 1:
        return keras.optimizers.schedules.CosineDecayRestarts(
            learning_rate,
            first_decay_steps=epochs // cycles * steps_per_epoch,
            t_mul=1.0,
            m_mul=1.0,
            alpha=0.05,
        )
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=epochs * steps_per_epoch, alpha=0.05
        )
    raise ValueError(f"unknown lr_schedule {schedule!r}; known: {', '.join(LR_SCHEDULE_CHOICES)}")


def compile_model(
    model: keras.Model,
    optimizer: str,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    *,
    label_smoothing: float = 0.0,
    weight_decay: float = 0.0,
) -> None:
    """Binary cross-entropy plus `training_metrics()`; recompiling resets optimizer state.

    `label_smoothing` moves the loss's targets towards 0.5 (y -> y(1 - s) + s/2); the metrics
    keep the true labels. `weight_decay`: see `make_optimizer`.
    """
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate, weight_decay),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=training_metrics(),
    )


def _all_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    return list(layer._flatten_layers(include_self=True, recursive=True))


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers in order, input layer excluded (what `fine_tune_layers` counts)."""
    backbone = model.get_layer(BACKBONE_NAME)
    return [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze (BatchNorm then runs in inference mode) or fully unfreeze the backbone."""
    backbone = model.get_layer(BACKBONE_NAME)
    backbone.trainable = trainable
    for layer in _all_layers(backbone):
        layer.trainable = trainable


def unfreeze_top_layers(model: keras.Model, count: int) -> None:
    """Make the top `count` backbone layers (0 = all) trainable, except BatchNormalization."""
    layers = backbone_layers(model)
    top = layers if count <= 0 else layers[-count:]
    top_ids = {id(layer) for layer in top}
    set_backbone_trainable(model, True)
    for layer in layers:
        for sub in _all_layers(layer):
            sub.trainable = id(layer) in top_ids and not isinstance(
                sub, keras.layers.BatchNormalization
            )


class TolerantBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that starts afresh when a kill left only a truncated first backup.

    Keras falls back to the previous backup when the latest is corrupt, but raises when there
    is none (a process killed while writing its first epoch's backup).
    """

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except OSError:
            shutil.rmtree(self.backup_dir, ignore_errors=True)


def regularisation(config: TrainConfig) -> dict[str, float]:
    """The loss and optimizer settings of `config` that `compile_model` takes."""
    return {"label_smoothing": config.label_smoothing, "weight_decay": config.weight_decay}


def uses_pretrained_weights(config: TrainConfig) -> bool:
    return config.weights.strip().lower() not in ("none", "")


def fit(
    model: keras.Model,
    config: TrainConfig,
    train_ds: Any,
    val_ds: Any,
    *,
    steps_per_epoch: int | None = None,
    class_weight: dict[int, float] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    work_dir: Path,
    verbose: int | str = 2,
    initial_epoch: int = 0,
) -> FitResult:
    """Train `model` in up to two phases (see the module docstring) and return its history.

    `train_ds` yields `(uint8 images [B, 50, 50, 3], float labels [B])` and may repeat
    forever when `steps_per_epoch` is given; `val_ds` is finite (or None: no early
    stopping, no best epoch). `callbacks` are extra Keras callbacks run in both phases.
    `initial_epoch` continues a schedule on weights an earlier fit left in `model` (Hyperband
    resumes a trial this way): phase 1 runs its remaining epochs, or is skipped when
    `initial_epoch >= config.epochs`, and phase 2 then starts at `initial_epoch`.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    history_path = work_dir / HISTORY_FILE
    phase1_state = work_dir / _PHASE1_STATE
    backup_root = work_dir / "backup"
    snapshot_dir = work_dir / "snapshots"
    resumed = phase1_state.is_file() or (backup_root / "phase1").exists()
    if not resumed:
        history_path.unlink(missing_ok=True)

    meter = ThroughputMeter()
    started = time.perf_counter()

    def run_phase(phase: int, epochs: int, initial_epoch: int) -> None:
        phase_callbacks: list[keras.callbacks.Callback] = [
            TolerantBackupAndRestore(backup_dir=str(backup_root / f"phase{phase}")),
            EpochHistoryRecorder(history_path, phase),
            meter,
        ]
        if phase == 1 and config.snapshots > 1:
            cycle = config.epochs // config.snapshots
            phase_callbacks.append(SnapshotSaver(snapshot_dir, every=cycle))
        if val_ds is not None and config.early_stopping_patience > 0:
            phase_callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=MONITOR,
                    mode="max",
                    patience=config.early_stopping_patience,
                    restore_best_weights=True,
                )
            )
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            class_weight=class_weight,
            shuffle=not isinstance(train_ds, tf.data.Dataset),
            callbacks=[*phase_callbacks, *callbacks],
            verbose=verbose,
        )

    if phase1_state.is_file():
        model.load_weights(work_dir / _PHASE1_WEIGHTS)
        phase1_epochs = int(json.loads(phase1_state.read_text())["epochs_run"])
    elif initial_epoch >= config.epochs:
        phase1_epochs = initial_epoch
    else:
        set_backbone_trainable(model, not uses_pretrained_weights(config))
        rate = phase_learning_rate(
            config.learning_rate,
            config.lr_schedule,
            config.epochs - initial_epoch,
            steps_per_epoch,
            cycles=config.snapshots,
        )
        compile_model(model, config.optimizer, rate, **regularisation(config))
        run_phase(1, config.epochs, initial_epoch)
        phase1_epochs = max(read_history(history_path)[0], default=initial_epoch - 1) + 1
        if config.fine_tune_epochs > 0:
            model.save_weights(work_dir / _PHASE1_WEIGHTS)
            phase1_state.write_text(json.dumps({"epochs_run": phase1_epochs}))

    if config.fine_tune_epochs > 0:
        unfreeze_top_layers(model, config.fine_tune_layers)
        rate = phase_learning_rate(
            config.fine_tune_learning_rate,
            config.lr_schedule,
            config.fine_tune_epochs,
            steps_per_epoch,
        )
        compile_model(model, config.optimizer, rate, **regularisation(config))
        run_phase(2, phase1_epochs + config.fine_tune_epochs, phase1_epochs)

    wall_seconds = time.perf_counter() - started
    snapshot_weights = SnapshotSaver.load(snapshot_dir, model) if config.snapshots > 1 else ()
    shutil.rmtree(snapshot_dir, ignore_errors=True)
    for leftover in (phase1_state, work_dir / _PHASE1_WEIGHTS):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(backup_root, ignore_errors=True)

    epochs, phases, history = read_history(history_path)
    best_epoch, best_value = _best(epochs, history.get(MONITOR))
    images = meter.batches * config.batch_size
    return FitResult(
        history=history,
        epochs=epochs,
        phases=phases,
        epochs_run=len(epochs),
        best_epoch=best_epoch,
        best_value=best_value,
        monitor=MONITOR,
        wall_seconds=wall_seconds,
        train_seconds=meter.seconds,
        images_per_second=images / meter.seconds if meter.seconds > 0 else float("nan"),
        resumed=resumed,
        snapshot_weights=snapshot_weights,
    )


def _best(epochs: list[int], values: list[float] | None) -> tuple[int | None, float | None]:
    if not values:
        return None, None
    scored = [
        (value, epoch) for epoch, value in zip(epochs, values, strict=True) if not math.isnan(value)
    ]
    if not scored:
        return None, None
    value, epoch = max(scored, key=lambda pair: (pair[0], -pair[1]))
    return epoch, value
