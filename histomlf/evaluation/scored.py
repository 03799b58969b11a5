"""A model's predictions scored at one decision threshold: the object every run logs.

`SplitScores` is one split's rows, probabilities and metrics; `Evaluation` gathers the splits
a run scored, the patient-level view of its main split (per-patient metrics, patient-bootstrap
intervals, one row per patient) and the threshold. Train runs, the tuning winner, CV folds and
`histomlf evaluate` all build one, and `histomlf.tracking.artifacts.log_evaluation` logs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from histomlf.evaluation.bootstrap import patient_bootstrap_ci
from histomlf.evaluation.metrics import (
    classification_metrics,
    patient_summary,
    per_patient_metrics,
)

PREDICTION_COLUMNS = ("path", "patient_id", "x", "y", "label")


@dataclass
class SplitScores:
    """Predictions and metrics of one model on one split."""

    rows: pd.DataFrame
    probabilities: np.ndarray
    metrics: dict[str, float]

    @property
    def labels(self) -> np.ndarray:
        return self.rows["label"].to_numpy()

    def predictions_frame(self, threshold: float) -> pd.DataFrame:
        """One row per patch: where it is, its label, probability and predicted class."""
        frame = self.rows[[c for c in PREDICTION_COLUMNS if c in self.rows]].copy()
        frame["probability"] = self.probabilities
        frame["predicted"] = (self.probabilities >= threshold).astype(int)
        return frame


def score_split(rows: pd.DataFrame, probabilities: Any, threshold: float) -> SplitScores:
    """Every metric of the table for `rows` scored `probabilities` at `threshold`."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    metrics = classification_metrics(rows["label"].to_numpy(), probabilities, threshold)
    return SplitScores(rows=rows, probabilities=probabilities, metrics=metrics)


@dataclass
class Evaluation:
    """The splits one model was scored on at `threshold`, with patient-level detail on `focus`.

    `focus` is the split a reader judges the model by (`test` for runs; `eval` when
    `histomlf evaluate` scores a whole folder); its metrics get patient-bootstrap intervals.
    """

    threshold: float
    focus: str
    splits: dict[str, SplitScores]
    patient_metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    patient_table: pd.DataFrame

    @property
    def focused(self) -> SplitScores:
        return self.splits[self.focus]

    def metrics(self) -> dict[str, float]:
        """`{split}_{metric}` for every split, `{focus}_patient_{metric}`, the focus split's
        `{focus}_{metric}_ci_low/_ci_high`, and `decision_threshold`."""
        out: dict[str, float] = {}
        for split, scores in self.splits.items():
            out.update({f"{split}_{k}": float(v) for k, v in scores.metrics.items()})
        out.update({f"{self.focus}_patient_{k}": v for k, v in self.patient_metrics.items()})
        for name, (low, high) in self.ci.items():
            out[f"{self.focus}_{name}_ci_low"] = low
            out[f"{self.focus}_{name}_ci_high"] = high
        out["decision_threshold"] = self.threshold
        return out


def evaluate_splits(
    splits: dict[str, SplitScores], threshold: float, *, focus: str = "test", seed: int = 0
) -> Evaluation:
    """Add the patient-level view of `splits[focus]`: per-patient metrics, bootstrap CIs and
    the per-patient table."""
    main = splits[focus]
    labels, probabilities = main.labels, main.probabilities
    patients = main.rows["patient_id"].to_numpy()
    return Evaluation(
        threshold=float(threshold),
        focus=focus,
        splits=dict(splits),
        patient_metrics=per_patient_metrics(labels, probabilities, patients, threshold),
        ci=patient_bootstrap_ci(labels, probabilities, patients, threshold, seed=seed),
        patient_table=patient_summary(labels, probabilities, patients, threshold),
    )
