"""Metrics, thresholds and the patient bootstrap on hand-computed cases."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from histomlf.evaluation.bootstrap import patient_bootstrap_ci, weighted_metrics
from histomlf.evaluation.metrics import (
    METRIC_NAMES,
    METRICS,
    classification_metrics,
    confusion,
    metric_named,
    patient_summary,
    per_patient_metrics,
)
from histomlf.evaluation.threshold import choose_threshold

Y = np.array([0, 0, 1, 1])
P = np.array([0.1, 0.6, 0.4, 0.8])


def test_classification_metrics_by_hand() -> None:
    metrics = classification_metrics(Y, P, 0.5)
    assert tuple(metrics) == METRIC_NAMES
    expected = {
        "accuracy": 0.5,
        "precision": 0.5,
        "recall": 0.5,
        "specificity": 0.5,
        "f1": 0.5,
        "balanced_accuracy": 0.5,
        "roc_auc": 3 / 4,  # 3 of the 4 (positive, negative) pairs are ordered right
        "pr_auc": 0.5 * 1 + 0.5 * 2 / 3,  # recall steps at precision 1 and 2/3
        "brier": (0.1**2 + 0.6**2 + 0.6**2 + 0.2**2) / 4,
        "ece": (0.1 + 0.6 + 0.6 + 0.2) / 4,  # one sample per bin
        "loss": -(math.log(0.9) + math.log(0.4) + math.log(0.4) + math.log(0.8)) / 4,
    }
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value), name
    assert all(isinstance(value, float) for value in metrics.values())


def test_threshold_is_inclusive() -> None:
    assert confusion(Y, P, 0.6) == {"tn": 1, "fp": 1, "fn": 1, "tp": 1, "threshold": 0.6}
    assert confusion(Y, P, 0.61)["fp"] == 0


def test_confusion_is_json_ready() -> None:
    counts = confusion(Y.astype(np.float32), P.astype(np.float32), np.float32(0.5))
    assert json.loads(json.dumps(counts)) == {"tn": 1, "fp": 1, "fn": 1, "tp": 1, "threshold": 0.5}


def test_single_class_gives_nan_not_a_crash() -> None:
    metrics = classification_metrics([1, 1], [0.7, 0.2], 0.5)
    for name in ("roc_auc", "pr_auc", "balanced_accuracy"):
        assert math.isnan(metrics[name]), name
    assert metrics["accuracy"] == 0.5 and metrics["recall"] == 0.5
    assert metrics["precision"] == 1.0 and metrics["specificity"] == 0.0  # zero_division=0
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["brier"] == pytest.approx((0.09 + 0.64) / 2)
    assert metrics["ece"] == pytest.approx((0.3 + 0.8) / 2)
    assert math.isfinite(metrics["loss"])


def test_extreme_probabilities_and_empty_input() -> None:
    metrics = classification_metrics([0, 1], [1.0, 0.0], 0.5)
    assert math.isfinite(metrics["loss"]) and metrics["ece"] == 1.0
    assert all(math.isnan(value) for value in classification_metrics([], [], 0.5).values())


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="3 values"):
        classification_metrics([0, 1, 1], [0.5, 0.5], 0.5)


def test_per_patient_metrics_average_where_defined() -> None:
    y = [0, 1, 0, 0]
    p = [0.2, 0.9, 0.6, 0.1]
    patients = ["A", "A", "B", "B"]
    # A: perfect. B: no IDC, one false positive -> recall/AUC/balanced acc undefined.
    metrics = per_patient_metrics(y, p, patients, 0.5)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["precision"] == pytest.approx(0.5)  # B predicted one positive, wrongly
    assert metrics["recall"] == 1.0  # only A defines recall
    assert metrics["specificity"] == pytest.approx(0.75)
    assert metrics["f1"] == pytest.approx(0.5)
    assert metrics["balanced_accuracy"] == 1.0 and metrics["roc_auc"] == 1.0


def test_patient_summary_table() -> None:
    table = patient_summary([0, 1, 0, 0], [0.2, 0.9, 0.6, 0.1], [7, 7, 3, 3], 0.5)
    assert list(table.columns) == [
        "patient_id",
        "patches",
        "positives",
        "mean_probability",
        "predicted_positive_fraction",
        "true_positive_fraction",
    ]
    assert table["patient_id"].tolist() == [3, 7]
    assert table["patches"].tolist() == [2, 2] and table["positives"].tolist() == [0, 1]
    np.testing.assert_allclose(table["mean_probability"], [0.35, 0.55])
    np.testing.assert_allclose(table["predicted_positive_fraction"], [0.5, 0.5])
    np.testing.assert_allclose(table["true_positive_fraction"], [0.0, 0.5])


@pytest.mark.parametrize(
    ("policy", "y_prob", "expected"),
    [
        ("youden", [0.1, 0.3, 0.4, 0.8], 0.4),  # TPR 1, FPR 0
        ("best_f1", P, 0.4),  # F1 0.8 beats 2/3 at 0.8
        ("sensitivity:0.5", P, 0.8),
        ("sensitivity:0.75", P, 0.4),
        ("sensitivity:1", P, 0.4),
        ("fixed:0.3", P, 0.3),
    ],
)
def test_threshold_policies_by_hand(policy: str, y_prob: list[float], expected: float) -> None:
    assert choose_threshold(Y, y_prob, policy) == pytest.approx(expected)


def test_threshold_degenerate_input_is_one_half() -> None:
    for policy in ("youden", "best_f1", "sensitivity:0.9"):
        assert choose_threshold([1, 1, 1], [0.2, 0.3, 0.9], policy) == 0.5
        assert choose_threshold([], [], policy) == 0.5


@pytest.mark.parametrize(
    "policy", ["median", "sensitivity", "sensitivity:abc", "fixed:2", "youden:1"]
)
def test_unknown_threshold_policy_lists_the_known_ones(policy: str) -> None:
    with pytest.raises(ValueError, match="policy"):
        choose_threshold(Y, P, policy)
    with pytest.raises(ValueError, match="youden"):
        choose_threshold(Y, P, "median")


def _sample(n: int, patients: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    patient_ids = rng.integers(0, patients, n)
    y = (rng.random(n) < 0.3).astype(int)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    return y, np.round(p, 2), patient_ids  # rounding makes ties


def test_bootstrap_replicate_equals_metrics_on_the_resampled_patches() -> None:
    y, p, patient_ids = _sample(2000, 25, 0)
    _, index = np.unique(patient_ids, return_inverse=True)
    rng = np.random.default_rng(1)
    multiplicity = np.stack([np.bincount(rng.integers(0, 25, 25), minlength=25) for _ in range(3)])
    values = weighted_metrics(y, p, index, multiplicity.astype(float), 0.4)
    for row in range(3):
        rows = np.repeat(np.arange(y.size), multiplicity[row][index])
        expected = classification_metrics(y[rows], p[rows], 0.4)
        for name in METRIC_NAMES:
            assert values[name][row] == pytest.approx(expected[name], abs=1e-9), name


def test_bootstrap_intervals_bracket_the_estimate_and_are_reproducible() -> None:
    y, p, patient_ids = _sample(3000, 40, 2)
    intervals = patient_bootstrap_ci(y, p, patient_ids, 0.5, n_boot=200, seed=3)
    assert set(intervals) == set(METRIC_NAMES)
    point = classification_metrics(y, p, 0.5)
    for name, (low, high) in intervals.items():
        assert low <= point[name] <= high, name
    assert intervals == patient_bootstrap_ci(y, p, patient_ids, 0.5, n_boot=200, seed=3)
    narrow = patient_bootstrap_ci(y, p, patient_ids, 0.5, n_boot=200, seed=3, alpha=0.5)
    assert (
        narrow["roc_auc"][1] - narrow["roc_auc"][0]
        < intervals["roc_auc"][1] - intervals["roc_auc"][0]
    )


def test_bootstrap_with_one_class_patients_skips_undefined_replicates() -> None:
    intervals = patient_bootstrap_ci(
        [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], ["a", "a", "b", "b"], 0.5, n_boot=100
    )
    assert intervals["roc_auc"] == (1.0, 1.0)  # replicates with both patients are perfect
    one_class = patient_bootstrap_ci([0, 0], [0.1, 0.2], ["a", "a"], 0.5, n_boot=10)
    assert all(math.isnan(v) for v in one_class["roc_auc"])
    assert one_class["accuracy"] == (1.0, 1.0)


def test_bootstrap_is_fast_on_50k_predictions() -> None:
    y, p, patient_ids = _sample(50_000, 80, 4)
    started = time.perf_counter()
    patient_bootstrap_ci(y, p.astype(np.float32), patient_ids, 0.5, n_boot=1000)
    assert time.perf_counter() - started < 20  # ~2 s on 2 shared cores


def test_the_metric_table_is_what_both_implementations_compute() -> None:
    """Scalar and bootstrap computations return exactly the table's metrics, in its order."""
    assert tuple(classification_metrics(Y, P, 0.5)) == tuple(METRICS)
    multiplicity = np.ones((1, 2))
    weighted = weighted_metrics(Y, P, np.array([0, 0, 1, 1]), multiplicity, 0.5)
    assert set(weighted) == {name for name, m in METRICS.items() if m.bootstrap}
    assert [m for m in METRICS if not METRICS[m].higher_is_better] == ["brier", "ece", "loss"]
    assert metric_named("val_loss", ("test_", "val_")).name == "loss"
    with pytest.raises(ValueError, match="unknown metric 'test_auc'"):
        metric_named("test_auc", ("test_",))
