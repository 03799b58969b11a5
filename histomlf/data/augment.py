"""Batch augmentation of uint8 patches: dihedral flips/rotations, H&E stain jitter, mixup.

Histology has no canonical orientation, so `light` draws one of the 8 symmetries of the square
per patch (all flips and 90-degree rotations). `strong` adds a mild stain jitter in
haematoxylin-eosin-DAB (HED) optical-density space (Tellez et al. 2018): it mimics the colour
variation between labs and scanners without inventing colours H&E cannot produce. `stronger`
jitters four times as much (+-0.2, the range of Tellez et al. 2019's "HED-strong" setting;
strong colour augmentation generalised best across centres there). Everything is a vectorised
op over the whole batch with stateless randomness, and the output stays uint8 because the model
does its own float conversion.

`mixup_batch` (Zhang et al. 2018) is separate: it blends each patch and its label with another
patch of the batch, so its images are float32 and its labels soft.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from histomlf.choices import AUGMENT_CHOICES as AUGMENT_MODES

# Stain vectors (rows: H, E, DAB) in RGB optical density, Ruifrok & Johnston 2001 (as skimage).
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)

STAIN_SCALE = 0.05
STAIN_SHIFT = 0.05
# (scale, shift) of the HED jitter per augmentation mode.
STAIN_STRENGTH = {"strong": (STAIN_SCALE, STAIN_SHIFT), "stronger": (0.2, 0.2)}


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
    if augment in STAIN_STRENGTH:
        scale, shift = STAIN_STRENGTH[augment]
        images = stain_jitter(images, stain_seed, scale, shift)
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


def mixup_weights(batch: tf.Tensor, seed: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Per patch, its own share `lam ~ Beta(alpha, alpha)` [B] and its partner's index [B].

    Partners are a random permutation of the batch (a patch may draw itself). Beta comes from
    two Gamma draws; when both underflow to 0 (tiny alpha) the patch keeps itself (lam = 1).
    """
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    gamma_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    draws = tf.random.stateless_gamma([2, batch], gamma_seed, alpha=alpha, dtype=tf.float32)
    total = draws[0] + draws[1]
    lam = tf.where(total > 0, tf.math.divide_no_nan(draws[0], total), 1.0)
    partner = tf.argsort(tf.random.stateless_uniform([batch], order_seed))
    return lam, partner


def mixup_batch(
    images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, alpha: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup: `x' = lam x + (1 - lam) x[partner]`, the same for labels (see `mixup_weights`).

    Images come back float32 in 0..255 (the model casts and scales pixels itself), labels as
    soft float32 targets; Keras' `class_weight` then weighs a mixed patch by its rounded label,
    i.e. the class that dominates it.
    """
    lam, partner = mixup_weights(tf.shape(images)[0], seed, alpha)
    pixels = tf.cast(images, tf.float32)
    share = tf.reshape(lam, [-1, 1, 1, 1])
    mixed = share * pixels + (1.0 - share) * tf.gather(pixels, partner)
    targets = tf.cast(labels, tf.float32)
    return mixed, lam * targets + (1.0 - lam) * tf.gather(targets, partner)
