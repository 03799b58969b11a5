"""Decision thresholds chosen on validation predictions by a named policy.

Policies: `youden` (max TPR - FPR on the ROC curve), `best_f1` (max F1 over the PR curve's
thresholds), `sensitivity:<x>` (the highest threshold whose recall is >= x, i.e. the most
specific operating point meeting a sensitivity target), `fixed:<t>`. A chosen threshold `t`
means "IDC when probability >= t". With a single class in `y_true` nothing can be chosen
from data and the data-driven policies return 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from histomlf.evaluation.metrics import as_arrays

POLICIES = ("youden", "best_f1", "sensitivity:<x>", "fixed:<t>")
DEFAULT_THRESHOLD = 0.5


def parse_policy(policy: str) -> tuple[str, float | None]:
    """`"sensitivity:0.9"` -> `("sensitivity", 0.9)`; unknown or malformed -> ValueError."""
    name, _, argument = str(policy).strip().partition(":")
    known = f"known policies: {', '.join(POLICIES)}"
    if name in ("youden", "best_f1") and not argument:
        return name, None
    if name in ("sensitivity", "fixed") and argument:
        try:
            value = float(argument)
        except ValueError:
            raise ValueError(f"threshold policy {policy!r}: {argument!r} is not a number") from None
        low_ok = value > 0 if name == "sensitivity" else value >= 0
        if not (low_ok and value <= 1):
            raise ValueError(f"threshold policy {policy!r}: value must be in (0, 1] / [0, 1]")
        return name, value
    raise ValueError(f"unknown threshold policy {policy!r}; {known}")


def choose_threshold(y_true: Any, y_prob: Any, policy: str) -> float:
    """The threshold in [0, 1] that `policy` picks for these validation predictions."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    name, value = parse_policy(policy)
    if name == "fixed":
        return float(value)
    labels, probabilities = as_arrays(y_true, y_prob)
    if labels.size == 0 or labels.min() == labels.max():
        return DEFAULT_THRESHOLD
    if name == "best_f1":
        precision, recall, thresholds = precision_recall_curve(labels, probabilities)
        precision, recall = precision[:-1], recall[:-1]
        denominator = precision + recall
        f1 = np.divide(
            2 * precision * recall,
            denominator,
            out=np.zeros_like(denominator),
            where=denominator > 0,
        )
        return _clip(thresholds[int(np.argmax(f1))])
    fpr, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=False)
    if name == "youden":
        return _clip(thresholds[int(np.argmax(tpr - fpr))])
    reaching = np.flatnonzero(tpr >= value - 1e-12)
    return _clip(thresholds[int(reaching[0])])


def _clip(threshold: float) -> float:
    return float(np.clip(threshold, 0.0, 1.0))
