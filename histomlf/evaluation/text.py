"""Metrics in words: one number, a number with its 95 % patient-bootstrap interval, the
headline line. Pure formatting shared by run notes, the registry's version description and
the web page's model card."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from histomlf.evaluation.metrics import HEADLINE, headline_metrics

HEADLINE_LABELS = tuple((m.name, m.prose) for m in headline_metrics(HEADLINE))
"""`(name, words)` of the headline metrics, most important first (the metric table's)."""


def number(value: Any) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(value) else f"{value:.3f}"


def metric_with_interval(metrics: Mapping[str, float], key: str) -> str:
    """`0.912 (95 % CI 0.870–0.944)`, or the value alone when no interval was logged."""
    value = number(metrics.get(key))
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if low is None or high is None:
        return value
    return f"{value} (95 % CI {number(low)}–{number(high)})"


def headline_line(metrics: Mapping[str, float], split: str = "test") -> str:
    parts = [f"{label} {metric_with_interval(metrics, f'{split}_{name}')}"
             for name, label in HEADLINE_LABELS]
    patient = metrics.get(f"{split}_patient_roc_auc")
    if patient is not None:
        parts.append(f"per-patient ROC-AUC {number(patient)}")
    return "; ".join(parts)
