"""Test-time augmentation, ensembles and calibration as ONE Keras model around classifiers.

`with_tta(model, "dihedral8")` wraps a trained classifier in a functional model that calls it
on the 8 flips/rotations of each patch (`DihedralView` layers) and averages the 8 probabilities
with a `keras.layers.Average`; `average_members(members)` averages several trained classifiers
the same way. Either is an ordinary Keras model (raw pixels in, [B, 1] probability out), so the
logged pyfunc, `mlflow models serve`, evaluation and `keras.saving` need nothing new: the only
custom layer, `DihedralView`, is registered here, and the pyfunc's `_register_custom_layers`
imports this module before loading a model.

`with_calibration(model, slope, intercept)` appends Platt scaling (`PlattScaling`, an affine
map of the logit: `histomlf.evaluation.calibration`) as the model's last layer, so whatever
reads the model's output — serving, heatmaps, the web page — reads calibrated P(IDC).

`averaged_branches(model)` undoes the wrapping for Grad-CAM (calibration included: Grad-CAM
explains the classifiers' own logits, which the increasing map does not reorder): the
classifiers inside, with the views each one sees and its weight in the average.

Fold ensembles: a member trained on patient fold k has seen fold k's train (and validation)
patients, so an ensemble of fold models may only be scored on patients none of its members
trained on — a held-out test split set aside before the folds were drawn, or an outside set;
never on the folds' own test splits. `average_members` cannot check this: the caller must.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from histomlf.choices import TTA_CHOICES as TTA_MODES

# Probabilities are clipped this far from 0 and 1 before the logit (as in evaluation/calibration).
_LOGIT_EPS = 1e-7
DIHEDRAL_CODES = tuple(range(8))
BACKBONE_LAYER = "backbone"


@keras.saving.register_keras_serializable(package="histomlf")
class DihedralView(layers.Layer):
    """One of the 8 symmetries of a square image batch [B, H, H, C], by its code 0..7.

    Bit 0 transposes (swaps rows and columns), bit 1 flips left-right, bit 2 flips up-down, in
    that order: the same enumeration as `histomlf.data.augment`'s training symmetries.
    """

    def __init__(self, code: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if code not in DIHEDRAL_CODES:
            raise ValueError(f"dihedral code must be 0..7, got {code!r}")
        self.code = int(code)

    def call(self, inputs: Any) -> Any:
        x = inputs
        if self.code & 1:
            x = ops.transpose(x, (0, 2, 1, 3))
        if self.code & 2:
            x = ops.flip(x, axis=2)
        if self.code & 4:
            x = ops.flip(x, axis=1)
        return x

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "code": self.code}


def dihedral_numpy(images: np.ndarray, code: int) -> np.ndarray:
    """`DihedralView(code)` on a numpy batch [N, H, H, ...]."""
    x = images
    if code & 1:
        x = np.swapaxes(x, 1, 2)
    if code & 2:
        x = x[:, :, ::-1]
    if code & 4:
        x = x[:, ::-1]
    return x


def undo_dihedral_numpy(images: np.ndarray, code: int) -> np.ndarray:
    """The inverse of `dihedral_numpy(., code)`: maps of a viewed patch back onto the patch."""
    x = images
    if code & 4:
        x = x[:, ::-1]
    if code & 2:
        x = x[:, :, ::-1]
    if code & 1:
        x = np.swapaxes(x, 1, 2)
    return x


def check_tta(tta: str) -> None:
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}; got {tta!r}")


def with_tta(model: keras.Model, tta: str = "dihedral8") -> keras.Model:
    """`model` averaged over the 8 dihedral views of each patch (`tta="none"`: `model` itself).

    The result is named `<model.name>_tta` and shares `model`'s weights (no copy).
    """
    check_tta(tta)
    if tta == "none":
        return model
    inputs = keras.Input(model.input_shape[1:], dtype="float32", name="image")
    views = [model(DihedralView(code, name=f"dihedral{code}")(inputs)) for code in DIHEDRAL_CODES]
    outputs = layers.Average(name="tta_mean", dtype="float32")(views)
    return keras.Model(inputs, outputs, name=f"{model.name}_tta")


def average_members(members: Sequence[keras.Model], name: str = "ensemble") -> keras.Model:
    """One model whose probability is the mean of `members`' probabilities.

    Members must take the same input shape. They are renamed `member0`, `member1`, ... in
    place (a functional model needs distinct layer names, and trained models of one backbone
    share theirs) and share their weights with the ensemble. See the module docstring for the
    rule on scoring fold ensembles.
    """
    members = list(members)
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    if len({id(member) for member in members}) != len(members):
        raise ValueError("the same model is given twice as an ensemble member")
    shapes = {tuple(member.input_shape[1:]) for member in members}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members take different input shapes: {sorted(shapes)}")
    inputs = keras.Input(shapes.pop(), dtype="float32", name="image")
    for index, member in enumerate(members):
        member.name = f"member{index}"
    outputs = layers.Average(name="ensemble_mean", dtype="float32")(
        [member(inputs) for member in members]
    )
    return keras.Model(inputs, outputs, name=name)


@keras.saving.register_keras_serializable(package="histomlf")
class PlattScaling(layers.Layer):
    """`p -> sigmoid(slope * logit(p) + intercept)` on a [B, 1] probability batch.

    The parameters are constants of the layer's config (fitted once on held-out predictions,
    never trained), so the saved model carries them and `get_config` shows them.
    """

    def __init__(self, slope: float = 1.0, intercept: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (np.isfinite(slope) and np.isfinite(intercept)) or slope <= 0:
            raise ValueError(f"PlattScaling needs a finite slope > 0; got {slope!r}, {intercept!r}")
        self.slope = float(slope)
        self.intercept = float(intercept)

    def call(self, inputs: Any) -> Any:
        p = ops.clip(ops.cast(inputs, "float32"), _LOGIT_EPS, 1.0 - _LOGIT_EPS)
        logits = ops.log(p) - ops.log1p(-p)
        return ops.sigmoid(self.slope * logits + self.intercept)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "slope": self.slope, "intercept": self.intercept}


def with_calibration(model: keras.Model, slope: float, intercept: float) -> keras.Model:
    """`model` followed by `PlattScaling(slope, intercept)`, named `<model.name>_calibrated`.

    Shares `model`'s weights. A model that is already calibrated is refused (map the new fit
    onto its uncalibrated core instead of stacking maps).
    """
    if calibration_of(model) is not None:
        raise ValueError(f"model {model.name!r} is already calibrated")
    inputs = keras.Input(model.input_shape[1:], dtype="float32", name="image")
    outputs = PlattScaling(slope, intercept, name="platt", dtype="float32")(model(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_calibrated")


def calibration_of(model: Any) -> tuple[float, float] | None:
    """`(slope, intercept)` of a model built by `with_calibration`, else None."""
    found = [layer for layer in getattr(model, "layers", ()) if isinstance(layer, PlattScaling)]
    return (found[0].slope, found[0].intercept) if found else None


def is_classifier(model: Any) -> bool:
    """A plain histomlf classifier: a model with a nested `backbone` model."""
    try:
        return isinstance(model.get_layer(BACKBONE_LAYER), keras.Model)
    except (AttributeError, ValueError):
        return False


def averaged_branches(model: keras.Model) -> list[tuple[keras.Model, tuple[int, ...], float]]:
    """`(classifier, views, weight)` for every classifier call `model` averages.

    `views` are the dihedral codes applied to the input in order before the classifier sees it
    (empty: the patch as given); weights sum to 1. A plain classifier is one branch. Raises
    `ValueError` for a model that is neither a classifier nor built by this module.
    """
    if is_classifier(model):
        return [(model, (), 1.0)]
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if calibration_of(model) is not None and len(nested) == 1:
        return averaged_branches(nested[0])
    views = [layer.code for layer in model.layers if isinstance(layer, DihedralView)]
    averages = [layer for layer in model.layers if isinstance(layer, layers.Average)]
    if len(averages) != 1 or not nested or (views and len(nested) != 1):
        raise ValueError(
            f"model {model.name!r} is neither a histomlf classifier (a nested {BACKBONE_LAYER!r}"
            " model) nor a TTA/ensemble model of `histomlf.models.averaging`"
        )
    if views:
        inner = averaged_branches(nested[0])
        return [
            (classifier, (code, *inner_views), weight / len(views))
            for code in views
            for classifier, inner_views, weight in inner
        ]
    return [
        (classifier, inner_views, weight / len(nested))
        for member in nested
        for classifier, inner_views, weight in averaged_branches(member)
    ]
