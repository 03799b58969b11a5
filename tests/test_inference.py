"""Compiled inference scores exactly like the eager Keras call, for every registered backbone,
and traces each padded batch size once: no request after warm-up retraces."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from histomlf.models import create_model, list_models
from histomlf.models.inference import CompiledPredictor, buckets_up_to

SIZES = (1, 5, 64, 300)
# Every bucket on the small model; one size (a padded one) per large backbone keeps CI short.
LARGE_BACKBONE_SIZE = 5


def uint8_batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 50, 50, 3), dtype=np.uint8)


def eager(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    output = model(batch.astype(np.float32), training=False)
    return keras.ops.convert_to_numpy(output).reshape(-1)


@pytest.fixture(scope="module")
def simplecnn() -> keras.Model:
    return create_model("simplecnn", weights="none")


@pytest.mark.parametrize("size", SIZES)
def test_simplecnn_compiled_equals_eager(simplecnn: keras.Model, size: int) -> None:
    predictor = CompiledPredictor(simplecnn)
    batch = uint8_batch(size, seed=size)
    compiled = predictor(batch)
    assert compiled.shape == (size,)
    np.testing.assert_allclose(compiled, eager(simplecnn, batch), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in list_models() if n != "simplecnn"])
def test_large_backbone_compiled_equals_eager(name: str) -> None:
    model = create_model(name, weights="none")
    batch = uint8_batch(LARGE_BACKBONE_SIZE)
    np.testing.assert_allclose(
        CompiledPredictor(model)(batch), eager(model, batch), rtol=0, atol=1e-6
    )


def test_no_retrace_after_warm_up(simplecnn: keras.Model) -> None:
    predictor = CompiledPredictor(simplecnn)
    predictor.warm((1,))
    assert predictor.traces == 1
    predictor.warm(SIZES)  # 1, 5 -> 8, 64, 300 -> 256: every bucket once
    assert predictor.traces == len(predictor.buckets) == 4
    for round_ in range(2):
        for size in (1, 2, 5, 8, 9, 63, 64, 65, 255, 256, 300, 513):
            scores = predictor(uint8_batch(size, seed=round_))
            assert scores.shape == (size,)
    assert predictor.traces == 4


def test_lazy_buckets_trace_once_each(simplecnn: keras.Model) -> None:
    predictor = CompiledPredictor(simplecnn)
    for size in (5, 3, 7, 8):
        predictor(uint8_batch(size))
    assert predictor.traces == 1  # all four pad to the bucket of 8
    predictor(uint8_batch(300))  # one chunk of 256, one of 44 (-> 64)
    assert predictor.traces == 3


def test_buckets_follow_the_batch_size() -> None:
    assert buckets_up_to(256) == (1, 8, 64, 256)
    assert buckets_up_to(32) == (1, 8, 32)
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(500) == (1, 8, 64, 256, 500)
    with pytest.raises(ValueError, match="positive"):
        buckets_up_to(0)


def test_wrong_shape_is_one_clear_error(simplecnn: keras.Model) -> None:
    with pytest.raises(ValueError, match=r"expected images \[N, 50, 50, 3\], got shape"):
        CompiledPredictor(simplecnn)(np.zeros((2, 40, 40, 3), np.uint8))
