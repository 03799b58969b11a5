"""Compiled inference: a Keras classifier called through one traced graph per padded batch size.

Calling a Keras model eagerly (`model(x, training=False)`) costs ~25 ms of Python dispatch per
call on 2 CPU cores for a one-patch simplecnn; the same call traced by `tf.function` costs
~2 ms. `CompiledPredictor` traces the forward pass once per *bucket* (1, 8, 64, 256 patches by
default): a request is padded up to the next bucket and the padding cut off the result, and
requests larger than the largest bucket are scored in chunks of it. So the set of traced shapes
is fixed and small, no request after warm-up triggers a retrace, and `traces` counts them so
tests can prove it. Padding rows are zeros; every layer scores a patch independently of the
rest of its batch in inference mode, so the cut-back result equals the eager call (to float
rounding, < 1e-6).

Used wherever a model scores patches: the served pyfunc (`histomlf.tracking.pyfunc`), the
end-of-run evaluation and tuning trials' validation (`histomlf.training.workflow`). It needs
TensorFlow, so `histomlf.models/__init__` does not import it: the GPU check builds the models
on Keras-on-JAX without TensorFlow.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

DEFAULT_BUCKETS = (1, 8, 64, 256)


class CompiledPredictor:
    """P(IDC) for raw-pixel batches `[N, H, W, 3]` through traced graphs of fixed batch sizes.

    `buckets` are the batch sizes traced (each at most once, lazily on first use or by
    `warm`); the largest is also the chunk size for bigger inputs. Thread-safe: concurrent
    callers (the scoring server runs `predict` in a thread pool) share the traced graphs, and
    a bucket is traced by one of them only.
    """

    def __init__(self, model: Any, buckets: Iterable[int] = DEFAULT_BUCKETS) -> None:
        sizes = sorted({int(size) for size in buckets})
        if not sizes or sizes[0] < 1:
            raise ValueError(f"buckets must be positive batch sizes, got {list(buckets)}")
        self.model = model
        self.buckets: tuple[int, ...] = tuple(sizes)
        self.traces = 0
        self._lock = threading.Lock()
        self._functions: dict[int, Any] = {}
        self._forward = tf.function(self._trace_forward, autograph=False)
        shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
        if not shape or any(dim is None for dim in shape):
            raise ValueError(f"the model needs a fixed input shape, got {shape}")
        self.input_shape: tuple[int, ...] = shape

    def _trace_forward(self, images: tf.Tensor) -> tf.Tensor:
        self.traces += 1  # Python runs only while tracing: this counts traces, not calls
        return self.model(images, training=False)

    def bucket_for(self, count: int) -> int:
        """The smallest bucket holding `count` patches (the largest bucket for more)."""
        index = bisect.bisect_left(self.buckets, count)
        return self.buckets[min(index, len(self.buckets) - 1)]

    def function(self, bucket: int) -> Any:
        """The concrete function of one bucket, traced on first use."""
        function = self._functions.get(bucket)
        if function is None:
            with self._lock:
                function = self._functions.get(bucket)
                if function is None:
                    spec = tf.TensorSpec((bucket, *self.input_shape), tf.float32)
                    function = self._forward.get_concrete_function(spec)
                    self._functions[bucket] = function
        return function

    def warm(self, sizes: Sequence[int] = (1,)) -> None:
        """Trace the buckets that hold `sizes` now (at model load), not on a user's request."""
        for size in sizes:
            self.function(self.bucket_for(size))

    def __call__(self, images: Any) -> np.ndarray:
        """Probabilities `[N]` (float32) for `images` (array or tensor, any numeric dtype)."""
        batch = np.asarray(images, dtype=np.float32)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected images [N, {', '.join(map(str, self.input_shape))}], "
                f"got shape {batch.shape}"
            )
        largest = self.buckets[-1]
        outputs = [
            self._score_chunk(batch[start : start + largest])
            for start in range(0, len(batch), largest)
        ]
        return np.concatenate(outputs) if outputs else np.zeros(0, np.float32)

    def _score_chunk(self, chunk: np.ndarray) -> np.ndarray:
        count = len(chunk)
        bucket = self.bucket_for(count)
        if bucket > count:
            padding = np.zeros((bucket - count, *self.input_shape), np.float32)
            chunk = np.concatenate([chunk, padding])
        output = self.function(bucket)(tf.constant(chunk)).numpy()
        if output.shape not in ((bucket, 1), (bucket,)):
            raise RuntimeError(
                f"the Keras model returned shape {output.shape} for {bucket} patches; "
                "expected [N, 1] probabilities"
            )
        return output.reshape(-1)[:count]


def buckets_up_to(batch_size: int) -> tuple[int, ...]:
    """The default buckets below `batch_size`, plus `batch_size` itself as the largest (chunk).

    `buckets_up_to(256)` is `(1, 8, 64, 256)`; `buckets_up_to(32)` is `(1, 8, 32)`, so a caller
    that streams batches of 32 traces full batches once and pads only its last, partial one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return (*(size for size in DEFAULT_BUCKETS if size < batch_size), batch_size)


def as_predictor(model: Any, batch_size: int = DEFAULT_BUCKETS[-1]) -> CompiledPredictor:
    """`model` itself if it is already a `CompiledPredictor`, else one with `buckets_up_to`."""
    if isinstance(model, CompiledPredictor):
        return model
    return CompiledPredictor(model, buckets_up_to(batch_size))
