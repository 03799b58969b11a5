"""The backbone table: every fact histomlf keeps about a backbone, beside its name.

One entry per backbone (the timm habit of keeping a model's facts with it): the Keras
application that builds it (empty for histomlf's own networks), the pixel preprocessing its
weights expect, its ImageNet weights file, whether it only ever trains from scratch (the tuning
space offers it no fine-tuning knobs), and the layer Grad-CAM explains. The model registry, the
weights loader, the tuning space, config validation and the CLI help all read this table.

Importable without Keras or TensorFlow, so config validation and `--help` stay fast and
`benchmarks/gpu_check.py` runs where TensorFlow is absent. Adding a `keras.applications`
backbone is one entry here; `tests/test_models.py` builds, runs and round-trips every entry.
"""

from __future__ import annotations

from dataclasses import dataclass

KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class ImagenetWeights:
    """Where Keras keeps one backbone's `include_top=False` ImageNet weights."""

    file_name: str
    url: str


@dataclass(frozen=True)
class Backbone:
    """What histomlf knows about one backbone; see the module docstring."""

    name: str
    summary: str
    preprocessing: str
    explain_layer: str
    application: str = ""
    imagenet: ImagenetWeights | None = None
    trains_from_scratch: bool = False


def _keras_weights(folder: str, file_name: str, base: str = KERAS_APPLICATIONS_URL):
    return ImagenetWeights(file_name, f"{base}{folder}{file_name}")


# Explain layers have at least 4x4 cells at the native 50x50 input (the last conv block of
# VGG16 is 1x1 there, ResNet50's 2x2); Grad-CAM upsamples them back to 50x50.
BACKBONES: dict[str, Backbone] = {
    entry.name: entry
    for entry in (
        Backbone(
            "simplecnn",
            "three conv blocks (32/64/128 filters), ~0.1 M parameters, fast on CPU",
            preprocessing="unit",
            explain_layer="block3_relu",
            trains_from_scratch=True,
        ),
        Backbone(
            "vgg50px",
            "VGG-style for 50x50: 3 blocks of two convs (32/64/128), ~0.3 M parameters",
            preprocessing="unit",
            explain_layer="block3_relu2",
            trains_from_scratch=True,
        ),
        Backbone(
            "vgg16",
            "VGG16, the study's baseline (caffe preprocessing)",
            preprocessing="caffe",
            explain_layer="block4_conv3",
            application="VGG16",
            imagenet=_keras_weights(
                "vgg16/", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
            ),
        ),
        Backbone(
            "resnet50",
            "ResNet50 v1, the study's best (caffe preprocessing)",
            preprocessing="caffe",
            explain_layer="conv4_block6_out",
            application="ResNet50",
            imagenet=_keras_weights(
                "resnet/", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
            ),
        ),
        Backbone(
            "efficientnetb0",
            "EfficientNetB0 (rescales raw pixels inside itself)",
            preprocessing="raw",
            explain_layer="block5c_add",
            application="EfficientNetB0",
            imagenet=_keras_weights(
                "", "efficientnetb0_notop.h5", "https://storage.googleapis.com/keras-applications/"
            ),
        ),
        Backbone(
            "mobilenetv2",
            "MobileNetV2, alpha 1.0 (tf preprocessing to [-1, 1])",
            preprocessing="tf",
            explain_layer="block_12_add",
            application="MobileNetV2",
            # MobileNetV2 ships weights for 96..224 px; other sizes (50, 64...) get the 224 file.
            imagenet=_keras_weights(
                "mobilenet_v2/",
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            ),
        ),
    )
}


class UnknownBackboneError(KeyError):
    """A backbone name that is not in the table; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def backbone_names() -> list[str]:
    """Every backbone's name, sorted."""
    return sorted(BACKBONES)


def get_backbone(name: str) -> Backbone:
    """The table entry for `name`; an unknown name is an `UnknownBackboneError`."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown model {name!r}; known models: {', '.join(backbone_names())}"
        ) from None


def scratch_backbones() -> tuple[str, ...]:
    """Backbones that only train from scratch (nothing to fine-tune)."""
    return tuple(name for name in backbone_names() if BACKBONES[name].trains_from_scratch)


def imagenet_backbones() -> tuple[str, ...]:
    """Backbones with ImageNet weights."""
    return tuple(name for name in backbone_names() if BACKBONES[name].imagenet is not None)
