"""Class balance for training: class weights for `fit`, or per-epoch undersampling of rows.

IDC is ~28 % positive. `class_weight` keeps every row and reweights the loss (`class_weights`);
`undersample` is what the original study did: each epoch keeps all minority rows plus an equally
large random subset of the majority class, redrawn every epoch so no majority row is lost for
good (`undersample_indices`); `none` leaves the data as is.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

BALANCE_MODES = ("class_weight", "undersample", "none")


def check_balance(balance: str) -> None:
    """Refuse an unknown balance mode with a one-line error."""
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {', '.join(BALANCE_MODES)}; got {balance!r}")


def class_weights(labels: np.ndarray | list[int]) -> dict[int, float]:
    """`{class: weight}` for `model.fit(class_weight=...)`, sklearn's 'balanced' rule.

    weight_c = n_samples / (n_classes * n_c): each class contributes equally to the loss.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    if y.size == 0:
        raise ValueError("class_weights needs at least one label")
    classes = np.unique(y)
    weights = compute_class_weight("balanced", classes=classes, y=y)
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def split_by_class(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the (minority, majority) class; ties make class 1 the minority."""
    y = np.asarray(labels).astype(np.int64).ravel()
    positives = np.flatnonzero(y == 1)
    negatives = np.flatnonzero(y != 1)
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("undersample needs rows of both classes")
    if positives.size <= negatives.size:
        return positives, negatives
    return negatives, positives


def undersampled_epoch_size(labels: np.ndarray) -> int:
    """Rows per undersampled epoch: twice the minority class."""
    minority, _ = split_by_class(labels)
    return 2 * int(minority.size)


def undersample_indices(labels: np.ndarray, seed: int) -> tf.data.Dataset:
    """A dataset of row indices (int64) for one balanced, shuffled epoch.

    Each new iteration (a new epoch in `fit`, or a pass under `.repeat()`) draws a fresh
    majority subset and a fresh order; the sequence of draws is fixed by `seed`.
    """
    minority, majority = split_by_class(labels)
    size = int(minority.size)
    drawn = (
        tf.data.Dataset.from_tensor_slices(majority.astype(np.int64))
        .shuffle(majority.size, seed=seed, reshuffle_each_iteration=True)
        .take(size)
    )
    kept = tf.data.Dataset.from_tensor_slices(minority.astype(np.int64))
    return drawn.concatenate(kept).shuffle(2 * size, seed=seed + 1, reshuffle_each_iteration=True)


def steps_per_epoch(rows_or_labels, batch_size: int, balance: str = "none") -> int:
    """Batches in one training epoch of `make_dataset` (the last partial batch counts)."""
    check_balance(balance)
    labels = _labels_of(rows_or_labels)
    size = undersampled_epoch_size(labels) if balance == "undersample" else len(labels)
    return math.ceil(size / batch_size)


def _labels_of(rows_or_labels) -> np.ndarray:
    if hasattr(rows_or_labels, "columns"):
        return rows_or_labels["label"].to_numpy()
    return np.asarray(rows_or_labels)
