"""Synthetic H&E-like IDC patches in exactly the Kaggle layout, for tests, demos and benchmarks.

The two classes differ in texture and structure, not in colour, so a model has to look at the
tissue the way it must on real slides:
- IDC (class 1): crowded, dark, irregular purple nuclei in clusters over a lilac cytoplasm;
- no IDC (class 0): wavy pink stroma fibres, round white fat vacuoles, a few thin nuclei.
Every patch's mean RGB is then moved to a target drawn from the same distribution for both
classes (a per-patient stain colour plus a little per-patch jitter), so mean colour carries no
label information (a logistic regression on it stays near chance).

Each patient is a slide: its patches cover one ragged piece of tissue on the 50-px grid, and
its IDC patches form 1-3 spatially coherent blobs in it (`slide_layout`), so a patient map of
synthetic data looks like tissue with tumour in it, and a good model's map shows the blobs.

The tree mirrors the archive: `<pid>/<0|1>/<pid>_idx5_x<X>_y<Y>_class<C>.png`, ~28 % positives,
a few slide-border crops 50 px wide and fewer rows high (on the tissue's bottom edge), x/y
unique per patient on the 50-px grid (1-based), and optionally the second top folder
`IDC_regular_ps50_idx5/` holding byte-identical copies of every file. Patients are generated
in parallel processes, each from its own seed, so the output does not depend on the number of
workers.
"""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from histomlf.data.patches import PATCH_SIZE
from histomlf.data.scan import SECOND_TOP_FOLDER

POSITIVE_SHARE = 0.28
# Beta(a, b) of the patients' IDC shares: mean a / (a + b) = 0.28, widely spread as on real slides.
SHARE_BETA = (0.9, 0.9 * (1 - POSITIVE_SHARE) / POSITIVE_SHARE)
MAX_BORDER_ROWS = 42
# Slide layout: grid cells per patch, how ragged the tissue is, IDC blobs per patient.
TISSUE_SLACK = 3.0
TISSUE_NOISE = 0.3
MAX_BLOBS = 3
BATCH = 256
# Below this many patches a tree is written in-process: spawning workers costs more.
PARALLEL_MIN_PATCHES = 4000

HEMATOXYLIN = np.array([88, 48, 138], dtype=np.float32)
CYTOPLASM = np.array([222, 178, 224], dtype=np.float32)
STROMA_LIGHT = np.array([236, 160, 200], dtype=np.float32)
STROMA_DARK = np.array([200, 104, 160], dtype=np.float32)
FAT = np.array([246, 240, 246], dtype=np.float32)
MEAN_COLOUR = np.array([200, 148, 196], dtype=np.float32)

_YY, _XX = np.mgrid[0:PATCH_SIZE, 0:PATCH_SIZE].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """(n, 50, 50) Gaussian-blurred white noise, scaled to unit standard deviation."""
    noise = rng.standard_normal((n, PATCH_SIZE, PATCH_SIZE), dtype=np.float32)
    field = ndimage.gaussian_filter(noise, sigma=(0, sigma, sigma), mode="wrap", truncate=3.0)
    return field / field.std(axis=(1, 2), keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def _mix(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per pixel: (1 - weight) * a + weight * b, with a/b colours or images."""
    return a + (b - a) * weight[..., None]


def _idc(rng: np.random.Generator, n: int) -> np.ndarray:
    """Dense clusters of dark, irregular nuclei over lilac cytoplasm."""
    clusters = _smooth_noise(rng, n, 5.0)
    grains = _smooth_noise(rng, n, 1.3)
    density = rng.uniform(0.0, 0.8, (n, 1, 1)).astype(np.float32)
    nuclei = _sigmoid(4.0 * (grains + 0.9 * clusters + density - 0.6))
    return _mix(np.broadcast_to(CYTOPLASM, (n, PATCH_SIZE, PATCH_SIZE, 3)), HEMATOXYLIN, nuclei)


def _benign(rng: np.random.Generator, n: int) -> np.ndarray:
    """Wavy pink stroma fibres, round white fat vacuoles and a few thin nuclei."""
    angle = rng.uniform(0, np.pi, (n, 1, 1)).astype(np.float32)
    period = rng.uniform(5.0, 9.0, (n, 1, 1)).astype(np.float32)
    along = _XX * np.cos(angle) + _YY * np.sin(angle)
    phase = 2 * np.pi * along / period + 1.8 * _smooth_noise(rng, n, 6.0)
    fibres = (0.5 + 0.5 * np.sin(phase)) ** 2
    image = _mix(np.broadcast_to(STROMA_LIGHT, (n, PATCH_SIZE, PATCH_SIZE, 3)), STROMA_DARK, fibres)

    count = rng.integers(0, 4, n)
    centres = rng.uniform(-6, PATCH_SIZE + 6, (n, 3, 2)).astype(np.float32)
    radii = rng.uniform(5.0, 13.0, (n, 3)).astype(np.float32) * (np.arange(3) < count[:, None])
    distance = np.hypot(_XX - centres[..., 0, None, None], _YY - centres[..., 1, None, None])
    fat = _sigmoid(2.0 * (radii[..., None, None] - distance).max(axis=1))
    image = _mix(image, FAT, fat)

    thin = _smooth_noise(rng, n, 1.0)
    nuclei = _sigmoid(5.0 * (thin - 2.2)) * (1.0 - fat)
    return _mix(image, HEMATOXYLIN, nuclei)


def _match_mean(image: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Shift each patch's channel means onto `target` (n, 3), clipping to [0, 255]."""
    for _ in range(3):
        image = np.clip(image + (target - image.mean(axis=(1, 2)))[:, None, None, :], 0, 255)
    return image


def make_patches(
    labels: np.ndarray, rng: np.random.Generator, stain: np.ndarray | None = None
) -> np.ndarray:
    """(n, 50, 50, 3) uint8 synthetic patches for the 0/1 `labels`.

    `stain` is the mean colour the patches are moved to (default: a neutral H&E colour); each
    patch gets a little jitter around it, whatever its class.
    """
    labels = np.asarray(labels)
    n = len(labels)
    image = np.empty((n, PATCH_SIZE, PATCH_SIZE, 3), dtype=np.float32)
    positive = labels == 1
    if positive.any():
        image[positive] = _idc(rng, int(positive.sum()))
    if (~positive).any():
        image[~positive] = _benign(rng, int((~positive).sum()))
    image += rng.normal(0.0, 6.0, (n, PATCH_SIZE, PATCH_SIZE, 1)).astype(np.float32)
    stain = MEAN_COLOUR if stain is None else np.asarray(stain, dtype=np.float32)
    target = stain + rng.normal(0.0, 7.0, (n, 3)).astype(np.float32)
    return np.round(_match_mean(image, target)).astype(np.uint8)


def encode_png(patch: np.ndarray) -> bytes:
    """PNG bytes of an HxWx3 uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(patch).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def patch_name(pid: str, x: int, y: int, label: int) -> str:
    return f"{pid}_idx5_x{x}_y{y}_class{label}.png"


@dataclass(frozen=True)
class SlideLayout:
    """Where one patient's patches lie: 1-based top-left corners, classes and crop heights."""

    xs: np.ndarray
    ys: np.ndarray
    labels: np.ndarray
    heights: np.ndarray


def slide_layout(
    count: int, share: float, border_fraction: float, rng: np.random.Generator
) -> SlideLayout:
    """Lay `count` patches over a tissue mask with a few coherent IDC blobs.

    The tissue is the `count` cells of a square grid (about 3 cells per patch) that score
    highest on smooth noise minus the distance to the centre: one ragged, mostly connected
    piece. About `share` of the patches are IDC (binomial count), the tissue cells nearest to
    1-3 blob centres (with a little noise for ragged edges). Border crops (a binomial share
    `border_fraction`) are the bottom-most cells, where a slide's edge would cut them.
    """
    side = max(2, math.ceil(math.sqrt(count * TISSUE_SLACK)))
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float64)
    noise = ndimage.gaussian_filter(rng.standard_normal((side, side)), max(1.0, side / 8))
    noise /= noise.std() or 1.0
    centre = np.hypot(rows / side - 0.5, cols / side - 0.5)
    score = TISSUE_NOISE * noise - centre * 4.0
    cells = np.argsort(-score.ravel(), kind="stable")[:count]
    rows, cols = cells // side, cells % side

    positives = int(rng.binomial(count, share))
    blobs = int(rng.integers(1, MAX_BLOBS + 1))
    centres = rng.choice(count, size=blobs, replace=count < blobs)
    radii = np.sqrt(max(positives, 1) / blobs / np.pi) * rng.uniform(0.8, 1.3, blobs)
    distance = np.hypot(rows[:, None] - rows[centres], cols[:, None] - cols[centres])
    near = np.exp(-0.5 * (distance / radii) ** 2).max(axis=1) + rng.normal(0, 0.1, count)
    labels = np.zeros(count, np.int64)
    labels[np.argsort(-near, kind="stable")[:positives]] = 1

    heights = np.full(count, PATCH_SIZE, np.int64)
    crops = int(rng.binomial(count, border_fraction))
    bottom = np.lexsort((rng.random(count), -rows))[:crops]
    heights[bottom] = rng.integers(1, MAX_BORDER_ROWS + 1, crops)
    return SlideLayout(1 + PATCH_SIZE * cols, 1 + PATCH_SIZE * rows, labels, heights)


def _write_patient(job: tuple[str, str, int, float, float, bool, Any]) -> dict[str, int]:
    """Generate and write one patient's patches; returns its counts."""
    out, pid, count, share, border_fraction, duplicate_folder, seed = job
    rng = np.random.default_rng(seed)
    layout = slide_layout(count, share, border_fraction, rng)
    xs, ys, labels, heights = layout.xs, layout.ys, layout.labels, layout.heights
    stain = MEAN_COLOUR + rng.normal(0.0, 6.0, 3)
    roots = [Path(out)] + ([Path(out) / SECOND_TOP_FOLDER] if duplicate_folder else [])
    for root in roots:
        for label in (0, 1):
            (root / pid / str(label)).mkdir(parents=True, exist_ok=True)
    for start in range(0, count, BATCH):
        part = slice(start, start + BATCH)
        patches = make_patches(labels[part], rng, stain)
        for patch, x, y, label, height in zip(
            patches, xs[part], ys[part], labels[part], heights[part], strict=True
        ):
            data = encode_png(patch[:height])
            name = patch_name(pid, int(x), int(y), int(label))
            for root in roots:
                with open(root / pid / str(label) / name, "wb") as handle:
                    handle.write(data)
    return {
        "patches": count,
        "positives": int(labels.sum()),
        "border_patches": int((heights < PATCH_SIZE).sum()),
        "files": count * len(roots),
    }


def patient_ids(patients: int, rng: np.random.Generator) -> list[str]:
    """Distinct 4-5 digit ids in the range the real ones use (8863 ... 16896), sorted."""
    low, high = 8800, max(17000, 8800 + 2 * patients)
    return [str(i) for i in sorted(rng.choice(np.arange(low, high), patients, replace=False))]


def generate_dataset(
    out: str | Path,
    patients: int,
    patches_per_patient: int,
    seed: int = 0,
    duplicate_folder: bool = True,
    border_fraction: float = 0.01,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write a synthetic IDC tree into `out`; returns its counts (patches, positives, files...).

    Each patient gets `patches_per_patient` patches and its own IDC share (mean 28 %).
    """
    if patients < 1 or patches_per_patient < 1:
        raise ValueError("patients and patches_per_patient must be at least 1")
    if not 0.0 <= border_fraction <= 1.0:
        raise ValueError(f"border_fraction must be in [0, 1], got {border_fraction}")
    rng = np.random.default_rng(seed)
    pids = patient_ids(patients, rng)
    shares = rng.beta(*SHARE_BETA, patients)
    seeds = np.random.SeedSequence(seed).spawn(patients)
    jobs = [
        (str(out), pid, patches_per_patient, float(share), border_fraction, duplicate_folder, s)
        for pid, share, s in zip(pids, shares, seeds, strict=True)
    ]
    Path(out).mkdir(parents=True, exist_ok=True)
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1 or patients * patches_per_patient < PARALLEL_MIN_PATCHES:
        results = [_write_patient(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_write_patient, jobs))
    stats: dict[str, Any] = {
        key: sum(r[key] for r in results)
        for key in ("patches", "positives", "border_patches", "files")
    }
    stats.update(
        patients=patients,
        negatives=stats["patches"] - stats["positives"],
        duplicate_folder=duplicate_folder,
        seed=seed,
        out=str(Path(out).resolve()),
    )
    return stats
