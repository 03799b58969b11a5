"""Grad-CAM of a TTA or ensemble model: the average of its classifiers' maps, view by view.

A model of `histomlf.models.averaging` averages the probabilities of classifier calls on
(possibly flipped/rotated) copies of the patch. Its explanation averages the same way: each
classifier's Grad-CAM map of its view, moved back onto the patch by the inverse symmetry, weighted
as the model weighs that call, then scaled to a maximum of 1 like every Grad-CAM map. A plain
classifier gets the plain `GradCam`. `explainer_for(model)` picks between them.

A calibrated model (Platt scaling as its last layer) is explained through the classifiers it
calibrates: the map is increasing, so the classifiers' evidence for IDC is the model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from histomlf.evaluation.calibration import PlattMap
from histomlf.explain.gradcam import (
    DEFAULT_BATCH,
    GradCam,
    GradCamError,
    SmoothGrad,
    _as_images,
    _signs,
)
from histomlf.models.averaging import (
    BACKBONE_LAYER,
    averaged_branches,
    calibration_of,
    dihedral_numpy,
    is_classifier,
    undo_dihedral_numpy,
)
from histomlf.models.backbones import BACKBONES, UnknownBackboneError, get_backbone

REPLAY_TOLERANCE = 1e-4


def explainer_for(model: keras.Model, layer: str | None = None) -> GradCam | AveragedGradCam:
    """`GradCam` for a plain classifier, `AveragedGradCam` for a TTA/ensemble model."""
    if is_classifier(model):
        return GradCam(model, layer)
    return AveragedGradCam(model, layer)


def explain_layer_of(classifier: keras.Model) -> str:
    """The backbone table's explain layer for `classifier`, by name or, for a renamed ensemble
    member, the one table entry whose explain layer its backbone has."""
    try:
        return get_backbone(classifier.name).explain_layer
    except UnknownBackboneError:
        pass
    names = {layer.name for layer in classifier.get_layer(BACKBONE_LAYER).layers}
    found = sorted({entry.explain_layer for entry in BACKBONES.values()} & names)
    if len(found) != 1:
        raise GradCamError(
            f"cannot tell which backbone {classifier.name!r} is ({found or 'no table layer'}); "
            "pass layer= to explain it"
        )
    return found[0]


class AveragedGradCam:
    """Grad-CAM of a model that averages classifiers (see the module docstring).

    `layer` (default: each classifier's explain layer) names the backbone layer of every
    classifier; `self.layer` is the first classifier's, for the explanation index.
    """

    def __init__(self, model: keras.Model, layer: str | None = None) -> None:
        try:
            self.branches = averaged_branches(model)
        except ValueError as error:
            raise GradCamError(str(error)) from None
        self.model = model
        self.explainers: dict[int, GradCam] = {}
        for classifier, _, _ in self.branches:
            if id(classifier) not in self.explainers:
                self.explainers[id(classifier)] = GradCam(
                    classifier, layer or explain_layer_of(classifier)
                )
        self.layer = self.explainers[id(self.branches[0][0])].layer
        self._check_branches()

    def _check_branches(self) -> None:
        """The branches, replayed (and calibrated as the model calibrates), must give the
        model's own probabilities."""
        probe = np.random.default_rng(0).uniform(0, 255, (2, 50, 50, 3)).astype(np.float32)
        replayed = sum(
            weight * _probabilities(classifier, _viewed(probe, views))
            for classifier, views, weight in self.branches
        )
        calibration = calibration_of(self.model)
        if calibration is not None:
            replayed = PlattMap(*calibration)(replayed)
        direct = _probabilities(self.model, probe)
        if not np.allclose(replayed, direct, atol=REPLAY_TOLERANCE):
            raise GradCamError(
                f"the classifiers inside {self.model.name!r} average to {replayed.tolist()}, "
                f"the model gives {direct.tolist()}: not an averaging model"
            )

    def __call__(
        self,
        patches: np.ndarray,
        target: int | Sequence[int] | np.ndarray = 1,
        *,
        smoothgrad: SmoothGrad | None = None,
        batch_size: int = DEFAULT_BATCH,
    ) -> np.ndarray:
        """Maps [N, 50, 50] in [0, 1], as `GradCam.__call__`."""
        images = _as_images(patches)
        signs = _signs(target, len(images))
        targets = (signs > 0).astype(int)
        total = np.zeros(images.shape[:3], np.float32)
        for classifier, views, weight in self.branches:
            explainer = self.explainers[id(classifier)]
            maps = explainer(
                _viewed(images, views), targets, smoothgrad=smoothgrad, batch_size=batch_size
            )
            for code in reversed(views):
                maps = undo_dihedral_numpy(maps, code)
            total += weight * maps
        peak = total.max(axis=(1, 2), keepdims=True)
        return np.divide(total, peak, out=np.zeros_like(total), where=peak > 0)


def _viewed(images: np.ndarray, views: tuple[int, ...]) -> np.ndarray:
    for code in views:
        images = dihedral_numpy(images, code)
    return np.ascontiguousarray(images)


def _probabilities(model: Any, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(images, training=False), np.float64).reshape(-1)
