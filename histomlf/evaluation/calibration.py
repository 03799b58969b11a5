"""Platt scaling of P(IDC): an affine map of the logit, fitted on held-out predictions.

Class-weighted training shifts P(IDC) up (the model sees a balanced world; the patches are
~28 % IDC), so a model can rank well and still overstate every probability. Temperature
scaling (`logit / T`) only stretches the logit around 0 and cannot move that shift; Platt's
two parameters can: `p' = sigmoid(a * logit(p) + b)`, fitted by maximum likelihood (an
unregularised logistic regression of the label on the logit).

The map is strictly increasing when `a > 0`, so it changes neither the ranking (ROC-AUC,
PR-AUC) nor, once the decision threshold is mapped through it too, any label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from histomlf.evaluation.metrics import as_arrays

# Probabilities are clipped this far from 0 and 1 before the logit (float32 outputs reach 1.0).
LOGIT_EPS = 1e-7
IDENTITY_PARAMS = (1.0, 0.0)


def logit(probabilities: Any) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(values: Any) -> np.ndarray:
    z = np.asarray(values, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


@dataclass(frozen=True)
class PlattMap:
    """`p -> sigmoid(slope * logit(p) + intercept)`; the identity is (1, 0)."""

    slope: float = 1.0
    intercept: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.slope) and np.isfinite(self.intercept)) or self.slope <= 0:
            raise ValueError(
                f"a Platt map needs a finite slope > 0 (it must keep the ranking); got "
                f"slope={self.slope!r}, intercept={self.intercept!r}"
            )

    def __call__(self, probabilities: Any) -> np.ndarray:
        return sigmoid(self.slope * logit(probabilities) + self.intercept)

    def threshold(self, threshold: float) -> float:
        """The decision threshold on calibrated probabilities that gives the same labels.

        Thresholds 0 and 1 are kept as they are: "everything" and "nothing above 1".
        """
        if threshold <= 0.0 or threshold >= 1.0:
            return float(threshold)
        return float(self(np.array([threshold]))[0])

    @property
    def is_identity(self) -> bool:
        return (self.slope, self.intercept) == IDENTITY_PARAMS

    def as_params(self, prefix: str = "platt") -> dict[str, float]:
        return {f"{prefix}_slope": self.slope, f"{prefix}_intercept": self.intercept}


def fit_platt(y_true: Any, y_prob: Any) -> PlattMap:
    """The maximum-likelihood Platt map for labels `y_true` given probabilities `y_prob`.

    Needs both classes; refuses a fit whose slope is not positive (a model that ranks worse
    than chance on these patches: a map would invert it).
    """
    from sklearn.linear_model import LogisticRegression

    labels, probabilities = as_arrays(y_true, y_prob)
    if labels.size == 0 or labels.min() == labels.max():
        raise ValueError("Platt scaling needs predictions of both classes to fit on")
    features = logit(probabilities).reshape(-1, 1)
    regression = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000, tol=1e-10)
    regression.fit(features, labels.astype(int))
    slope, intercept = float(regression.coef_[0, 0]), float(regression.intercept_[0])
    if slope <= 0:
        raise ValueError(
            f"Platt scaling fitted a slope of {slope:.3g} (<= 0): these predictions rank "
            "IDC no better than chance, so no increasing map can calibrate them"
        )
    return PlattMap(slope, intercept)
