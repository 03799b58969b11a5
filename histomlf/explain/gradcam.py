"""Grad-CAM for histomlf classifiers: where in a 50x50 patch the model finds its evidence.

Every registered classifier is the same chain (see `histomlf.models.heads`): raw pixels ->
[resize] -> preprocess -> the nested model `backbone` -> pool -> dropout -> [dense -> dropout]
-> `probability`, a `Dense(1, sigmoid)`. Grad-CAM weights the channels of one backbone layer (the
backbone table's `explain_layer`, at least 4x4 cells at 50x50) by the mean gradient of the logit
and keeps the positive part. Three facts of Keras 3 shape the code:

- a sub-model from the classifier's inputs to a layer inside the nested backbone cannot be built
  ("not connected to inputs"), so the inner model runs from the backbone's own inputs to
  `[target layer output, backbone output]` and the outer layers are replayed around it;
- the tape watches the float input (and records no variables), so every activation downstream of
  it, the target layer's included, has a gradient whatever the layers' `trainable` flags; watching
  the activation after the inner model has computed the rest of the backbone records nothing,
  and only worked because Keras 3 leaves frozen variables watchable by TensorFlow;
- the gradient is of the logit `h . W + b`, recomputed from the `probability` layer's input and
  weights (the sigmoid saturates), negated to explain class 0.

SmoothGrad averages the gradients over noisy copies of each patch (seeded numpy noise), which
steadies the maps of sharp, noisy models. Everything here is a pure function of a model and
uint8 patches; nothing is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from histomlf.errors import UserError
from histomlf.models.backbones import get_backbone
from histomlf.models.heads import BACKBONE_NAME, INPUT_SIZE

OUTPUT_LAYER = "probability"
MIN_CELLS = 4
DEFAULT_BATCH = 32
SMOOTHGRAD_SAMPLES = 8
SMOOTHGRAD_NOISE = 0.1


class GradCamError(UserError, ValueError):
    """The model cannot be explained as asked (wrong shape, unknown layer, bad patches)."""


@dataclass(frozen=True)
class SmoothGrad:
    """Average gradients over `samples` noisy copies; noise sd = `noise` x 255 pixel values."""

    samples: int = SMOOTHGRAD_SAMPLES
    noise: float = SMOOTHGRAD_NOISE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise GradCamError(f"SmoothGrad needs at least 1 sample, got {self.samples}")
        if not 0.0 < self.noise <= 1.0:
            raise GradCamError(f"SmoothGrad noise must be in (0, 1], got {self.noise}")


class GradCam:
    """Grad-CAM of one classifier at one backbone layer; call it on uint8 patches.

    `layer` defaults to the backbone table's `explain_layer` for `model.name`. Building the
    explainer traces one compiled graph per batch shape; reuse the object for many batches.
    """

    def __init__(self, model: keras.Model, layer: str | None = None) -> None:
        self.model = model
        self.backbone = _backbone(model)
        self.layer = layer or _explain_layer(model)
        try:
            target = self.backbone.get_layer(self.layer)
        except ValueError:
            raise GradCamError(f"backbone of {model.name!r} has no layer {self.layer!r}") from None
        self.inner = keras.Model(
            self.backbone.inputs, [target.output, self.backbone.output], name="gradcam_inner"
        )
        self.before, self.after = _outer_layers(model)
        self.head = model.get_layer(OUTPUT_LAYER)
        cells = tuple(self.inner.outputs[0].shape[1:3])
        if None in cells or min(cells) < MIN_CELLS:
            raise GradCamError(
                f"layer {self.layer!r} of {model.name!r} has {cells} cells; Grad-CAM needs at "
                f"least {MIN_CELLS}x{MIN_CELLS}: pick an earlier layer"
            )
        self.cells = cells
        _check_replay(self)
        self._step = tf.function(self._activations_and_gradients, reduce_retracing=True)

    def logit(self, images: tf.Tensor) -> tf.Tensor:
        """The classifier's logit [B] for float images, by the replayed chain (for checks)."""
        _, logit = self._forward(images)
        return logit

    def _forward(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = images
        for layer in self.before:
            x = layer(x, training=False)
        activation, x = self.inner(x, training=False)
        for layer in self.after:
            x = layer(x, training=False)
        kernel = tf.cast(tf.convert_to_tensor(self.head.kernel), tf.float32)
        bias = tf.cast(tf.convert_to_tensor(self.head.bias), tf.float32)
        logit = tf.matmul(tf.cast(x, tf.float32), kernel)[:, 0] + bias[0]
        return activation, logit

    def _activations_and_gradients(
        self, images: tf.Tensor, sign: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)
            activation, logit = self._forward(images)
            score = tf.reduce_sum(logit * sign)
        gradient = tape.gradient(score, activation)
        return activation, gradient

    def activations_and_gradients(
        self, patches: np.ndarray, target: int | Sequence[int] | np.ndarray = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """The target layer's activations and d(signed logit)/d(activation), [N, h, w, C] each.

        A missing gradient (a graph the tape could not follow) is a `GradCamError`, never None.
        """
        images = _as_images(patches)
        sign = _signs(target, len(images))
        activation, gradient = self._step(tf.constant(images), tf.constant(sign))
        if gradient is None:
            raise GradCamError(f"no gradient reaches layer {self.layer!r} of {self.model.name!r}")
        return np.asarray(activation, np.float32), np.asarray(gradient, np.float32)

    def __call__(
        self,
        patches: np.ndarray,
        target: int | Sequence[int] | np.ndarray = 1,
        *,
        smoothgrad: SmoothGrad | None = None,
        batch_size: int = DEFAULT_BATCH,
    ) -> np.ndarray:
        """Maps [N, 50, 50] in [0, 1] (each scaled to its own maximum; all zero if no evidence).

        `target` is the class explained, 1 (IDC) or 0, for all patches or one per patch.
        """
        images = _as_images(patches)
        signs = _signs(target, len(images))
        if batch_size < 1:
            raise GradCamError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng(smoothgrad.seed) if smoothgrad else None
        maps = np.empty((len(images), INPUT_SIZE, INPUT_SIZE), np.float32)
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            maps[part] = self._batch(images[part], signs[part], smoothgrad, rng)
        return maps

    def _batch(
        self,
        images: np.ndarray,
        signs: np.ndarray,
        smoothgrad: SmoothGrad | None,
        rng: np.random.Generator | None,
    ) -> np.ndarray:
        activation, gradient = self._step(tf.constant(images), tf.constant(signs))
        if gradient is None:
            raise GradCamError(f"no gradient reaches layer {self.layer!r} of {self.model.name!r}")
        if smoothgrad is not None and rng is not None:
            total = tf.zeros_like(gradient)
            for _ in range(smoothgrad.samples):
                noise = rng.normal(0.0, smoothgrad.noise * 255.0, images.shape)
                noisy = np.clip(images + noise.astype(np.float32), 0.0, 255.0)
                _, noisy_gradient = self._step(tf.constant(noisy), tf.constant(signs))
                total += noisy_gradient
            gradient = total / smoothgrad.samples
        return np.asarray(_cam(activation, gradient))


@tf.function(reduce_retracing=True)
def _cam(activation: tf.Tensor, gradient: tf.Tensor) -> tf.Tensor:
    """ReLU(sum_k mean(gradient_k) * activation_k), upsampled to 50x50, scaled to max 1."""
    activation = tf.cast(activation, tf.float32)
    weights = tf.reduce_mean(tf.cast(gradient, tf.float32), axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * activation, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, (INPUT_SIZE, INPUT_SIZE), method="bilinear")[..., 0]
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(cam, peak)


def gradcam(
    model: keras.Model,
    patches: np.ndarray,
    target: int | Sequence[int] | np.ndarray = 1,
    *,
    layer: str | None = None,
    smoothgrad: bool | SmoothGrad = False,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """Grad-CAM maps [N, 50, 50] in [0, 1] of `model` for uint8 patches [N, 50, 50, 3].

    `smoothgrad=True` uses `SmoothGrad(seed=seed)`; pass a `SmoothGrad` to set samples/noise.
    """
    settings = SmoothGrad(seed=seed) if smoothgrad is True else smoothgrad or None
    return GradCam(model, layer)(patches, target, smoothgrad=settings, batch_size=batch_size)


def _backbone(model: Any) -> keras.Model:
    if not isinstance(model, keras.Model):
        raise GradCamError(f"expected a Keras model, got {type(model).__name__}")
    try:
        backbone = model.get_layer(BACKBONE_NAME)
        model.get_layer(OUTPUT_LAYER)
    except ValueError:
        raise GradCamError(
            f"model {model.name!r} is not a histomlf classifier: it needs a nested "
            f"{BACKBONE_NAME!r} model and a {OUTPUT_LAYER!r} Dense layer"
        ) from None
    if not isinstance(backbone, keras.Model):
        raise GradCamError(f"layer {BACKBONE_NAME!r} of {model.name!r} is not a nested model")
    return backbone


def _explain_layer(model: keras.Model) -> str:
    try:
        return get_backbone(model.name).explain_layer
    except KeyError as error:
        raise GradCamError(f"{error}; pass layer= to explain this model") from None


def _outer_layers(model: keras.Model) -> tuple[list[Any], list[Any]]:
    """The classifier's layers before and after the backbone, head excluded, in call order."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = [layer.name for layer in layers]
    if names[-1] != OUTPUT_LAYER or names.count(BACKBONE_NAME) != 1:
        raise GradCamError(
            f"model {model.name!r} is not a chain ending in {OUTPUT_LAYER!r}: {names}"
        )
    head = model.get_layer(OUTPUT_LAYER)
    if getattr(head, "units", None) != 1:
        raise GradCamError(f"{OUTPUT_LAYER!r} of {model.name!r} must be a Dense layer of 1 unit")
    split = names.index(BACKBONE_NAME)
    return layers[:split], layers[split + 1 : -1]


def _check_replay(explainer: GradCam) -> None:
    """The replayed chain must give the model's own probabilities (a mid-grey and a noise patch)."""
    probe = np.stack(
        [
            np.full((INPUT_SIZE, INPUT_SIZE, 3), 128.0, np.float32),
            np.random.default_rng(0).uniform(0, 255, (INPUT_SIZE, INPUT_SIZE, 3)),
        ]
    ).astype(np.float32)
    replayed = tf.sigmoid(explainer.logit(tf.constant(probe))).numpy()
    direct = np.asarray(explainer.model(probe, training=False), np.float64).reshape(-1)
    if not np.allclose(replayed, direct, atol=2e-3):
        raise GradCamError(
            f"replaying {explainer.model.name!r} layer by layer gives {replayed.round(4).tolist()}"
            f", the model {direct.round(4).tolist()}: it is not a simple chain around "
            f"{BACKBONE_NAME!r}"
        )


def _as_images(patches: np.ndarray) -> np.ndarray:
    array = np.asarray(patches)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise GradCamError(
            f"patches must be [N, {INPUT_SIZE}, {INPUT_SIZE}, 3], got {list(array.shape)}"
        )
    if len(array) == 0:
        raise GradCamError("no patches to explain")
    return array.astype(np.float32)


def _signs(target: int | Sequence[int] | np.ndarray, count: int) -> np.ndarray:
    classes = np.broadcast_to(np.asarray(target), (count,))
    if not np.isin(classes, (0, 1)).all():
        raise GradCamError(f"target classes must be 0 or 1, got {np.unique(classes).tolist()}")
    return np.where(classes == 1, 1.0, -1.0).astype(np.float32)
