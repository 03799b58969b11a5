"""The model behind the page: one served pyfunc, loaded once, and its Keras model for Grad-CAM.

Scores go through the pyfunc (`histomlf.tracking.pyfunc.predict_patches`), so the page applies
the served model's preprocessing, decision threshold and limits: a probability on the page is
the one `mlflow models serve` would answer for the same file. Batches are cut into chunks below
the model's `max_images`. One lock serialises model calls: a request's patches are scored (and
explained) together, and concurrent requests wait their turn instead of fighting for 2 cores.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from histomlf.explain.gradcam import GradCam, GradCamError
from histomlf.tracking.pyfunc import predict_patches
from histomlf.tracking.scoring import keras_model_of, load_model, model_threshold, request_limits
from histomlf.web.limits import Limits
from histomlf.web.model_card import ModelCard, describe_model


@dataclass
class Scorer:
    """A loaded histomlf pyfunc with its card, threshold, limits and Grad-CAM explainer.

    `explainer` is None when the Keras model cannot be explained (not a histomlf classifier
    chain); `explain_error` then says why, and pages show no overlays.
    """

    model: Any
    card: ModelCard
    threshold: float
    max_images: int
    max_bytes: int
    max_pixels: int
    limits: Limits
    explainer: GradCam | None = None
    explain_error: str | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def chunk(self) -> int:
        return max(1, min(self.limits.chunk, self.max_images))

    def probabilities(self, patches: np.ndarray) -> np.ndarray:
        """P(IDC) [N] float64 for uint8 patches [N, 50, 50, 3], through the pyfunc in chunks."""
        if len(patches) == 0:
            return np.zeros(0, np.float64)
        parts = []
        with self._lock:
            for start in range(0, len(patches), self.chunk):
                scored = predict_patches(self.model, patches[start : start + self.chunk])
                parts.append(scored["probability"].to_numpy(np.float64))
        return np.concatenate(parts)

    def explain(self, patches: np.ndarray, classes: np.ndarray) -> np.ndarray | None:
        """Grad-CAM maps [N, 50, 50] of the given classes, or None without an explainer."""
        if self.explainer is None or len(patches) == 0:
            return None
        with self._lock:
            return self.explainer(patches, classes)


def load_scorer(
    model_uri: str, limits: Limits | None = None, *, card: ModelCard | None = None
) -> Scorer:
    """Read the model's card (unless given), load its pyfunc once, build its Grad-CAM."""
    card = card or describe_model(model_uri)
    model = load_model(model_uri)
    explainer, explain_error = None, None
    try:
        explainer = GradCam(keras_model_of(model))
    except GradCamError as error:
        explain_error = str(error)
    return Scorer(
        model=model,
        card=card,
        threshold=model_threshold(model),
        limits=limits or Limits(),
        explainer=explainer,
        explain_error=explain_error,
        **request_limits(model),
    )
