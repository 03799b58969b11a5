"""`keras.applications` backbones (`include_top=False`), one builder per backbone-table entry.

Every entry of `histomlf.models.backbones.BACKBONES` that names a Keras application is
registered here under its name, with the preprocessing the table gives it. At the native 50x50
patch size VGG16 ends at 1x1x512 and ResNet50 at 2x2x2048; pass `image_size` (>= 32) to
upsample inside the model instead.
"""

from __future__ import annotations

from typing import Any

import keras

from histomlf.models.backbones import BACKBONES, Backbone
from histomlf.models.heads import BACKBONE_NAME, build_classifier
from histomlf.models.registry import register_model


def _application_factory(constructor: Any) -> Any:
    def factory(input_shape: tuple[int, int, int]) -> keras.Model:
        return constructor(
            include_top=False, weights=None, input_shape=input_shape, name=BACKBONE_NAME
        )

    return factory


def _register(entry: Backbone) -> None:
    factory = _application_factory(getattr(keras.applications, entry.application))

    def builder(**kwargs: Any) -> keras.Model:
        return build_classifier(entry.name, factory, entry.preprocessing, **kwargs)

    builder.__name__ = builder.__qualname__ = entry.name
    builder.__doc__ = f"{entry.summary}."
    register_model(builder)


for _entry in BACKBONES.values():
    if _entry.application:
        _register(_entry)
