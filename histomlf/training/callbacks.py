"""Keras callbacks `fit` relies on: a crash-proof per-epoch history and a throughput meter."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import keras


def _jsonable(value: Any) -> float:
    number = float(value)
    return number if math.isfinite(number) else float("nan")


class EpochHistoryRecorder(keras.callbacks.Callback):
    """Append each finished epoch's logs (plus its phase) to a JSON-lines file.

    Keras' own `History` only holds the epochs of the current `model.fit` call, so after a
    resume (`BackupAndRestore`) or across the two training phases it misses epochs; this
    file, rewritten by epoch number on read, holds them all.
    """

    def __init__(self, path: Path, phase: int) -> None:
        super().__init__()
        self.path = Path(path)
        self.phase = phase

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        row = {"epoch": int(epoch), "phase": self.phase}
        row.update({key: _jsonable(value) for key, value in (logs or {}).items()})
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


class SnapshotSaver(keras.callbacks.Callback):
    """Save the weights at the end of every `every`-th epoch (a cosine cycle's end) to
    `folder/snapshot-<epoch>.weights.h5`, so a resumed fit keeps the snapshots taken before."""

    def __init__(self, folder: Path, every: int) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.every = every

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if (epoch + 1) % self.every == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.model.save_weights(self.folder / f"snapshot-{epoch + 1:05d}.weights.h5")

    @staticmethod
    def load(folder: Path, model: keras.Model) -> tuple[list[Any], ...]:
        """Every saved snapshot's weights, oldest first; `model` is left as it was."""
        current = model.get_weights()
        snapshots = []
        for path in sorted(Path(folder).glob("snapshot-*.weights.h5")):
            model.load_weights(path)
            snapshots.append(model.get_weights())
        model.set_weights(current)
        return tuple(snapshots)


def read_history(path: Path) -> tuple[list[int], list[int], dict[str, list[float]]]:
    """`(epochs, phases, metric -> values)` from an `EpochHistoryRecorder` file.

    When an epoch appears twice (it was re-run after a crash) the last record wins. A metric
    missing from some epochs is padded with nan so every list aligns with `epochs`.
    """
    rows: dict[int, dict[str, Any]] = {}
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[int(row["epoch"])] = row
    epochs = sorted(rows)
    phases = [int(rows[epoch]["phase"]) for epoch in epochs]
    keys: list[str] = []
    for epoch in epochs:
        keys.extend(key for key in rows[epoch] if key not in ("epoch", "phase") and key not in keys)
    history = {key: [float(rows[e].get(key, float("nan"))) for e in epochs] for key in keys}
    return epochs, phases, history


class ThroughputMeter(keras.callbacks.Callback):
    """Count training batches and the seconds spent on them (data loading included).

    Time runs from each epoch's start to its last training batch, so validation and
    end-of-epoch callbacks do not count.
    """

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0
        self.seconds = 0.0
        self._epoch_start = 0.0
        self._last_batch_end = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_start = self._last_batch_end = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.batches += 1
        self._last_batch_end = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.seconds += self._last_batch_end - self._epoch_start
