"""make_dataset on the real IDC sample: padding, row coverage, order, shuffling, balance."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from helpers_data import epoch, sample_rows

from histomlf.data.patches import PATCH_SIZE, decode_patch
from histomlf.data.pipeline import class_weights, make_dataset, steps_per_epoch


@pytest.fixture(scope="module")
def rows(idc_sample: Path) -> pd.DataFrame:
    return sample_rows(idc_sample)


def content_keys(images: np.ndarray, labels: np.ndarray) -> list[tuple[str, int]]:
    return [
        (hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest(), int(label))
        for image, label in zip(images, labels, strict=True)
    ]


def test_eval_pixels_equal_decode_patch_for_every_row(rows: pd.DataFrame) -> None:
    assert (rows["height"] < PATCH_SIZE).sum() >= 5, "the sample should hold border patches"
    images, labels = epoch(make_dataset(rows, batch_size=64, training=False))
    expected = np.stack([decode_patch(Path(p).read_bytes()) for p in rows["path"]])
    assert images.dtype == np.uint8 and images.shape == (len(rows), 50, 50, 3)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, rows["label"].to_numpy().astype(np.float32))


def test_eval_keeps_row_order_and_last_partial_batch(rows: pd.DataFrame) -> None:
    part = rows.sample(frac=1.0, random_state=3).iloc[:150]
    sizes, labels = [], []
    for x, y in make_dataset(part, batch_size=64, training=False).as_numpy_iterator():
        sizes.append(len(x))
        labels.append(y)
        assert y.dtype == np.float32
    assert sizes == [64, 64, 22]
    np.testing.assert_array_equal(np.concatenate(labels), part["label"].to_numpy())


def test_training_epoch_holds_every_row_once_in_a_new_order(rows: pd.DataFrame) -> None:
    reference = content_keys(*epoch(make_dataset(rows, batch_size=64, training=False)))
    dataset = make_dataset(rows, batch_size=64, training=True, seed=7)
    first = content_keys(*epoch(dataset))
    second = content_keys(*epoch(dataset))
    assert Counter(first) == Counter(reference) == Counter(second)
    assert first != reference and first != second


def test_shuffle_is_reproducible_from_seed(rows: pd.DataFrame) -> None:
    def label_orders(seed: int) -> list[list[float]]:
        dataset = make_dataset(rows, batch_size=128, training=True, seed=seed)
        return [epoch(dataset)[1].tolist() for _ in range(2)]

    assert label_orders(11) == label_orders(11)
    assert label_orders(11) != label_orders(12)


def test_undersample_balances_and_redraws_each_epoch(rows: pd.DataFrame) -> None:
    positives = int(rows["label"].sum())
    dataset = make_dataset(rows, batch_size=64, training=True, balance="undersample", seed=5)
    epochs = [content_keys(*epoch(dataset)) for _ in range(2)]
    reference = Counter(content_keys(*epoch(make_dataset(rows, batch_size=64, training=False))))
    for keys in epochs:
        counts = Counter(label for _, label in keys)
        assert counts == {0: positives, 1: positives}
        assert not Counter(keys) - reference, "undersampling must only draw existing rows"
        assert Counter(k for k in keys if k[1] == 1) == Counter(k for k in reference if k[1] == 1)
    negatives = [{k for k in keys if k[1] == 0} for keys in epochs]
    assert negatives[0] != negatives[1]
    assert steps_per_epoch(rows, 64, "undersample") == math.ceil(2 * positives / 64)


def test_balance_and_augment_apply_only_in_training(rows: pd.DataFrame) -> None:
    part = rows.iloc[:100]
    plain = epoch(make_dataset(part, batch_size=32, training=False))
    other = epoch(
        make_dataset(part, batch_size=32, training=False, augment="strong", balance="undersample")
    )
    np.testing.assert_array_equal(plain[0], other[0])
    np.testing.assert_array_equal(plain[1], other[1])


def test_repeat_yields_steps_per_epoch_batches_per_pass(rows: pd.DataFrame) -> None:
    part = rows.iloc[:200]
    steps = steps_per_epoch(part, 64, "none")
    assert steps == 4
    dataset = make_dataset(part, batch_size=64, training=True, seed=1, repeat=True)
    batches = [y for _, y in dataset.take(2 * steps).as_numpy_iterator()]
    assert [len(y) for y in batches] == [64, 64, 64, 8] * 2
    first, second = np.concatenate(batches[:steps]), np.concatenate(batches[steps:])
    assert sorted(first) == sorted(second) == sorted(part["label"])
    assert first.tolist() != second.tolist(), "each repeated pass must be reshuffled"


def test_class_weights_follow_the_balanced_rule(rows: pd.DataFrame) -> None:
    assert class_weights([0, 0, 0, 1]) == pytest.approx({0: 4 / 6, 1: 2.0})
    weights = class_weights(rows["label"].to_numpy())
    n, pos = len(rows), int(rows["label"].sum())
    assert weights == pytest.approx({0: n / (2 * (n - pos)), 1: n / (2 * pos)})
    assert all(type(k) is int and type(v) is float for k, v in weights.items())


def test_steps_per_epoch_counts_the_last_partial_batch(rows: pd.DataFrame) -> None:
    assert steps_per_epoch(rows, 64, "none") == math.ceil(len(rows) / 64)
    assert steps_per_epoch(rows, 64, "class_weight") == math.ceil(len(rows) / 64)


@pytest.mark.parametrize(
    "kwargs", [{"augment": "heavy"}, {"balance": "oversample"}, {"batch_size": 0}]
)
def test_unknown_options_are_refused(rows: pd.DataFrame, kwargs: dict) -> None:
    arguments = {"batch_size": 8, "training": True, **kwargs}
    with pytest.raises(ValueError):
        make_dataset(rows, **arguments)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P-transparent", "RGB-border"])
def test_png_decode_matches_the_serving_decoder_for_every_mode(tmp_path: Path,
                                                                mode: str) -> None:
    """Alpha composited on white, gray replicated, border crops padded: as `decode_patch`."""
    from PIL import Image

    from histomlf.data.pipeline import decode_and_pad

    generator = np.random.default_rng(4)
    rgba = generator.integers(0, 256, (37, 50, 4), dtype=np.uint8)
    rgba[:5, :, 3] = 0  # fully transparent rows must come out white
    rgba[5:10, :, 3] = 255
    if mode == "RGBA":
        image = Image.fromarray(rgba, "RGBA")
    elif mode == "LA":
        image = Image.fromarray(rgba[..., [0, 3]], "LA")
    elif mode == "L":
        image = Image.fromarray(rgba[..., 0], "L")
    elif mode == "P-transparent":
        image = Image.fromarray(rgba[..., :3]).convert("P")
        image.info["transparency"] = 0
    else:
        image = Image.fromarray(rgba[..., :3], "RGB")
    path = tmp_path / "patch.png"
    image.save(path, transparency=0) if mode == "P-transparent" else image.save(path)
    expected = decode_patch(path.read_bytes())
    decoded = decode_and_pad(tf.constant(path.read_bytes())).numpy()
    assert decoded.shape == expected.shape == (50, 50, 3)
    difference = np.abs(decoded.astype(int) - expected.astype(int))
    assert difference.max() <= 1, f"{mode}: {difference.max()} levels off"
    if mode in ("RGBA", "LA"):
        assert (decoded[:5] == 255).all() and (decoded[37:] == 255).all()
    if mode in ("L", "RGB-border"):
        np.testing.assert_array_equal(decoded, expected)
