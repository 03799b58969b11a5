"""Augmentation: exact dihedral symmetries, mild stain jitter, applied only in training."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from helpers_data import epoch, sample_rows

from histomlf.data.augment import augment_batch, random_dihedral, stain_jitter
from histomlf.data.packed import PackedPatches
from histomlf.data.pipeline import make_dataset, open_packed


def symmetries(image: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of a square image, computed with numpy."""
    out = []
    for k in range(4):
        rotated = np.rot90(image, k)
        out += [rotated, rotated[:, ::-1]]
    return out


def canonical(image: np.ndarray) -> bytes:
    return min(s.tobytes() for s in symmetries(image))


@pytest.fixture(scope="module")
def rows(idc_sample: Path) -> pd.DataFrame:
    return sample_rows(idc_sample).iloc[::4].reset_index(drop=True)


@pytest.fixture(scope="module")
def packed(rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> PackedPatches:
    return open_packed(rows, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def plain(rows: pd.DataFrame, packed: PackedPatches) -> tuple[np.ndarray, np.ndarray]:
    return epoch(make_dataset(rows, batch_size=64, training=False, packed=packed))


def test_random_dihedral_draws_each_of_the_8_symmetries() -> None:
    image = np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    batch = tf.constant(np.repeat(image[None], 256, axis=0))
    out = random_dihedral(batch, tf.constant([4, 2], tf.int64)).numpy()
    assert {o.tobytes() for o in out} == {s.tobytes() for s in symmetries(image)}


@pytest.mark.parametrize("augment", ["light", "strong"])
def test_training_augmentation_keeps_shape_dtype_and_labels(
    rows: pd.DataFrame, packed: PackedPatches, plain, augment: str
) -> None:
    dataset = make_dataset(
        rows, batch_size=64, training=True, augment=augment, seed=1, packed=packed
    )
    for images, labels in dataset.take(2).as_numpy_iterator():
        assert images.dtype == np.uint8 and images.shape[1:] == (50, 50, 3)
        assert labels.dtype == np.float32 and len(labels) == len(images)
    images, labels = epoch(dataset)
    assert sorted(labels.tolist()) == sorted(plain[1].tolist())
    assert images.shape == plain[0].shape


def test_light_outputs_are_symmetries_of_the_inputs(rows: pd.DataFrame, packed, plain) -> None:
    dataset = make_dataset(rows, batch_size=64, training=True, augment="light", packed=packed)
    images, labels = epoch(dataset)
    got = Counter((canonical(i), int(y)) for i, y in zip(images, labels, strict=True))
    want = Counter((canonical(i), int(y)) for i, y in zip(*plain, strict=True))
    assert got == want
    assert sum(i.tobytes() != canonical(i) for i in images) > len(images) // 4


def test_stain_jitter_is_mild_and_exact_at_zero(plain) -> None:
    images = tf.constant(plain[0][:128])
    seed = tf.constant([3, 9], tf.int64)
    identity = stain_jitter(images, seed, scale=0.0, shift=0.0).numpy()
    np.testing.assert_array_equal(identity, plain[0][:128])
    jittered = stain_jitter(images, seed).numpy()
    assert jittered.dtype == np.uint8
    difference = np.abs(jittered.astype(int) - plain[0][:128].astype(int))
    assert 0.5 < difference.mean() < 20
    assert not np.array_equal(jittered, plain[0][:128])


def test_augment_batch_is_reproducible_from_its_seed(plain) -> None:
    images = tf.constant(plain[0][:64])
    first = augment_batch(images, tf.constant([1, 2], tf.int64), "strong").numpy()
    again = augment_batch(images, tf.constant([1, 2], tf.int64), "strong").numpy()
    other = augment_batch(images, tf.constant([1, 3], tf.int64), "strong").numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_augmented_epochs_are_reproducible_and_change_between_epochs(
    rows: pd.DataFrame, packed: PackedPatches
) -> None:
    def two_epochs() -> list[np.ndarray]:
        dataset = make_dataset(
            rows, batch_size=64, training=True, augment="strong", seed=4, packed=packed
        )
        return [epoch(dataset)[0] for _ in range(2)]

    first, second = two_epochs(), two_epochs()
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], first[1])


def test_eval_never_augments(rows: pd.DataFrame, packed: PackedPatches, plain) -> None:
    images, _ = epoch(
        make_dataset(rows, batch_size=64, training=False, augment="strong", packed=packed)
    )
    np.testing.assert_array_equal(images, plain[0])
