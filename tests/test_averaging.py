"""TTA and ensembles as one Keras model: what they average, that they save, serve and explain."""

from __future__ import annotations

import base64
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers_mlflow import keras_probabilities, sample_patches, tmp_store

from histomlf.data.patches import decode_patch
from histomlf.explain.averaged import AveragedGradCam, explainer_for
from histomlf.explain.gradcam import GradCam, GradCamError
from histomlf.models import create_model
from histomlf.models.averaging import (
    DihedralView,
    average_members,
    averaged_branches,
    dihedral_numpy,
    undo_dihedral_numpy,
    with_tta,
)
from histomlf.tracking.pyfunc import log_patch_classifier, predict_patches


def numpy_symmetries(batch: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of a batch [N, H, H, C], computed with numpy's own rot90/flip."""
    out = []
    for k in range(4):
        rotated = np.rot90(batch, k, axes=(1, 2))
        out += [rotated, rotated[:, :, ::-1]]
    return out


def patches(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 50, 50, 3)).astype(np.float32)


def classifier(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return create_model("simplecnn", dense_units=8, dropout=0.0)


def predict(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    return keras_probabilities(model, batch)


def test_views_are_the_8_symmetries_and_undo_inverts_them() -> None:
    batch = patches(2)
    layer_views = [np.asarray(DihedralView(code)(batch)) for code in range(8)]
    expected = {s.tobytes() for s in numpy_symmetries(batch)}
    assert {v.tobytes() for v in layer_views} == expected
    for code, view in enumerate(layer_views):
        np.testing.assert_array_equal(dihedral_numpy(batch, code), view)
        np.testing.assert_array_equal(undo_dihedral_numpy(view, code), batch)


def test_tta_of_a_rotation_invariant_model_equals_its_plain_prediction() -> None:
    keras.utils.set_random_seed(0)
    invariant = keras.Sequential(
        [keras.Input((50, 50, 3)), keras.layers.Rescaling(1 / 255),
         keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, activation="sigmoid")]
    )  # fmt: skip
    batch = patches()
    np.testing.assert_allclose(
        predict(with_tta(invariant), batch), predict(invariant, batch), rtol=0, atol=1e-6
    )


def test_tta_is_the_mean_of_the_8_transformed_predictions() -> None:
    base = classifier(1)
    batch = patches()
    views = np.stack([predict(base, view.copy()) for view in numpy_symmetries(batch)])
    tta = with_tta(base)
    assert tta.name == "simplecnn_tta" and with_tta(base, "none") is base
    np.testing.assert_allclose(predict(tta, batch), views.mean(axis=0), rtol=0, atol=1e-6)
    assert np.abs(views - views.mean(axis=0)).max() > 1e-4  # the base model is not invariant
    rotated = np.rot90(batch, 1, axes=(1, 2)).copy()
    np.testing.assert_allclose(predict(tta, rotated), predict(tta, batch), rtol=0, atol=1e-6)


def test_an_ensemble_predicts_the_mean_of_its_members() -> None:
    members = [classifier(seed) for seed in (1, 2, 3)]
    batch = patches()
    expected = np.mean([predict(m, batch) for m in members], axis=0)
    ensemble = average_members(members)
    assert [m.name for m in members] == ["member0", "member1", "member2"]
    np.testing.assert_allclose(predict(ensemble, batch), expected, rtol=0, atol=1e-6)
    assert np.ptp([predict(m, batch) for m in members], axis=0).max() > 1e-4


def test_bad_ensembles_are_refused() -> None:
    member = classifier(1)
    with pytest.raises(ValueError, match="at least 2 members"):
        average_members([member])
    with pytest.raises(ValueError, match="given twice"):
        average_members([member, member])
    with pytest.raises(ValueError, match="tta must be one of none, dihedral8; got 'd4'"):
        with_tta(member, "d4")


def averaging_models() -> dict[str, keras.Model]:
    """A TTA model, an ensemble, and an ensemble of a TTA model and a plain one."""
    return {
        "tta": with_tta(classifier(1)),
        "ensemble": average_members([classifier(2), classifier(3)]),
        "mixed": average_members([with_tta(classifier(4)), classifier(5)], name="mixed"),
    }


def test_averaging_models_round_trip_through_keras_saving(tmp_path: Path) -> None:
    batch = patches()
    for name, model in averaging_models().items():
        path = tmp_path / f"{name}.keras"
        model.save(path)
        reloaded = keras.saving.load_model(path)
        np.testing.assert_allclose(predict(reloaded, batch), predict(model, batch), atol=1e-5)


def test_averaging_models_serve_through_the_pyfunc(tmp_path: Path, idc_sample: Path) -> None:
    """Logged with the train recipe's `log_patch_classifier`, loaded back with MLflow, scored
    on real patches (slide-border ones included): within 1e-5 of the in-process model."""
    paths = sample_patches(idc_sample)
    batch = np.stack([decode_patch(p.read_bytes()) for p in paths])
    models = averaging_models()
    with tmp_store(tmp_path) as store, store.start_run():
        for name in ("tta", "ensemble"):
            info = log_patch_classifier(models[name], name=name, threshold=0.5)
            loaded = mlflow.pyfunc.load_model(info.model_uri)
            served = predict_patches(loaded, batch)["probability"].to_numpy()
            np.testing.assert_allclose(served, predict(models[name], batch), rtol=0, atol=1e-5)
            encoded = [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths]
            answered = loaded.predict(pd.DataFrame({"image": encoded}))["probability"]
            np.testing.assert_allclose(answered.to_numpy(), served, rtol=0, atol=1e-6)


def test_branches_weigh_each_classifier_call_as_the_model_does() -> None:
    models = averaging_models()
    tta_branches = averaged_branches(models["tta"])
    assert [views for _, views, _ in tta_branches] == [(code,) for code in range(8)]
    mixed = averaged_branches(models["mixed"])
    assert len(mixed) == 9 and sum(w for _, _, w in mixed) == pytest.approx(1.0)
    assert [w for _, _, w in mixed] == [1 / 16] * 8 + [1 / 2]
    with pytest.raises(ValueError, match="neither a histomlf classifier"):
        averaged_branches(keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]))


def test_gradcam_of_a_tta_model_moves_with_the_patch() -> None:
    """The TTA model is invariant, so its explanation must be equivariant: the map of a rotated
    patch is the rotated map. Neither holds for the base model alone."""
    base = classifier(1)
    tta = with_tta(base)
    explainer = explainer_for(tta)
    assert isinstance(explainer, AveragedGradCam) and explainer.layer == "block3_relu"
    batch = patches(3)
    rotated = np.rot90(batch, 1, axes=(1, 2)).copy()
    maps, maps_rotated = explainer(batch), explainer(rotated)
    assert maps.shape == (3, 50, 50) and maps.max() == pytest.approx(1.0)
    np.testing.assert_allclose(maps_rotated, np.rot90(maps, 1, axes=(1, 2)), atol=1e-4)
    plain = GradCam(base)
    assert np.abs(plain(rotated) - np.rot90(plain(batch), 1, axes=(1, 2))).max() > 0.05


def test_gradcam_of_an_ensemble_is_the_mean_of_its_members_maps() -> None:
    members = [classifier(2), classifier(3)]
    ensemble = average_members(members)
    batch = patches(3)
    member_maps = [GradCam(m, "block3_relu")(batch, 0) for m in members]
    mean = np.mean(member_maps, axis=0)
    expected = mean / mean.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(explainer_for(ensemble)(batch, 0), expected, atol=1e-5)
    with pytest.raises(GradCamError, match="not a histomlf classifier"):
        GradCam(ensemble)


def test_a_tta_model_writes_the_explain_folder(tmp_path: Path, idc_sample: Path) -> None:
    """What `explain=true` runs after a `tta=dihedral8` fit: the panel and patient maps."""
    from helpers_data import sample_rows

    from histomlf.explain.artifacts import write_explanations

    tta = with_tta(classifier(1))
    rows = sample_rows(idc_sample).iloc[::40].reset_index(drop=True)
    batch = np.stack([decode_patch(Path(p).read_bytes()) for p in rows["path"]])
    frame = rows[["path", "patient_id", "x", "y", "label"]].assign(
        probability=predict(tta, batch)
    )
    index = write_explanations(tta, frame, 0.5, tmp_path, patches_per_kind=1, patients=1)
    assert index["model"] == "simplecnn_tta" and index["layer"] == "block3_relu"
    assert index["gradcam"] and all((tmp_path / e["file"]).is_file() for e in index["gradcam"])
