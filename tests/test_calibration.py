"""Platt scaling: the fit, the Keras layer inside the model, and Grad-CAM through it."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers_mlflow import keras_probabilities

from histomlf.evaluation.calibration import PlattMap, fit_platt, logit, sigmoid
from histomlf.evaluation.metrics import classification_metrics, expected_calibration_error
from histomlf.explain.averaged import AveragedGradCam, explainer_for
from histomlf.explain.gradcam import GradCam
from histomlf.models import create_model
from histomlf.models.averaging import (
    PlattScaling,
    average_members,
    averaged_branches,
    calibration_of,
    with_calibration,
)


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities shifted up as class-weighted training shifts them: a patch's
    true log-odds are `z` (about 28 % IDC in all), the model says `z + 1.1`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.5, 2.0, n)
    labels = (rng.random(n) < sigmoid(z)).astype(int)
    return labels, sigmoid(z + 1.1)


def test_logit_and_sigmoid_invert_each_other_and_clip() -> None:
    p = np.array([1e-3, 0.2, 0.5, 0.9, 1 - 1e-3])
    np.testing.assert_allclose(sigmoid(logit(p)), p, rtol=1e-12)
    assert np.isfinite(logit(np.array([0.0, 1.0]))).all()
    assert sigmoid(np.array([-800.0, 800.0])).tolist() == [0.0, 1.0]


def test_fit_recovers_a_known_shift_and_lowers_ece_on_other_patients() -> None:
    labels, probabilities = overconfident(20_000, seed=1)
    fitted = fit_platt(labels, probabilities)
    # The data were made with slope 1 and an upward shift of 1.1 in the logit.
    assert fitted.slope == pytest.approx(1.0, abs=0.05)
    assert fitted.intercept == pytest.approx(-1.1, abs=0.08)
    held_labels, held_probabilities = overconfident(5_000, seed=2)
    before = expected_calibration_error(held_labels, held_probabilities)
    after = expected_calibration_error(held_labels, fitted(held_probabilities))
    assert before > 0.1 and after < 0.03


def test_map_keeps_ranking_and_labels_when_the_threshold_is_mapped_too() -> None:
    labels, probabilities = overconfident(3_000, seed=3)
    platt = fit_platt(labels, probabilities)
    calibrated = platt(probabilities)
    threshold = 0.49
    raw = classification_metrics(labels, probabilities, threshold)
    mapped = classification_metrics(labels, calibrated, platt.threshold(threshold))
    assert mapped["roc_auc"] == pytest.approx(raw["roc_auc"], abs=1e-12)
    np.testing.assert_array_equal(
        probabilities >= threshold, calibrated >= platt.threshold(threshold)
    )
    for name in ("accuracy", "recall", "specificity", "f1", "balanced_accuracy"):
        assert mapped[name] == raw[name]
    assert platt.threshold(0.0) == 0.0 and platt.threshold(1.0) == 1.0


def test_fit_refuses_one_class_and_a_map_that_would_invert_the_ranking() -> None:
    with pytest.raises(ValueError, match="both classes"):
        fit_platt([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="no better than chance"):
        fit_platt([1, 1, 0, 0] * 50, [0.1, 0.2, 0.8, 0.9] * 50)
    with pytest.raises(ValueError, match="slope > 0"):
        PlattMap(0.0, 1.0)


def patches(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 50, 50, 3)).astype(np.float32)


def classifier(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return create_model("simplecnn", dense_units=8, dropout=0.0)


def test_the_layer_is_the_numpy_map_and_survives_saving(tmp_path) -> None:
    model = classifier(0)
    calibrated = with_calibration(model, 0.96, -1.07)
    batch = patches()
    raw = keras_probabilities(model, batch)
    np.testing.assert_allclose(
        keras_probabilities(calibrated, batch), PlattMap(0.96, -1.07)(raw), atol=1e-6
    )
    assert calibration_of(calibrated) == (0.96, -1.07) and calibration_of(model) is None
    path = tmp_path / "calibrated.keras"
    calibrated.save(path)
    reloaded = keras.saving.load_model(path)
    assert calibration_of(reloaded) == (0.96, -1.07)
    np.testing.assert_allclose(
        keras_probabilities(reloaded, batch), keras_probabilities(calibrated, batch), atol=1e-7
    )
    with pytest.raises(ValueError, match="already calibrated"):
        with_calibration(calibrated, 1.0, 0.0)
    with pytest.raises(ValueError, match="slope > 0"):
        PlattScaling(-1.0, 0.0)


def test_gradcam_sees_through_calibration_of_a_single_model_and_an_ensemble() -> None:
    batch = patches(2, seed=5)
    single = classifier(1)
    calibrated_single = with_calibration(single, 0.8, -0.5)
    assert averaged_branches(calibrated_single) == [(single, (), 1.0)]
    explainer = explainer_for(calibrated_single)
    assert isinstance(explainer, AveragedGradCam)
    np.testing.assert_allclose(explainer(batch), GradCam(single)(batch), atol=1e-5)

    members = [classifier(2), classifier(3)]
    ensemble = average_members(members)
    calibrated_ensemble = with_calibration(ensemble, 1.2, 0.3)
    branches = averaged_branches(calibrated_ensemble)
    assert [(b[0], b[2]) for b in branches] == [(members[0], 0.5), (members[1], 0.5)]
    np.testing.assert_allclose(
        explainer_for(calibrated_ensemble)(batch), explainer_for(ensemble)(batch), atol=1e-5
    )
