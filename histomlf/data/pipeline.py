"""The tf.data input pipeline: manifest rows in, batches of (uint8 patches, float32 labels) out.

Patches stream from disk, either as PNGs decoded in parallel (`decode_and_pad`, the same
white bottom/right padding as `histomlf.data.patches.pad_to_patch`) or by row index from a
`PackedPatches` cache. The pipeline stops at uint8: float conversion, resizing and each
backbone's preprocessing live inside the model, so serving feeds it the same bytes.

Training shuffles (seeded, a new order each epoch), balances and augments; evaluation yields
every row exactly once in row order, last partial batch included, so predictions align with rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from histomlf.data.augment import augment_batch, check_augment, mixup_batch
from histomlf.data.balance import (
    check_balance,
    chunks_of,
    class_weights,
    shuffled_indices,
    steps_per_epoch,
    undersample_indices,
)
from histomlf.data.packed import PATCH_SHAPE, PackedPatches
from histomlf.data.patches import PAD_VALUE, PATCH_SIZE

__all__ = [
    "class_weights",
    "decode_and_pad",
    "decoded_batches",
    "make_dataset",
    "open_packed",
    "steps_per_epoch",
]

AUTOTUNE = tf.data.AUTOTUNE
# Row indices travel in chunks of about this many rows (whole batches); a packed cache reads
# one chunk (~7.5 MB) per Python call and cuts batches from it.
CHUNK_ROWS = 1024
AUGMENT_SEED_OFFSET = 1_000_003
MIXUP_SEED_OFFSET = 2_000_003
PACK_BATCH = 512


def decode_and_pad(data: tf.Tensor) -> tf.Tensor:
    """Decode PNG bytes to a 50x50x3 uint8 patch, padded white on the bottom/right.

    Mirrors `decode_patch`: larger images are cropped to the top-left window; grayscale is
    replicated to RGB; an alpha channel (RGBA, gray+alpha, a palette with transparency) is
    composited onto white. 8-bit RGB PNGs, i.e. the whole Kaggle set, come out
    byte-identical to `decode_patch`, composited ones within 1 level (rounding).
    """
    native = tf.io.decode_png(data, channels=0)
    image = tf.cond(
        tf.shape(native)[2] == 3,
        lambda: tf.ensure_shape(native, (None, None, 3)),
        lambda: _rgb_on_white(data),
    )[:PATCH_SIZE, :PATCH_SIZE]
    shape = tf.shape(image)
    padding = [[0, PATCH_SIZE - shape[0]], [0, PATCH_SIZE - shape[1]], [0, 0]]
    image = tf.pad(image, padding, constant_values=PAD_VALUE)
    return tf.ensure_shape(image, PATCH_SHAPE)


def _rgb_on_white(data: tf.Tensor) -> tf.Tensor:
    """Any non-RGB PNG as RGB: decoded as RGBA (gray replicated, opaque when it has no alpha),
    then composited onto white as `PIL.Image.alpha_composite` does."""
    rgba = tf.cast(tf.io.decode_png(data, channels=4), tf.float32)
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + float(PAD_VALUE) * (1.0 - alpha)
    return tf.cast(tf.round(rgb), tf.uint8)


def decoded_batches(rows: pd.DataFrame) -> Iterator[np.ndarray]:
    """Every row's patch, decoded in parallel by `decode_and_pad`, as uint8 batches in row order."""
    dataset = make_dataset(rows, batch_size=PACK_BATCH, training=False)
    return (images for images, _ in dataset.as_numpy_iterator())


def open_packed(rows: pd.DataFrame, cache_dir: str | Path) -> PackedPatches:
    """The packed cache of `rows` under `cache_dir`, built with this pipeline's decoder."""
    return PackedPatches.build_or_open(rows, cache_dir, decoded_batches)


def make_dataset(
    rows: pd.DataFrame,
    *,
    batch_size: int,
    training: bool,
    augment: str = "none",
    balance: str = "none",
    seed: int = 0,
    packed: PackedPatches | None = None,
    repeat: bool = False,
    mixup: float = 0.0,
) -> tf.data.Dataset:
    """Batches of `(images uint8 [B, 50, 50, 3], labels float32 [B])` for `rows`.

    training=True: rows shuffled with `seed` (new order each epoch, same sequence of orders
    for the same seed), `balance="undersample"` draws a balanced subset each epoch, `augment`
    is applied per batch. training=False: row order, each row once, no augmentation or balance.
    `packed` (a cache holding every row's path) replaces PNG decoding by file reads.
    `repeat=True` repeats epochs forever (use `steps_per_epoch`). `mixup` > 0 (training only)
    blends the augmented batches with `mixup_batch` at that alpha: float32 images, soft labels.
    """
    check_augment(augment)
    check_balance(balance)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not mixup >= 0:
        raise ValueError(f"mixup alpha must be >= 0, got {mixup}")
    labels = rows["label"].to_numpy().astype(np.int64)
    chunk_rows = batch_size * max(1, CHUNK_ROWS // batch_size)
    chunks = _epoch_indices(
        labels, training=training, balance=balance, seed=seed, chunk_rows=chunk_rows
    )
    labels_t = tf.constant(labels.astype(np.float32))
    if packed is not None:
        dataset = _packed_batches(chunks, packed.subset(rows), labels, labels_t, batch_size)
    else:
        dataset = _png_batches(chunks, rows["path"].astype(str).to_numpy(), labels_t, batch_size)
    if training and augment != "none":
        # A stream of its own, so augmentation draws are independent of the epoch order.
        seeds = tf.data.Dataset.random(
            seed=seed + AUGMENT_SEED_OFFSET, rerandomize_each_iteration=True
        )
        seeds = seeds.batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda batch, batch_seed: (augment_batch(batch[0], batch_seed, augment), batch[1]),
            num_parallel_calls=AUTOTUNE,
        )
    if training and mixup > 0:
        mix_seeds = tf.data.Dataset.random(
            seed=seed + MIXUP_SEED_OFFSET, rerandomize_each_iteration=True
        ).batch(2)
        dataset = tf.data.Dataset.zip(dataset, mix_seeds).map(
            lambda batch, batch_seed: mixup_batch(batch[0], batch[1], batch_seed, mixup),
            num_parallel_calls=AUTOTUNE,
        )
    if not training:
        # A known length lets Keras validate without the "ran out of data" warning.
        batches = -(-len(rows) // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(AUTOTUNE)


def _epoch_indices(
    labels: np.ndarray, *, training: bool, balance: str, seed: int, chunk_rows: int
) -> tf.data.Dataset:
    """Chunks of one epoch's row indices: row order for evaluation, shuffled/balanced for
    training."""
    if training and balance == "undersample":
        return undersample_indices(labels, seed, chunk_rows)
    if training:
        return shuffled_indices(len(labels), seed, chunk_rows)
    return chunks_of(tf.range(len(labels), dtype=tf.int64), chunk_rows)


def _png_batches(
    chunks: tf.data.Dataset, paths: np.ndarray, labels: tf.Tensor, batch_size: int
) -> tf.data.Dataset:
    """Paths and labels gathered a chunk at a time (one op per chunk, not per patch), then
    each file read and decoded in parallel."""
    paths_t = tf.constant(paths)
    files = chunks.map(lambda index: (tf.gather(paths_t, index), tf.gather(labels, index)))
    return (
        files.unbatch()
        .map(
            lambda path, label: (decode_and_pad(tf.io.read_file(path)), label),
            num_parallel_calls=AUTOTUNE,
        )
        .batch(batch_size)
    )


def _packed_batches(
    chunks: tf.data.Dataset,
    view: PackedPatches,
    labels: np.ndarray,
    labels_t: tf.Tensor,
    batch_size: int,
) -> tf.data.Dataset:
    """Read a chunk of rows per Python call, then cut it into batches (`rebatch`).

    The per-call cost of `tf.numpy_function` (GIL, conversions) would otherwise dominate small
    batches; chunks are whole batches, so cutting keeps every batch's rows and the row order.
    """
    if not np.array_equal(view.labels.astype(np.int64), labels):
        raise ValueError("the packed cache's labels disagree with the rows' labels")

    def load(chunk: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.numpy_function(view.read, [chunk], tf.uint8, stateful=False)
        images = tf.ensure_shape(images, (None, *PATCH_SHAPE))
        return images, tf.gather(labels_t, chunk)

    return chunks.map(load, num_parallel_calls=AUTOTUNE).rebatch(batch_size)
