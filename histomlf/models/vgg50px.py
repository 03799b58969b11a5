"""`vgg50px`: a VGG-style network for 50x50 patches (0.29 M backbone parameters; 0.30 M in all).

Twice as deep as `simplecnn` (two 3x3 convolutions per block: a receptive field of 32 px, not
18 px, at the third block), with the same widths so it stays CPU-sized.
Three pooled blocks take 50 -> 25 -> 12 -> 6; Grad-CAM explains the last block before its pool
(12x12 cells).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from histomlf.models.backbones import BACKBONES
from histomlf.models.heads import BACKBONE_NAME, build_classifier
from histomlf.models.registry import register_model
from histomlf.models.simplecnn import BN_MOMENTUM

VGG50PX_FILTERS = (32, 64, 128)
CONVS_PER_BLOCK = 2


def vgg50px_backbone(
    input_shape: tuple[int, int, int], filters: tuple[int, ...] = VGG50PX_FILTERS
) -> keras.Model:
    """Blocks of (Conv3x3 -> BatchNorm -> ReLU) x 2 -> MaxPool, as a nested feature extractor."""
    inputs = keras.Input(input_shape, name="backbone_input")
    x = inputs
    for block, width in enumerate(filters, start=1):
        for conv in range(1, CONVS_PER_BLOCK + 1):
            tag = f"block{block}_{{}}{conv}"  # block2_conv1, block2_bn1, block2_relu1, ...
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=tag.format("conv"))(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=tag.format("bn"))(x)
            x = layers.Activation("relu", name=tag.format("relu"))(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name=BACKBONE_NAME)


@register_model
def vgg50px(**kwargs: Any) -> keras.Model:
    """Three VGG blocks (2 x 32, 2 x 64, 2 x 128 filters) on [0, 1]-scaled pixels."""
    return build_classifier(
        "vgg50px", vgg50px_backbone, BACKBONES["vgg50px"].preprocessing, **kwargs
    )
