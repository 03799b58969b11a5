"""The one classifier builder every backbone shares, and its serialisable preprocessing.

The model takes raw pixel values (0..255, uint8 or float) so the data pipeline, serving and
evaluation never need to know which backbone expects which scaling: the cast, the resize and
the backbone's `preprocess_input` live inside the saved model. Preprocessing is a small
registered layer rather than a `Lambda` around `keras.applications.*.preprocess_input`,
because Lambdas do not reload reliably from `.keras` files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
from keras import layers, ops

from histomlf.models.weights import imagenet_weights_path, load_backbone_weights

INPUT_SIZE = 50
BACKBONE_NAME = "backbone"
MIN_IMAGE_SIZE = 32
PREPROCESS_MODES = ("caffe", "tf", "torch", "unit", "raw")

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="histomlf")
class PixelPreprocess(layers.Layer):
    """Cast to float32 and scale raw 0..255 RGB pixels as a backbone expects.

    Modes follow `keras.applications.imagenet_utils.preprocess_input`: `caffe` (RGB->BGR,
    subtract the ImageNet mean; VGG16, ResNet50), `tf` (to [-1, 1]; MobileNetV2), `torch`
    (to [0, 1] then ImageNet mean/std), plus `unit` (to [0, 1]) and `raw` (cast only, for
    EfficientNet, which rescales inside itself).
    """

    def __init__(self, mode: str = "raw", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"mode must be one of {', '.join(PREPROCESS_MODES)}; got {mode!r}")
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, "float32")
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_TORCH_MEAN, "float32")
            std = ops.convert_to_tensor(_TORCH_STD, "float32")
            return (x / 255.0 - mean) / std
        if self.mode == "unit":
            return x / 255.0
        return x

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


BackboneFactory = Callable[[tuple[int, int, int]], keras.Model]


def build_classifier(
    name: str,
    backbone_factory: BackboneFactory,
    preprocess: str,
    *,
    weights: str = "none",
    image_size: int = INPUT_SIZE,
    dropout: float = 0.3,
    dense_units: int = 128,
    input_size: int = INPUT_SIZE,
) -> keras.Model:
    """Raw pixels -> resize/cast/preprocess -> `backbone` -> pooled head -> P(IDC), [B, 1].

    `backbone_factory(input_shape)` returns a randomly initialised feature extractor (no
    classifier top); it becomes the nested model named `backbone` so training can freeze and
    unfreeze it by name. `weights` is `"none"` (random), `"imagenet"` (from the Keras cache,
    see `histomlf.models.weights`) or the path of a weights file for the backbone.
    The output layer is float32 so mixed precision never yields float16 probabilities.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be >= {MIN_IMAGE_SIZE} for Keras backbones, got {image_size}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if dense_units < 0:
        raise ValueError(f"dense_units must be >= 0, got {dense_units}")

    backbone = backbone_factory((image_size, image_size, 3))
    if backbone.name != BACKBONE_NAME:
        backbone = keras.Model(backbone.inputs, backbone.outputs, name=BACKBONE_NAME)
    weights_key = str(weights).strip()
    if weights_key.lower() == "imagenet":
        load_backbone_weights(backbone, imagenet_weights_path(name, image_size))
    elif weights_key.lower() not in ("none", ""):
        load_backbone_weights(backbone, Path(weights_key))

    inputs = keras.Input((input_size, input_size, 3), dtype="float32", name="image")
    x = inputs
    if image_size != input_size:
        x = layers.Resizing(image_size, image_size, name="resize")(x)
    x = PixelPreprocess(preprocess, name="preprocess")(x)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    if dense_units:
        x = layers.Dense(dense_units, activation="relu", name="dense")(x)
        x = layers.Dropout(dropout, name="dense_dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(inputs, outputs, name=name)
