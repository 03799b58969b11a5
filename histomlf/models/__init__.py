"""CNN classifiers by name: `create_model("vgg16", weights="imagenet")`.

Every model maps raw 0..255 RGB patches [B, 50, 50, 3] to P(IDC) [B, 1]; its feature
extractor is the nested model named `backbone`. What histomlf knows about each backbone is one
table, `histomlf.models.backbones`, importable without Keras; the names below load Keras on
first use (PEP 562), so `from histomlf.models.backbones import ...` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "create_model": "histomlf.models.factory",
    "is_model": "histomlf.models.factory",
    "list_models": "histomlf.models.factory",
    "register_model": "histomlf.models.registry",
    "BACKBONE_NAME": "histomlf.models.heads",
    "PixelPreprocess": "histomlf.models.heads",
    "build_classifier": "histomlf.models.heads",
    "WeightsUnavailableError": "histomlf.models.weights",
    "imagenet_weights_path": "histomlf.models.weights",
    "load_backbone_weights": "histomlf.models.weights",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'histomlf.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
