"""Each epoch's Keras logs into MLflow: a Keras callback for train runs, a function for trials."""

from __future__ import annotations

import time

import keras
import mlflow

EPOCH_PREFIX = "epoch/"


def metric_key(keras_key: str) -> str:
    """Keras history key -> the per-epoch MLflow key: `loss` -> `epoch/train_loss`,
    `val_roc_auc` -> `epoch/val_roc_auc`, `learning_rate` -> `epoch/learning_rate`.

    Per-epoch curves live in their own `epoch/` section of the MLflow charts, so no key mixes
    Keras' per-epoch values with the final `train_*` / `val_*` / `test_*` scores computed at
    the decision threshold after the fit.
    """
    if keras_key.startswith("val_") or keras_key == "learning_rate":
        return EPOCH_PREFIX + keras_key
    return f"{EPOCH_PREFIX}train_{keras_key}"


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs `epoch/train_*` / `epoch/val_*` per epoch at step = epoch (across phases).

    `step_offset` keeps steps from colliding when several fits log to one run
    (e.g. executions of one tuning trial).
    """

    def __init__(self, step_offset: int = 0, run_id: str | None = None) -> None:
        super().__init__()
        self.step_offset = step_offset
        self.run_id = run_id
        self.logged_steps: set[int] = set()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        step = epoch + self.step_offset
        if log_epoch(logs or {}, step, self.run_id):
            self.logged_steps.add(step)


def log_epoch(logs: dict, step: int, run_id: str | None = None) -> bool:
    """Log one epoch's Keras logs under their `epoch/` keys at `step`, into `run_id` (else the
    active run); False when there was nothing to log."""
    values = {metric_key(k): float(v) for k, v in logs.items()}
    if not values:
        return False
    if run_id:
        now = int(time.time() * 1000)
        metrics = [mlflow.entities.Metric(k, v, now, step) for k, v in values.items()]
        mlflow.MlflowClient().log_batch(run_id, metrics=metrics)
    else:
        mlflow.log_metrics(values, step=step)
    return True
