"""Batch augmentation of uint8 patches: dihedral flips/rotations and H&E stain jitter.

Histology has no canonical orientation, so `light` draws one of the 8 symmetries of the square
per patch (all flips and 90-degree rotations). `strong` adds a mild stain jitter in
haematoxylin-eosin-DAB (HED) optical-density space (Tellez et al. 2018): it mimics the colour
variation between labs and scanners without inventing colours H&E cannot produce. Everything is a
vectorised op over the whole batch with stateless randomness, and the output stays uint8 because
the model does its own float conversion.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

AUGMENT_MODES = ("none", "light", "strong")

# Stain vectors (rows: H, E, DAB) in RGB optical density, Ruifrok & Johnston 2001 (as skimage).
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)

STAIN_SCALE = 0.05
STAIN_SHIFT = 0.05


def check_augment(augment: str) -> None:
    """Refuse an unknown augmentation mode with a one-line error."""
    if augment not in AUGMENT_MODES:
        raise ValueError(f"augment must be one of {', '.join(AUGMENT_MODES)}; got {augment!r}")


def augment_batch(images: tf.Tensor, seed: tf.Tensor, augment: str) -> tf.Tensor:
    """Augment a uint8 batch [B, H, W, 3] with square patches; `seed` is an int64 [2] tensor.

    Same seed, same result: the pipeline feeds a per-batch seed drawn from the run's seed.
    """
    check_augment(augment)
    if augment == "none":
        return images
    flip_seed, stain_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    images = random_dihedral(images, flip_seed)
    if augment == "strong":
        images = stain_jitter(images, stain_seed)
    return images


def _dihedral_tables(size: int) -> np.ndarray:
    """[8, size*size] source pixel of each output pixel, for every flip/rotation of a square.

    Transpose x flip-left-right x flip-up-down enumerates the dihedral group exactly once.
    """
    grid = np.arange(size * size, dtype=np.int32).reshape(size, size)
    tables = []
    for code in range(8):
        table = grid.T if code & 1 else grid
        table = table[:, ::-1] if code & 2 else table
        table = table[::-1] if code & 4 else table
        tables.append(table.ravel())
    return np.stack(tables)


def random_dihedral(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Apply one of the 8 flip/rotation symmetries, drawn independently per patch.

    One batched gather of pixels: per-pixel selects and transposes of uint8 tensors are
    several times slower on CPU.
    """
    shape = tf.shape(images)
    batch, size = shape[0], images.shape[1]
    tables = tf.constant(_dihedral_tables(size))
    codes = tf.random.stateless_uniform([batch], seed, maxval=8, dtype=tf.int32)
    pixels = tf.reshape(images, [batch, size * size, shape[3]])
    moved = tf.gather(pixels, tf.gather(tables, codes), batch_dims=1)
    return tf.reshape(moved, shape)


def stain_jitter(
    images: tf.Tensor,
    seed: tf.Tensor,
    scale: float = STAIN_SCALE,
    shift: float = STAIN_SHIFT,
) -> tf.Tensor:
    """Perturb each patch's H, E and DAB concentrations: c' = c * U(1±scale) + U(±shift).

    Pixels map to optical density with (v + 1) / 256 so that zero jitter is an exact round trip
    and no logarithm sees zero. The RGB->HED->jitter->RGB chain is folded into one 3x3 matrix
    and offset per patch, so the batch costs one batched matmul.
    """
    shape = tf.shape(images)
    batch = shape[0]
    scale_seed, shift_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    alpha = tf.random.stateless_uniform([batch, 3], scale_seed, 1 - scale, 1 + scale)
    beta = tf.random.stateless_uniform([batch, 1, 3], shift_seed, -shift, shift)
    hed_from_rgb = tf.constant(_HED_FROM_RGB, tf.float32)
    rgb_from_hed = tf.constant(_RGB_FROM_HED, tf.float32)
    mixing = tf.einsum("ij,bj,jk->bik", hed_from_rgb, alpha, rgb_from_hed)
    offset = tf.matmul(beta, rgb_from_hed)
    density = -tf.math.log((tf.cast(tf.reshape(images, [batch, -1, 3]), tf.float32) + 1.0) / 256.0)
    density = tf.matmul(density, mixing) + offset
    pixels = tf.exp(-density) * 256.0 - 1.0
    pixels = tf.clip_by_value(tf.round(pixels), 0.0, 255.0)
    return tf.reshape(tf.cast(pixels, tf.uint8), shape)
