"""Evaluation as pure functions of `(y_true, y_prob)`: metrics, thresholds, patient-level
bootstrap intervals and figures. Nothing here trains, loads models or logs."""

from histomlf.evaluation.bootstrap import patient_bootstrap_ci
from histomlf.evaluation.metrics import (
    METRIC_NAMES,
    classification_metrics,
    confusion,
    expected_calibration_error,
    patient_summary,
    per_patient_metrics,
)
from histomlf.evaluation.threshold import POLICIES, choose_threshold

__all__ = [
    "METRIC_NAMES",
    "POLICIES",
    "choose_threshold",
    "classification_metrics",
    "confusion",
    "expected_calibration_error",
    "patient_bootstrap_ci",
    "patient_summary",
    "per_patient_metrics",
]
