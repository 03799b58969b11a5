"""Classification metrics as pure functions of `(y_true, y_prob, threshold)`.

A patch is predicted IDC when `y_prob >= threshold` (the convention of scikit-learn's ROC
thresholds, so a threshold chosen on a curve reproduces that curve's point). Metrics that
are undefined on the input (ROC/PR AUC and balanced accuracy with a single class present,
anything on an empty input) are nan, never an exception; ratio metrics with a zero
denominator (precision with no predicted positive...) are 0, scikit-learn's
`zero_division=0`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from histomlf.errors import UserError

# scikit-learn and pandas are imported where used: the metric table above the functions is
# read by config validation and `--help`, which should not pay for them.



@dataclass(frozen=True)
class Metric:
    """One metric histomlf computes: its direction, what it measures and how it is shown.

    `classification_metrics` computes every entry, `histomlf.evaluation.bootstrap` its
    patient-bootstrap twin (`bootstrap=True` entries get `*_ci_low` / `*_ci_high`); tuning
    objectives, the registry gate, the CLI help and the tests read names and directions here,
    and every table, note and page that shows metrics reads its labels and sets here.
    """

    name: str
    higher_is_better: bool
    summary: str
    bootstrap: bool = True
    label: str = ""
    """As a column or row heading (the report's results table): `Recall (sensitivity)`."""
    short_label: str = ""
    """In a narrow column (the report's per-patient rows): `Sens.`."""
    prose: str = ""
    """In a sentence (run notes, the web page's model card): `sensitivity (recall)`."""
    headline: int = 0
    """Rank among the headline metrics (1 first; 0: not a headline): the first `BRIEF` are
    printed after a run and tabled per fold, the first `HEADLINE` fill run notes."""
    tabled: bool = False
    """A column of the report's results table and a row of the web page's model card."""


METRICS: dict[str, Metric] = {
    entry.name: entry
    for entry in (
        Metric("accuracy", True, "share of patches classified right", label="Accuracy",
               short_label="Acc.", prose="accuracy", headline=6, tabled=True),
        Metric("precision", True, "share of predicted IDC that is IDC", label="Precision",
               short_label="Prec.", prose="precision", tabled=True),
        Metric("recall", True, "sensitivity: share of IDC patches found",
               label="Recall (sensitivity)", short_label="Sens.", prose="sensitivity (recall)",
               headline=4, tabled=True),
        Metric("specificity", True, "share of non-IDC patches called non-IDC",
               label="Specificity", short_label="Spec.", prose="specificity", headline=5,
               tabled=True),
        Metric("f1", True, "harmonic mean of precision and recall", label="F1",
               short_label="F1", prose="F1", headline=3, tabled=True),
        Metric("balanced_accuracy", True, "mean of sensitivity and specificity",
               label="Balanced accuracy", short_label="Bal. acc.", prose="balanced accuracy",
               headline=2, tabled=True),
        Metric("roc_auc", True, "area under the ROC curve (threshold-free ranking)",
               label="ROC-AUC", short_label="ROC-AUC", prose="ROC-AUC", headline=1,
               tabled=True),
        Metric("pr_auc", True, "average precision (area under the PR curve)", label="PR-AUC",
               short_label="PR-AUC", prose="PR-AUC", tabled=True),
        Metric("brier", False, "mean squared error of the probabilities", label="Brier score",
               short_label="Brier", prose="Brier score"),
        Metric("ece", False, "10-bin expected calibration error", label="ECE",
               short_label="ECE", prose="expected calibration error"),
        Metric("loss", False, "log loss (binary cross-entropy)", label="Log loss",
               short_label="Loss", prose="log loss"),
    )
}
METRIC_NAMES = tuple(METRICS)
TABLED = tuple(m for m in METRICS.values() if m.tabled)
"""The results table's columns and the model card's rows, in table order."""
BRIEF = 3
HEADLINE = 5


def headline_metrics(count: int = HEADLINE) -> tuple[Metric, ...]:
    """The first `count` headline metrics, most important first."""
    ranked = sorted((m for m in METRICS.values() if m.headline), key=lambda m: m.headline)
    return tuple(ranked[:count])


def headline_keys(prefix: str = "test_", count: int = BRIEF) -> tuple[str, ...]:
    """`test_roc_auc`, `test_balanced_accuracy`, ...: the logged keys of the headline."""
    return tuple(f"{prefix}{m.name}" for m in headline_metrics(count))


ECE_BINS = 10
NAN = float("nan")


class UnknownMetricError(UserError, ValueError):
    """A metric name histomlf does not compute; the message lists the known ones."""


def metric_named(name: str, prefixes: tuple[str, ...] = ()) -> Metric:
    """The table entry for `name`, after removing one of `prefixes` (`test_`, `val_`...)."""
    base = name
    for prefix in prefixes:
        if base.startswith(prefix):
            base = base[len(prefix) :]
            break
    try:
        return METRICS[base]
    except KeyError:
        raise UnknownMetricError(
            f"unknown metric {name!r}; known: "
            + ", ".join(f"{p}{m}" for p in (prefixes or ("",)) for m in METRIC_NAMES)
        ) from None


def as_arrays(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flatten to `(int labels in {0, 1}, float64 probabilities)` of equal length."""
    labels = np.asarray(y_true).reshape(-1)
    probabilities = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if labels.shape != probabilities.shape:
        raise ValueError(f"y_true has {labels.size} values but y_prob has {probabilities.size}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    return labels.astype(np.int64), probabilities


def confusion(y_true: Any, y_prob: Any, threshold: float) -> dict[str, Any]:
    """`{"tn", "fp", "fn", "tp": int, "threshold": float}`, JSON-ready."""
    from sklearn.metrics import confusion_matrix

    labels, probabilities = as_arrays(y_true, y_prob)
    predicted = (probabilities >= threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return {
        "tn": int(tn),
        "fp": int(fp),
        "fn": int(fn),
        "tp": int(tp),
        "threshold": float(threshold),
    }


def _ratio(numerator: float, denominator: float, zero_division: float) -> float:
    return float(numerator / denominator) if denominator else float(zero_division)


def expected_calibration_error(y_true: Any, y_prob: Any, bins: int = ECE_BINS) -> float:
    """ECE of P(IDC): sum over `bins` equal-width bins of |mean label - mean probability|
    weighted by the bin's share of samples (a probability of exactly 1 falls in the top bin).
    """
    labels, probabilities = as_arrays(y_true, y_prob)
    if not labels.size:
        return NAN
    index = np.clip((probabilities * bins).astype(np.int64), 0, bins - 1)
    gap = np.bincount(index, weights=labels - probabilities, minlength=bins)
    return float(np.abs(gap).sum() / labels.size)


def classification_metrics(
    y_true: Any, y_prob: Any, threshold: float, *, zero_division: float = 0.0
) -> dict[str, float]:
    """Every metric in `METRIC_NAMES` for predictions `y_prob >= threshold`.

    `loss` is the log loss (binary cross-entropy) of the probabilities, `brier` their mean
    squared error, `ece` the 10-bin expected calibration error. `zero_division` is the value
    of precision/recall/specificity/F1 when their denominator is 0 (nan to mark them undefined).
    """
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        log_loss,
        roc_auc_score,
    )

    labels, probabilities = as_arrays(y_true, y_prob)
    if not labels.size:
        return dict.fromkeys(METRIC_NAMES, NAN)
    counts = confusion(labels, probabilities, threshold)
    tn, fp, fn, tp = counts["tn"], counts["fp"], counts["fn"], counts["tp"]
    both_classes = 0 < tp + fn < labels.size
    recall = _ratio(tp, tp + fn, zero_division)
    specificity = _ratio(tn, tn + fp, zero_division)
    metrics = {
        "accuracy": (tp + tn) / labels.size,
        "precision": _ratio(tp, tp + fp, zero_division),
        "recall": recall,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, zero_division),
        "balanced_accuracy": (recall + specificity) / 2 if both_classes else NAN,
        "roc_auc": roc_auc_score(labels, probabilities) if both_classes else NAN,
        "pr_auc": average_precision_score(labels, probabilities) if both_classes else NAN,
        "brier": brier_score_loss(labels, probabilities, pos_label=1),
        "ece": expected_calibration_error(labels, probabilities),
        "loss": log_loss(labels, np.clip(probabilities, 1e-15, 1 - 1e-15), labels=[0, 1]),
    }
    return {name: float(metrics[name]) for name in METRIC_NAMES}


def _per_patient(
    y_true: Any, y_prob: Any, patient_ids: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels, probabilities = as_arrays(y_true, y_prob)
    patients = np.asarray(patient_ids).reshape(-1)
    if patients.shape != labels.shape:
        raise ValueError(f"patient_ids has {patients.size} values but y_true has {labels.size}")
    return labels, probabilities, patients


def per_patient_metrics(
    y_true: Any, y_prob: Any, patient_ids: Any, threshold: float
) -> dict[str, float]:
    """Each metric computed within each patient, then averaged over patients (macro).

    Every patient counts once whatever its number of patches. A metric undefined for a
    patient (recall for a patient without IDC patches, ROC AUC with one class, precision
    with no predicted positive...) is left out of that metric's average rather than
    counted as 0; a metric undefined for every patient is nan.
    """
    labels, probabilities, patients = _per_patient(y_true, y_prob, patient_ids)
    rows = [
        classification_metrics(labels[mask], probabilities[mask], threshold, zero_division=NAN)
        for mask in (patients == patient for patient in np.unique(patients))
    ]
    result = {}
    for name in METRIC_NAMES:
        values = [row[name] for row in rows if not math.isnan(row[name])]
        result[name] = float(np.mean(values)) if values else NAN
    return result


def patient_summary(y_true: Any, y_prob: Any, patient_ids: Any, threshold: float) -> Any:
    """One row per patient: patches, positives, mean probability, and the predicted vs true
    IDC fractions (the slide-level view a pathologist would compare), sorted by patient id."""
    import pandas as pd

    labels, probabilities, patients = _per_patient(y_true, y_prob, patient_ids)
    frame = pd.DataFrame(
        {
            "patient_id": patients,
            "label": labels,
            "probability": probabilities,
            "predicted": (probabilities >= threshold).astype(np.int64),
        }
    )
    aggregations: dict[str, tuple[str, str | Callable[..., Any]]] = {
        "patches": ("label", "size"),
        "positives": ("label", "sum"),
        "mean_probability": ("probability", "mean"),
        "predicted_positive_fraction": ("predicted", "mean"),
        "true_positive_fraction": ("label", "mean"),
    }
    table = frame.groupby("patient_id", sort=True).agg(**aggregations).reset_index()
    return table.astype({"patches": "int64", "positives": "int64"})
