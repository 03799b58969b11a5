"""Training: `histomlf.training.fit.fit(model, config, train_ds, val_ds, work_dir=...)`.

Returns a `FitResult`; nothing in this package imports MLflow. `fit` itself is imported from
the `fit` module (the package attribute `fit` is that module); the other names load lazily
so importing `histomlf.training.workflow` stays free of TensorFlow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FitResult", "HISTORY_KEYS", "make_deterministic"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from histomlf.training.fit import HISTORY_KEYS, FitResult, make_deterministic

        return {
            "FitResult": FitResult,
            "HISTORY_KEYS": HISTORY_KEYS,
            "make_deterministic": make_deterministic,
        }[name]
    raise AttributeError(f"module 'histomlf.training' has no attribute {name!r}")
