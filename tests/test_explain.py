"""Grad-CAM finds known evidence and works for every backbone; patient maps are exact; the
`explain/` folder has its fixed layout and an index that matches it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from histomlf.data.scan import scan_dataset
from histomlf.data.synth import CYTOPLASM, HEMATOXYLIN, generate_dataset, make_patches
from histomlf.explain.artifacts import (
    KINDS,
    ExplainError,
    select_panel,
    select_patients,
    write_explanations,
)
from histomlf.explain.gradcam import GradCam, GradCamError, SmoothGrad, gradcam
from histomlf.explain.patient_map import (
    OUTCOMES,
    outline_segments,
    patient_grid,
    render_patient_map,
    save_patient_map,
    stitch_tissue,
)
from histomlf.explain.render import overlay_strip
from histomlf.models import build_classifier, create_model, list_models

QUADRANTS = {"top_left": (0, 0), "top_right": (0, 1), "bottom_left": (1, 0), "bottom_right": (1, 1)}
# Luminance below which a pixel counts as nucleus, and the per-cell darkness benign synthetic
# tissue rarely exceeds (a quadrant of crowded nuclei scores ~24 per cell).
DARK_LUMINANCE = 130.0
CELL_BIAS = -6.0


def quadrant_model(quadrant: tuple[int, int]) -> keras.Model:
    """A classifier shaped like the registered ones whose logit sees one quadrant only.

    backbone: 1x1 conv "darkness" = relu(130 - luminance) -> 5x5 average (10x10 cells) ->
    "evidence" = relu(cell darkness - 6) -> crop to the quadrant. Head: pool -> probability.
    """
    row, col = quadrant
    crop = ((0, 5) if row == 0 else (5, 0), (0, 5) if col == 0 else (5, 0))

    def factory(shape: tuple[int, int, int]) -> keras.Model:
        inputs = keras.Input(shape)
        x = keras.layers.Conv2D(1, 1, activation="relu", name="darkness")(inputs)
        x = keras.layers.AveragePooling2D(5, name="cells")(x)
        x = keras.layers.Conv2D(1, 1, activation="relu", name="evidence")(x)
        x = keras.layers.Cropping2D(crop, name="quadrant")(x)
        return keras.Model(inputs, x, name="backbone")

    model = build_classifier("quadrant", factory, "raw", dropout=0.0, dense_units=0)
    backbone = model.get_layer("backbone")
    backbone.get_layer("darkness").set_weights(
        [
            -np.array([0.299, 0.587, 0.114], np.float32).reshape(1, 1, 3, 1),
            np.array([DARK_LUMINANCE], np.float32),
        ]
    )
    backbone.get_layer("evidence").set_weights(
        [np.ones((1, 1, 1, 1), np.float32), np.array([CELL_BIAS], np.float32)]
    )
    model.get_layer("probability").set_weights(
        [np.ones((1, 1), np.float32), np.zeros(1, np.float32)]
    )
    return model


def evidence_patches(quadrant: tuple[int, int], count: int, seed: int) -> np.ndarray:
    """Benign synthetic texture with crowded dark nuclei (40 % of pixels) in `quadrant` only."""
    rng = np.random.default_rng(seed)
    patches = make_patches(np.zeros(count, int), rng)
    field = ndimage.gaussian_filter(rng.standard_normal((count, 25, 25)), (0, 1.2, 1.2))
    nuclei = field > np.quantile(field, 0.6, axis=(1, 2), keepdims=True)
    rows = slice(25 * quadrant[0], 25 * quadrant[0] + 25)
    cols = slice(25 * quadrant[1], 25 * quadrant[1] + 25)
    patches[:, rows, cols] = np.where(nuclei[..., None], HEMATOXYLIN, CYTOPLASM).astype(np.uint8)
    return patches


@pytest.mark.parametrize("name", sorted(QUADRANTS))
def test_gradcam_finds_the_evidence(name: str) -> None:
    quadrant = QUADRANTS[name]
    model = quadrant_model(quadrant)
    patches = evidence_patches(quadrant, 6, seed=7)
    maps = gradcam(model, patches, layer="evidence")
    rows = slice(25 * quadrant[0], 25 * quadrant[0] + 25)
    cols = slice(25 * quadrant[1], 25 * quadrant[1] + 25)
    inside = maps[:, rows, cols].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))
    assert inside.min() >= 0.7, inside.round(3)
    # The same evidence argues against class 0: nothing positive is left to show.
    assert gradcam(model, patches, 0, layer="evidence").max() == 0.0
    smooth = gradcam(model, patches, layer="evidence", smoothgrad=SmoothGrad(4, 0.05, seed=1))
    smooth_inside = smooth[:, rows, cols].sum(axis=(1, 2)) / smooth.sum(axis=(1, 2))
    assert smooth_inside.min() >= 0.7, smooth_inside.round(3)


def test_smoothgrad_is_seeded_and_changes_the_maps() -> None:
    keras.utils.set_random_seed(3)
    model = create_model("simplecnn", weights="none")
    patches = make_patches(np.array([0, 1, 1]), np.random.default_rng(4))
    plain = gradcam(model, patches)
    once = gradcam(model, patches, smoothgrad=True, seed=5)
    again = gradcam(model, patches, smoothgrad=True, seed=5)
    other = gradcam(model, patches, smoothgrad=True, seed=6)
    np.testing.assert_array_equal(once, again)
    assert not np.allclose(once, other) and not np.allclose(once, plain)


def _assert_maps(maps: np.ndarray, count: int) -> None:
    assert maps.shape == (count, 50, 50) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.parametrize("name", list_models())
def test_every_backbone_explains_and_survives_a_saving_round_trip(
    name: str, tmp_path: Path
) -> None:
    keras.utils.set_random_seed(0)
    model = create_model(name, weights="none")
    patches = make_patches(np.array([0, 1]), np.random.default_rng(0))
    explainer = GradCam(model)
    assert min(explainer.cells) >= 4
    maps = explainer(patches, [1, 0])
    _assert_maps(maps, 2)
    assert maps.max() == 1.0  # some evidence, so the round trip below compares real maps
    activation, gradient = explainer.activations_and_gradients(patches)
    assert activation.shape == gradient.shape and np.isfinite(gradient).all()

    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    again = GradCam(reloaded)(patches, [1, 0])
    _assert_maps(again, 2)
    np.testing.assert_allclose(again, maps, atol=1e-4)


def test_frozen_model_still_has_gradients() -> None:
    keras.utils.set_random_seed(1)
    model = create_model("simplecnn", weights="none")
    model.trainable = False
    patches = make_patches(np.array([1, 1]), np.random.default_rng(1))
    _, gradient = GradCam(model).activations_and_gradients(patches)
    assert np.abs(gradient).sum() > 0


def test_gradcam_refuses_what_it_cannot_explain() -> None:
    model = create_model("simplecnn", weights="none")
    with pytest.raises(GradCamError, match="has no layer"):
        GradCam(model, "nope")
    with pytest.raises(GradCamError, match="at least 4x4"):
        GradCam(create_model("vgg16", weights="none"), "block5_conv3")  # 3x3 at 50x50
    with pytest.raises(GradCamError, match=r"\[N, 50, 50, 3\]"):
        gradcam(model, np.zeros((2, 40, 40, 3), np.uint8))
    with pytest.raises(GradCamError, match="0 or 1"):
        gradcam(model, np.zeros((1, 50, 50, 3), np.uint8), 2)


# ------------------------------------------------------------------------------- patient maps


def _cut_slide(tmp_path: Path, missing: set[tuple[int, int]]) -> tuple[np.ndarray, pd.DataFrame]:
    """A 130x170 random slide of patient 777 at slide cell (20, 30), cut Kaggle style.

    The last row of cells is 30 px high and the last column 20 px wide (border crops).
    """
    rng = np.random.default_rng(7)
    slide = rng.integers(0, 255, (130, 170, 3), dtype=np.uint8)
    rows = []
    for row in range(3):
        for col in range(4):
            if (row, col) in missing:
                continue
            x, y = 1 + 50 * (30 + col), 1 + 50 * (20 + row)
            path = tmp_path / f"777_idx5_x{x}_y{y}_class{(row + col) % 2}.png"
            Image.fromarray(slide[50 * row : 50 * row + 50, 50 * col : 50 * col + 50]).save(path)
            rows.append(
                {
                    "path": str(path),
                    "patient_id": "777",
                    "x": x,
                    "y": y,
                    "label": (row + col) % 2,
                    "probability": (10 * row + col) / 100,
                }
            )
    return slide, pd.DataFrame(rows)


def test_stitching_is_exact_and_missing_cells_stay_masked(tmp_path: Path) -> None:
    missing = {(0, 1), (2, 3), (1, 0)}
    slide, frame = _cut_slide(tmp_path, missing)
    frame = frame.sample(frac=1.0, random_state=0)  # order must not matter
    grid = patient_grid(frame, threshold=0.1)
    assert (grid.row0, grid.col0, grid.shape) == (20, 30, (3, 4))
    tissue = stitch_tissue(frame, grid)
    assert tissue.shape == (150, 200, 3)
    for row in range(3):
        for col in range(4):
            cell = (slice(50 * row, 50 * row + 50), slice(50 * col, 50 * col + 50))
            original = slide[cell]
            stitched = tissue[cell][: original.shape[0], : original.shape[1]]
            if (row, col) in missing:
                assert grid.mask[row, col] and grid.outcome[row, col] == -1
                assert (tissue[cell] == 255).all()
                continue
            np.testing.assert_array_equal(stitched, original)
            assert (tissue[cell][original.shape[0] :] == 255).all()
            assert (tissue[cell][:, original.shape[1] :] == 255).all()
            assert grid.probability[row, col] == pytest.approx((10 * row + col) / 100)
            assert grid.label[row, col] == (row + col) % 2
            predicted = (10 * row + col) / 100 >= 0.1
            expected = (
                ("TP" if predicted else "FN") if (row + col) % 2 else ("FP" if predicted else "TN")
            )
            assert OUTCOMES[grid.outcome[row, col]] == expected
    assert grid.mask.sum() == len(missing)

    summary = save_patient_map(frame, 0.1, tmp_path / "maps" / "777.png")
    saved = np.load(tmp_path / "maps" / "777.npz")
    assert np.isnan(saved["probability"][0, 1]) and saved["label"][0, 1] == -1
    assert saved["probability"][2, 2] == pytest.approx(0.22)
    assert saved["origin_row_col"].tolist() == [20, 30]
    assert summary["patches"] == 12 - len(missing) and summary["roc_auc"] is not None
    assert Image.open(tmp_path / "maps" / "777.png").size[0] >= 800


def test_outline_follows_cell_edges() -> None:
    frame = pd.DataFrame(
        {
            "patient_id": "1",
            "x": [1, 51, 1, 51],
            "y": [1, 1, 51, 51],
            "label": [1, 0, 0, 0],
            "probability": [0.9, 0.1, 0.2, 0.3],
        }
    )
    grid = patient_grid(frame, 0.5)
    segments = outline_segments(grid.label.filled(0) == 1, grid)
    edges = {tuple(map(tuple, s)) for s in segments.tolist()}
    assert edges == {((0, 0), (50, 0)), ((0, 50), (50, 50)), ((0, 0), (0, 50)), ((50, 0), (50, 50))}


def test_patient_map_refuses_bad_tables() -> None:
    frame = pd.DataFrame(
        {
            "patient_id": ["1", "2"],
            "x": [1, 1],
            "y": [1, 51],
            "probability": [0.1, 0.2],
            "label": [0, 1],
        }
    )
    with pytest.raises(ValueError, match="one patient at a time"):
        patient_grid(frame, 0.5)
    with pytest.raises(ValueError, match="lack column"):
        patient_grid(frame.drop(columns="label"), 0.5)
    same_cell = frame.assign(patient_id="1", y=[1, 1])
    with pytest.raises(ValueError, match="same cell"):
        patient_grid(same_cell, 0.5)


def test_render_handles_one_class_patients(tmp_path: Path) -> None:
    _, frame = _cut_slide(tmp_path, set())
    figure, _ = render_patient_map(frame.assign(label=0), 0.5)
    assert "n/a (one class)" in figure._suptitle.get_text()


# ---------------------------------------------------------------------------------- artifacts


def test_panel_and_patient_selection_by_hand() -> None:
    frame = pd.DataFrame(
        {
            "path": [f"p{i}" for i in range(8)],
            "patient_id": ["a", "a", "a", "b", "b", "c", "c", "d"],
            "x": [1, 51, 101, 1, 51, 1, 51, 1],
            "y": 1,
            "label": [1, 1, 0, 0, 1, 0, 0, 1],
            "probability": [0.95, 0.6, 0.8, 0.1, 0.2, 0.3, 0.7, 0.45],
        }
    )
    panel = select_panel(frame, 0.5, per_kind=2)
    picked = {
        (k, r): p for k, r, p in zip(panel["kind"], panel["rank"], panel["path"], strict=True)
    }
    assert picked == {
        ("tp", 1): "p0",
        ("tp", 2): "p1",
        ("tn", 1): "p3",
        ("tn", 2): "p5",
        ("fp", 1): "p2",
        ("fp", 2): "p6",
        ("fn", 1): "p4",
        ("fn", 2): "p7",
    }
    patients = select_patients(frame, 0.5, count=3)
    # a has most patches; then the worst error: d (1/1) before b (1/2) and c (1/2).
    assert patients[["patient_id", "reason"]].values.tolist() == [
        ["a", "most_patches"],
        ["b", "most_patches"],
        ["d", "worst_error"],
    ]


@pytest.fixture(scope="module")
def scored_test_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, 3, 40, seed=5, duplicate_folder=False, border_fraction=0.05, workers=1)
    manifest = scan_dataset(root, workers=1, progress=False).manifest
    keras.utils.set_random_seed(2)
    model = create_model("simplecnn", weights="none")
    from histomlf.data.patches import decode_patch

    images = np.stack([decode_patch(Path(p).read_bytes()) for p in manifest["path"]])
    frame = manifest[["path", "patient_id", "x", "y", "label"]].copy()
    frame["probability"] = model.predict(images, verbose=0)[:, 0]
    return model, frame


def test_write_explanations_layout_and_index(
    scored_test_split: tuple[keras.Model, pd.DataFrame], tmp_path: Path
) -> None:
    model, frame = scored_test_split
    threshold = float(np.median(frame["probability"]))
    index = write_explanations(model, frame, threshold, tmp_path, patches_per_kind=2, patients=2)
    root = tmp_path / "explain"
    assert json.loads((root / "index.json").read_text()) == index
    assert index["layer"] == "block3_relu" and index["threshold"] == threshold

    listed = {entry["file"] for entry in index["gradcam"]}
    listed |= {entry[key] for entry in index["patients"] for key in ("image", "grids")}
    written = {str(p.relative_to(tmp_path)) for p in root.rglob("*") if p.is_file()}
    assert written == listed | {"explain/index.json"}

    name = re.compile(r"explain/gradcam/(tp|tn|fp|fn)_([12])_(\d+)_x(\d+)_y(\d+)\.png")
    by_key = frame.set_index(["patient_id", "x", "y"])
    for entry in index["gradcam"]:
        kind, rank, pid, x, y = name.fullmatch(entry["file"]).groups()
        assert (kind, int(rank), pid, int(x), int(y)) == (
            entry["kind"],
            entry["rank"],
            entry["patient_id"],
            entry["x"],
            entry["y"],
        )
        row = by_key.loc[(pid, int(x), int(y))]
        assert entry["label"] == row["label"]
        assert entry["probability"] == pytest.approx(row["probability"])
        assert entry["explained_class"] == int(row["probability"] >= threshold)
        assert (row["label"] == 1) == (kind in ("tp", "fn"))
        assert Image.open(tmp_path / entry["file"]).size == (3 * 200 + 2 * 4, 200)
    kinds = [entry["kind"] for entry in index["gradcam"]]
    assert kinds == sorted(kinds, key=KINDS.index) and set(kinds) <= set(KINDS)

    assert [p["reason"] for p in index["patients"]] == ["most_patches", "worst_error"]
    for entry in index["patients"]:
        rows = frame[frame["patient_id"] == entry["patient_id"]]
        assert entry["patches"] == len(rows)
        assert entry["true_idc_share"] == pytest.approx(rows["label"].mean())
        grids = np.load(tmp_path / entry["grids"])
        assert (~grids["mask"]).sum() == len(rows)

    again = write_explanations(
        model, frame, threshold, tmp_path / "again", patches_per_kind=2, patients=2
    )
    assert again == index
    with pytest.raises(ExplainError, match="not empty"):
        write_explanations(model, frame, threshold, tmp_path)


def test_overlay_strip_keeps_the_patch_and_refuses_jet() -> None:
    patch = make_patches(np.array([1]), np.random.default_rng(0))[0]
    strip = overlay_strip(patch, np.zeros((50, 50)))
    np.testing.assert_array_equal(strip[::4, :200:4], patch)
    with pytest.raises(ValueError, match="perceptually uniform"):
        overlay_strip(patch, np.zeros((50, 50)), cmap="jet")
