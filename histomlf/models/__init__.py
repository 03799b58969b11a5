"""CNN classifiers by name: `create_model("vgg16", weights="imagenet")`.

Every model maps raw 0..255 RGB patches [B, 50, 50, 3] to P(IDC) [B, 1]; its feature
extractor is the nested model named `backbone`.
"""

from histomlf.models import applications, simplecnn  # noqa: F401  (registers the builders)
from histomlf.models.heads import BACKBONE_NAME, PixelPreprocess, build_classifier
from histomlf.models.registry import create_model, is_model, list_models, register_model
from histomlf.models.weights import (
    WeightsUnavailableError,
    imagenet_weights_path,
    load_backbone_weights,
)

__all__ = [
    "BACKBONE_NAME",
    "PixelPreprocess",
    "WeightsUnavailableError",
    "build_classifier",
    "create_model",
    "imagenet_weights_path",
    "is_model",
    "list_models",
    "load_backbone_weights",
    "register_model",
]
