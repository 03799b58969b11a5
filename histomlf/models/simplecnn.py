"""`simplecnn`: a small, fast CPU network (~0.1 M parameters) for smoke runs and baselines."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from histomlf.models.backbones import BACKBONES
from histomlf.models.heads import BACKBONE_NAME, build_classifier
from histomlf.models.registry import register_model

SIMPLECNN_FILTERS = (32, 64, 128)
# Keras' default 0.99 needs hundreds of steps before the moving statistics match the weights;
# CPU-sized runs take a few dozen steps an epoch and their validation scores swung wildly.
BN_MOMENTUM = 0.9


def simplecnn_backbone(
    input_shape: tuple[int, int, int], filters: tuple[int, ...] = SIMPLECNN_FILTERS
) -> keras.Model:
    """Conv3x3 -> BatchNorm -> ReLU -> MaxPool blocks, as a nested feature-extractor model."""
    inputs = keras.Input(input_shape, name="backbone_input")
    x = inputs
    for block, width in enumerate(filters, start=1):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{block}_bn")(x)
        x = layers.Activation("relu", name=f"block{block}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name=BACKBONE_NAME)


@register_model
def simplecnn(**kwargs: Any) -> keras.Model:
    """Three conv blocks (32/64/128 filters) on [0, 1]-scaled pixels; no ImageNet weights."""
    return build_classifier(
        "simplecnn", simplecnn_backbone, BACKBONES["simplecnn"].preprocessing, **kwargs
    )
