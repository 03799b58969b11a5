"""`keras.applications` backbones (`include_top=False`) with their own input scaling.

At the native 50x50 patch size VGG16 ends at 1x1x512 and ResNet50 at 2x2x2048; pass
`image_size` (>= 32) to upsample inside the model instead.
"""

from __future__ import annotations

from typing import Any

import keras

from histomlf.models.heads import BACKBONE_NAME, build_classifier
from histomlf.models.registry import register_model


def _application(constructor: Any) -> Any:
    def factory(input_shape: tuple[int, int, int]) -> keras.Model:
        return constructor(
            include_top=False, weights=None, input_shape=input_shape, name=BACKBONE_NAME
        )

    return factory


@register_model
def vgg16(**kwargs: Any) -> keras.Model:
    """VGG16 (the study's baseline); "caffe" preprocessing (BGR, ImageNet mean subtracted)."""
    return build_classifier("vgg16", _application(keras.applications.VGG16), "caffe", **kwargs)


@register_model
def resnet50(**kwargs: Any) -> keras.Model:
    """ResNet50 (v1, the study's); "caffe" preprocessing."""
    return build_classifier(
        "resnet50", _application(keras.applications.ResNet50), "caffe", **kwargs
    )


@register_model
def efficientnetb0(**kwargs: Any) -> keras.Model:
    """EfficientNetB0; takes raw 0..255 pixels and rescales inside itself."""
    return build_classifier(
        "efficientnetb0", _application(keras.applications.EfficientNetB0), "raw", **kwargs
    )


@register_model
def mobilenetv2(**kwargs: Any) -> keras.Model:
    """MobileNetV2 (alpha 1.0); "tf" preprocessing to [-1, 1]."""
    return build_classifier(
        "mobilenetv2", _application(keras.applications.MobileNetV2), "tf", **kwargs
    )
