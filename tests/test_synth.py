"""Synthetic IDC data: the Kaggle layout exactly, and classes told apart by texture only."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from histomlf.data.patches import decode_patch
from histomlf.data.scan import PATCH_NAME, SECOND_TOP_FOLDER, scan_dataset
from histomlf.data.synth import generate_dataset, make_patches, slide_layout


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_matches_the_kaggle_archive(tmp_path: Path) -> None:
    stats = generate_dataset(tmp_path / "a", 4, 30, seed=3, border_fraction=0.2, workers=1)
    assert (stats["patches"], stats["files"]) == (120, 240)
    files = _files(tmp_path / "a")
    primary = {k: v for k, v in files.items() if not k.startswith(SECOND_TOP_FOLDER)}
    assert len(primary) == 120
    for relative, data in primary.items():
        pid, label, name = relative.split(os.sep)
        match = PATCH_NAME.match(name)
        assert match and match[1] == pid and match[4] == label
        assert re.fullmatch(r"\d{4,5}", pid)
        assert int(match[2]) % 50 == 1 and int(match[3]) % 50 == 1
        assert files[os.path.join(SECOND_TOP_FOLDER, relative)] == data
        width, height = Image.open(tmp_path / "a" / relative).size
        assert width == 50 and 1 <= height <= 50
    coords = [(r.split(os.sep)[0], PATCH_NAME.match(Path(r).name).group(2, 3)) for r in primary]
    assert len(set(coords)) == len(coords)

    scan = scan_dataset(tmp_path / "a", workers=1, progress=False).stats
    assert (scan["patches"], scan["patients"], scan["quarantined"]) == (120, 4, 0)
    assert scan["duplicates_skipped"] == 120
    assert scan["positives"] == stats["positives"]
    assert scan["border_patches"] == stats["border_patches"] > 0


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", 2, 10, seed=9, duplicate_folder=False, workers=1)
    generate_dataset(tmp_path / "b", 2, 10, seed=9, duplicate_folder=False, workers=1)
    generate_dataset(tmp_path / "c", 2, 10, seed=8, duplicate_folder=False, workers=1)
    assert _files(tmp_path / "a") == _files(tmp_path / "b") != _files(tmp_path / "c")
    assert not (tmp_path / "a" / SECOND_TOP_FOLDER).exists()


def test_classes_share_their_mean_colour() -> None:
    labels = np.array([0, 1] * 200)
    means = make_patches(labels, np.random.default_rng(0)).reshape(400, -1, 3).mean(axis=1)
    gap = np.abs(means[labels == 0].mean(axis=0) - means[labels == 1].mean(axis=0))
    assert gap.max() < 2.0


def test_positive_share_is_about_28_percent(tmp_path: Path) -> None:
    stats = generate_dataset(
        tmp_path / "s", 60, 20, seed=1, duplicate_folder=False, border_fraction=0, workers=1
    )
    assert 0.20 <= stats["positives"] / stats["patches"] <= 0.36


def _neighbour_agreement(rows: np.ndarray, cols: np.ndarray, labels: np.ndarray) -> float:
    """Share of IDC cells' tissue neighbours (4-connected) that are IDC too."""
    cells = {(r, c): label for r, c, label in zip(rows, cols, labels, strict=True)}
    pairs = [
        cells[(r + dr, c + dc)]
        for (r, c), label in cells.items()
        if label == 1
        for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
        if (r + dr, c + dc) in cells
    ]
    return float(np.mean(pairs))


def test_patients_are_slides_with_coherent_idc_blobs(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "s", 3, 400, seed=2, duplicate_folder=False, workers=1)
    manifest = scan_dataset(tmp_path / "s", workers=1, progress=False).manifest
    checked = 0
    for _, patient in manifest.groupby("patient_id"):
        rows, cols = (patient["y"].to_numpy() - 1) // 50, (patient["x"].to_numpy() - 1) // 50
        labels = patient["label"].to_numpy()
        share = labels.mean()
        # The tissue is one compact piece: mostly one component, filling much of its box.
        grid = np.zeros((rows.max() + 1, cols.max() + 1), bool)
        grid[rows, cols] = True
        components, _ = ndimage.label(grid)
        assert np.bincount(components.ravel())[1:].max() >= 0.9 * len(patient)
        assert len(patient) / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1)) >= 0.45
        if not 0 < share < 1:
            continue
        checked += 1
        # Scattered labels give an agreement of about `share` (excess 0); blobs give far more.
        excess = (_neighbour_agreement(rows, cols, labels) - share) / (1 - share)
        assert excess >= 0.25, (share, excess)
    assert checked >= 2


def test_border_crops_lie_on_the_bottom_edge() -> None:
    layout = slide_layout(300, 0.3, 0.05, np.random.default_rng(0))
    crops = layout.heights < 50
    assert 5 <= crops.sum() <= 30
    assert layout.ys[crops].min() >= layout.ys[~crops].max()
    assert len(set(zip(layout.xs.tolist(), layout.ys.tolist(), strict=True))) == 300


def _load(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    manifest = scan_dataset(root, workers=1, progress=False).manifest
    images = np.stack([decode_patch(Path(path).read_bytes()) for path in manifest.path])
    return images, manifest["label"].to_numpy(), manifest["patient_id"].to_numpy()


@pytest.mark.slow
def test_a_small_cnn_learns_texture_mean_colour_does_not(tmp_path: Path) -> None:
    """2k patches, patient-level hold-out; seeds 11-14 gave CNN 0.99-1.0, colour 0.34-0.51."""
    seed = 11
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    generate_dataset(tmp_path / "d", 40, 50, seed=seed, duplicate_folder=False, workers=1)
    images, labels, patients = _load(tmp_path / "d")
    assert len(images) == 2000
    held_out = np.isin(patients, np.unique(patients)[::4])
    train, test = ~held_out, held_out
    assert 0 < labels[test].sum() < test.sum()

    means = images.reshape(len(images), -1, 3).mean(axis=1)
    logistic = LogisticRegression(max_iter=1000).fit(means[train], labels[train])
    colour_auc = roc_auc_score(labels[test], logistic.predict_proba(means[test])[:, 1])

    keras.utils.set_random_seed(seed)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((50, 50, 3)),
            layers.Rescaling(1 / 255),
            layers.Conv2D(16, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(32, activation="relu"),
            layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    order = np.random.default_rng(0).permutation(np.flatnonzero(train))
    model.fit(images[order], labels[order], epochs=2, batch_size=32, verbose=0)
    cnn_auc = roc_auc_score(labels[test], model.predict(images[test], verbose=0)[:, 0])

    assert cnn_auc >= 0.9, f"CNN ROC-AUC {cnn_auc:.3f}"
    assert colour_auc <= 0.7, f"mean-colour ROC-AUC {colour_auc:.3f}"
