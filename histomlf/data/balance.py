"""Class balance for training: class weights for `fit`, or per-epoch undersampling of rows.

IDC is ~28 % positive. `class_weight` keeps every row and reweights the loss (`class_weights`);
`undersample` is what the original study did: each epoch keeps all minority rows plus an equally
large random subset of the majority class, redrawn every epoch so no majority row is lost for
good (`undersample_indices`); `none` leaves the data as is.

The index datasets here also fix which rows an epoch visits and in which order; they yield
chunks of row indices, which the pipeline reads or decodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from histomlf.choices import BALANCE_CHOICES as BALANCE_MODES


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


def chunks_of(indices: tf.Tensor, chunk_rows: int) -> tf.data.Dataset:
    """`indices` (1-D int64) cut into consecutive chunks of `chunk_rows` (the last may be short).

    Chunks rather than single indices: tf.data's per-element cost (~1 us) would otherwise be
    paid per row.
    """
    count = tf.shape(indices, out_type=tf.int64)[0]
    starts = tf.data.Dataset.range(0, count, chunk_rows)
    return starts.map(lambda start: indices[start : start + chunk_rows])


def redrawn_each_epoch(
    draw: Callable[[tf.Tensor], tf.Tensor], seed: int, chunk_rows: int
) -> tf.data.Dataset:
    """Chunks of the int64 indices `draw(pair)` returns, drawn anew on every iteration.

    `pair` is a stateless seed ([2] int64): a new one per iteration (a new `fit` epoch or a
    pass under `.repeat()`), the sequence fixed by `seed`. One permutation tensor costs 8 bytes
    a row, where a `shuffle` buffer holds a few hundred bytes per element.
    """
    base = tf.constant(seed, tf.int64)
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return draws.flat_map(lambda value: chunks_of(draw(tf.stack([value, base])), chunk_rows))


def shuffled_indices(count: int, seed: int, chunk_rows: int) -> tf.data.Dataset:
    """Chunks of 0..count-1 in a new seeded order on every iteration."""

    def draw(pair: tf.Tensor) -> tf.Tensor:
        return tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), pair)

    return redrawn_each_epoch(draw, seed, chunk_rows)


def undersample_indices(labels: np.ndarray, seed: int, chunk_rows: int) -> tf.data.Dataset:
    """Chunks of the row indices of one balanced, shuffled epoch: all minority rows plus as
    many majority rows drawn at random, redrawn on every iteration; draws fixed by `seed`."""
    minority, majority = split_by_class(labels)
    minority_t = tf.constant(minority.astype(np.int64))
    majority_t = tf.constant(majority.astype(np.int64))

    def draw(pair: tf.Tensor) -> tf.Tensor:
        pick_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(pair, 2))
        picked = tf.random.experimental.stateless_shuffle(majority_t, seed=pick_seed)
        epoch = tf.concat([picked[: minority.size], minority_t], axis=0)
        return tf.random.experimental.stateless_shuffle(epoch, seed=order_seed)

    return redrawn_each_epoch(draw, seed, chunk_rows)


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
