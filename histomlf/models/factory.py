"""`create_model(name, ...)` with every built-in builder registered (imports Keras)."""

from __future__ import annotations

from histomlf.models import applications, simplecnn, vgg50px  # noqa: F401  (registers the builders)
from histomlf.models.registry import create_model, is_model, list_models

__all__ = ["create_model", "is_model", "list_models"]
