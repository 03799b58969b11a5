"""The final model from cross-validation: pooled out-of-fold scores, calibration, the ensemble."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histomlf.evaluation.calibration import PlattMap, fit_platt
from histomlf.evaluation.scored import score_split
from histomlf.evaluation.threshold import choose_threshold
from histomlf.recipes.cv_final import (
    FoldOutcome,
    check_final,
    every_patient_split,
    fold_assignment_digest,
    fold_metrics_named,
    pooled_out_of_fold,
    refit_config,
    score_out_of_fold,
)


def fold(index: int, patients: list[str], seed: int) -> FoldOutcome:
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame(
        {
            "path": [f"{p}/{i}.png" for p in patients for i in range(40)],
            "patient_id": [p for p in patients for _ in range(40)],
            "label": rng.integers(0, 2, 40 * len(patients)),
        }
    )
    # Ranks well but overstates P(IDC) like class-weighted training.
    logits = np.where(rows["label"] == 1, 1.0, -1.0) + rng.normal(0, 1.2, len(rows)) + 1.0
    probabilities = 1 / (1 + np.exp(-logits))
    return FoldOutcome(index, f"run{index}", None, score_split(rows, probabilities, 0.5), 3)


FOLDS = [fold(0, ["1", "2", "3"], 0), fold(1, ["4", "5", "6"], 1), fold(2, ["7", "8"], 2)]


def test_pooling_keeps_each_patient_once_with_its_fold() -> None:
    rows, probabilities = pooled_out_of_fold(FOLDS)
    assert len(rows) == len(probabilities) == 8 * 40
    assert rows.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(rows["patient_id"].unique()) == [str(p) for p in range(1, 9)]
    np.testing.assert_array_equal(probabilities[:120], FOLDS[0].test.probabilities)
    twice = [FOLDS[0], fold(1, ["3", "4"], 5)]
    with pytest.raises(ValueError, match="more than one fold"):
        pooled_out_of_fold(twice)


def test_threshold_and_calibration_come_from_the_pooled_predictions() -> None:
    rows, probabilities = pooled_out_of_fold(FOLDS)
    labels = rows["label"].to_numpy()
    scores = score_out_of_fold(rows, probabilities, policy="youden", calibrate="platt", seed=0)
    # Hand computation: Youden's threshold on the pooled table, Platt fitted on it.
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, probabilities, drop_intermediate=False)
    youden = float(np.clip(thresholds[np.argmax(tpr - fpr)], 0, 1))
    assert scores.raw_threshold == pytest.approx(youden)
    assert scores.raw_threshold == choose_threshold(labels, probabilities, "youden")
    platt = fit_platt(labels, probabilities)
    assert (scores.platt.slope, scores.platt.intercept) == pytest.approx(
        (platt.slope, platt.intercept)
    )
    assert scores.evaluation.threshold == pytest.approx(platt.threshold(youden))
    metrics = scores.metrics()
    # Labels and ranking unchanged; calibration better on these (fitting) predictions.
    raw = score_split(rows, probabilities, youden).metrics
    for name in ("roc_auc", "balanced_accuracy", "f1", "recall", "specificity"):
        assert metrics[f"oof_{name}"] == pytest.approx(raw[name], abs=1e-12)
    assert metrics["oof_ece"] < metrics["oof_ece_uncalibrated"]
    assert {"oof_roc_auc_ci_low", "oof_patient_roc_auc", "platt_slope"} <= set(metrics)
    assert not any(key.startswith("test_") for key in metrics)
    assert scores.calibration == "platt"
    # A model that ranks no better than chance gets no map, and says why.
    inverted = score_out_of_fold(rows, 1 - probabilities, policy="youden", calibrate="platt",
                                 seed=0)
    assert inverted.platt.is_identity and inverted.calibration.startswith("none: Platt")
    identity = score_out_of_fold(rows, probabilities, policy="youden", calibrate="none", seed=0)
    assert identity.platt == PlattMap() and identity.metrics()["oof_ece"] == pytest.approx(
        metrics["oof_ece_uncalibrated"]
    )


def test_fold_digest_depends_on_the_assignment_only() -> None:
    rows, _ = pooled_out_of_fold(FOLDS)
    digest = fold_assignment_digest(rows)
    assert digest == fold_assignment_digest(rows.sample(frac=1, random_state=0))
    moved = rows.copy()
    moved.loc[moved["patient_id"] == "3", "fold"] = 1
    assert fold_assignment_digest(moved) != digest


def test_fold_summary_names_say_fold_not_test_and_checks_refuse_early() -> None:
    named = fold_metrics_named({"test_roc_auc_mean": 0.9, "test_patient_f1_sd": 0.1})
    assert named == {"fold_mean_roc_auc": 0.9, "fold_sd_patient_f1": 0.1}
    check_final("ensemble", "platt", 5, ())
    with pytest.raises(ValueError, match="every fold"):
        check_final("ensemble", "platt", 5, (1, 2))
    with pytest.raises(ValueError, match="final must be"):
        check_final("refit-all", "platt", 5, ())
    with pytest.raises(ValueError, match="calibrate must be"):
        check_final("ensemble", "isotonic", 5, ())


def test_refit_trains_the_median_of_the_folds_epochs_on_every_patient() -> None:
    from dataclasses import replace

    from histomlf.config import TrainConfig

    config = TrainConfig(epochs=60, fine_tune_epochs=10, early_stopping_patience=3)
    ran = [replace(FOLDS[0], epochs=e, fine_tune_epochs=f) for e, f in ((12, 4), (30, 0), (17, 9))]
    refit = refit_config(config, ran)
    assert (refit.epochs, refit.fine_tune_epochs, refit.early_stopping_patience) == (17, 4, 0)
    assert refit.learning_rate == config.learning_rate and refit.seed == config.seed
    manifest = pd.DataFrame({"patient_id": ["9", "10", "9", "11"], "label": [0, 1, 1, 0]})
    split = every_patient_split(manifest)
    assert sorted(split["patient_id"]) == ["10", "11", "9"] and set(split["split"]) == {"train"}
