"""Patient maps: one patient's patches back on their slide, with the truth and the model on them.

Every Kaggle patch name holds its top-left corner on the slide (x, y, 1-based, on a 50-px grid),
so a patient's patches fill a grid of cells: column `(x - 1) // 50`, row `(y - 1) // 50`. The
grid starts at the patient's first occupied row and column (slides start far from the origin).
A cell without a patch is masked, never "probability 0": the archive only kept tissue, and
nothing was predicted there. The tissue is stitched from the patch files, each at its cell's
top-left corner, so a slide-border crop (fewer rows or columns) stays where the slide had it.

`render_patient_map` draws four panels on shared axes in slide pixels, the way pathology viewers
(slideflow, WSInfer) show a model: (a) the tissue; (b) the tissue with the pathologist's IDC
region outlined along cell edges; (c) P(IDC) over the tissue on a diverging map centred on the
decision threshold; (d) true/false positive/negative cells at that threshold. `save_patient_map`
writes the PNG and an `.npz` of the grids beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

from histomlf.errors import UserError

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import ListedColormap, TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from histomlf.data.patches import PAD_VALUE, PATCH_SIZE, to_rgb_array  # noqa: E402

REQUIRED_COLUMNS = ("patient_id", "x", "y", "probability", "label")
PROBABILITY_MAP = "RdBu_r"
OUTLINE_COLOUR = "#00e5ff"
# Outcome codes of the `outcome` grid, and how panel (d) paints them (Okabe-Ito hues).
OUTCOMES = ("TN", "FP", "FN", "TP")
OUTCOME_COLOURS = ("#d9d9d9", "#e69f00", "#0072b2", "#d55e00")
# The tissue is shown at most this many pixels across (block-averaged from 50 px per cell).
TISSUE_PIXELS = 1000


class PatientMapError(UserError, ValueError):
    """The predictions cannot make a patient map (missing columns, no rows, bad coordinates)."""


@dataclass
class PatientGrid:
    """One patient's cells: masked grids [rows, cols] starting at (`row0`, `col0`) on the slide.

    `probability` and `label` are masked where no patch lies; `outcome` is -1 there, else the
    index in `OUTCOMES` at `threshold`. `index` holds each cell's row in the source frame.
    """

    patient_id: str
    row0: int
    col0: int
    probability: np.ma.MaskedArray
    label: np.ma.MaskedArray
    outcome: np.ndarray
    index: np.ndarray
    threshold: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.outcome.shape

    @property
    def mask(self) -> np.ndarray:
        """True where no patch lies."""
        return self.outcome < 0

    def extent(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) in slide pixels, for `imshow(extent=...)` with y down."""
        rows, cols = self.shape
        left, top = self.col0 * PATCH_SIZE, self.row0 * PATCH_SIZE
        return (left, left + cols * PATCH_SIZE, top + rows * PATCH_SIZE, top)

    def arrays(self) -> dict[str, np.ndarray]:
        """The grids as plain arrays for `np.savez` (probability NaN and label -1 where masked)."""
        return {
            "probability": self.probability.filled(np.nan).astype(np.float32),
            "label": self.label.filled(-1).astype(np.int8),
            "outcome": self.outcome.astype(np.int8),
            "mask": self.mask,
            "origin_row_col": np.array([self.row0, self.col0], np.int64),
            "cell_size": np.array(PATCH_SIZE, np.int64),
            "threshold": np.array(self.threshold, np.float64),
            "outcome_names": np.array(OUTCOMES),
        }


def _check(frame: pd.DataFrame, columns: tuple[str, ...] = REQUIRED_COLUMNS) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise PatientMapError(f"predictions lack column(s) {', '.join(missing)}")
    if frame.empty:
        raise PatientMapError("no predictions for this patient")


def cell_of(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) on the slide grid of 1-based top-left corners `x`, `y`."""
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    if (x < 1).any() or (y < 1).any():
        raise PatientMapError("patch coordinates are 1-based: x and y must be >= 1")
    return (y - 1) // PATCH_SIZE, (x - 1) // PATCH_SIZE


def patient_grid(frame: pd.DataFrame, threshold: float) -> PatientGrid:
    """The masked grids of one patient's rows (`patient_id, x, y, probability, label`)."""
    _check(frame)
    ids = frame["patient_id"].astype(str).unique()
    if len(ids) != 1:
        raise PatientMapError(f"one patient at a time, got {len(ids)}: {', '.join(ids[:5])}")
    if not 0.0 <= threshold <= 1.0:
        raise PatientMapError(f"threshold must be in [0, 1], got {threshold}")
    rows, cols = cell_of(frame["x"], frame["y"])
    row0, col0 = int(rows.min()), int(cols.min())
    rows, cols = rows - row0, cols - col0
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    if len(set(zip(rows.tolist(), cols.tolist(), strict=True))) != len(frame):
        raise PatientMapError(f"patient {ids[0]} has two patches in the same cell")
    probability = frame["probability"].to_numpy(np.float64)
    label = frame["label"].to_numpy(np.int64)
    index = np.full(shape, -1, np.int64)
    index[rows, cols] = np.arange(len(frame))
    outcome = np.full(shape, -1, np.int8)
    outcome[rows, cols] = 2 * label + (probability >= threshold)
    mask = index < 0
    prob_grid = np.zeros(shape, np.float64)
    prob_grid[rows, cols] = probability
    label_grid = np.zeros(shape, np.int64)
    label_grid[rows, cols] = label
    return PatientGrid(
        patient_id=str(ids[0]),
        row0=row0,
        col0=col0,
        probability=np.ma.MaskedArray(prob_grid, mask),
        label=np.ma.MaskedArray(label_grid, mask),
        outcome=outcome,
        index=index,
        threshold=float(threshold),
    )


def stitch_tissue(
    frame: pd.DataFrame, grid: PatientGrid, *, background: int = PAD_VALUE
) -> np.ndarray:
    """The patient's tissue [rows*50, cols*50, 3] uint8 from the patch files in `path`.

    Each file's pixels go to its cell's top-left corner as they are (border crops keep their
    size); the rest stays `background` (white, like glass and like the pipeline's padding).
    """
    _check(frame, ("path", "x", "y"))
    rows, cols = grid.shape
    canvas = np.full((rows * PATCH_SIZE, cols * PATCH_SIZE, 3), background, np.uint8)
    cell_rows, cell_cols = cell_of(frame["x"], frame["y"])
    for path, row, col in zip(
        frame["path"], cell_rows - grid.row0, cell_cols - grid.col0, strict=True
    ):
        with Image.open(path) as image:
            pixels = to_rgb_array(image)[:PATCH_SIZE, :PATCH_SIZE]
        top, left = row * PATCH_SIZE, col * PATCH_SIZE
        canvas[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
    return canvas


def shrink(tissue: np.ndarray, max_pixels: int = TISSUE_PIXELS) -> np.ndarray:
    """Block-average `tissue` by the smallest divisor of 50 that fits it in `max_pixels`."""
    longest = max(tissue.shape[:2])
    factor = next((f for f in (1, 2, 5, 10, 25, 50) if longest / f <= max_pixels), PATCH_SIZE)
    if factor == 1:
        return tissue
    height, width = tissue.shape[0] // factor, tissue.shape[1] // factor
    blocks = tissue[: height * factor, : width * factor].reshape(height, factor, width, factor, 3)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def outline_segments(positive: np.ndarray, grid: PatientGrid) -> np.ndarray:
    """Cell edges between positive and other cells, [S, 2, 2] in slide pixels (x, y)."""
    padded = np.pad(positive.astype(bool), 1)
    left, top = grid.col0 * PATCH_SIZE, grid.row0 * PATCH_SIZE
    # Horizontal edges: between rows r-1 and r of the unpadded grid.
    r, c = np.nonzero(padded[1:, 1:-1] != padded[:-1, 1:-1])
    y = top + r * PATCH_SIZE
    horizontal = np.stack(
        [np.stack([left + c * PATCH_SIZE, y], -1), np.stack([left + (c + 1) * PATCH_SIZE, y], -1)],
        axis=1,
    )
    r, c = np.nonzero(padded[1:-1, 1:] != padded[1:-1, :-1])
    x = left + c * PATCH_SIZE
    vertical = np.stack(
        [np.stack([x, top + r * PATCH_SIZE], -1), np.stack([x, top + (r + 1) * PATCH_SIZE], -1)],
        axis=1,
    )
    return np.concatenate([horizontal, vertical]).astype(np.float64)


def patient_summary(frame: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """Patches, true and predicted IDC share, error rate and ROC-AUC (None with one class)."""
    _check(frame)
    label = frame["label"].to_numpy(np.int64)
    probability = frame["probability"].to_numpy(np.float64)
    predicted = probability >= threshold
    both = 0 < label.sum() < len(label)
    return {
        "patient_id": str(frame["patient_id"].iloc[0]),
        "patches": int(len(frame)),
        "true_idc_share": float(label.mean()),
        "predicted_idc_share": float(predicted.mean()),
        "error_rate": float((predicted != label).mean()),
        "roc_auc": float(roc_auc_score(label, probability)) if both else None,
    }


def title_line(summary: dict[str, Any]) -> str:
    auc = summary["roc_auc"]
    return (
        f"patient {summary['patient_id']}: {summary['patches']:,} patches, "
        f"IDC {summary['true_idc_share']:.1%} true / {summary['predicted_idc_share']:.1%} "
        f"predicted, ROC-AUC {'n/a (one class)' if auc is None else f'{auc:.3f}'}"
    )


def render_patient_map(
    frame: pd.DataFrame, threshold: float, *, tissue: np.ndarray | None = None
) -> tuple[Figure, PatientGrid]:
    """The four-panel figure of one patient's rows, and its grid (see the module docstring).

    `tissue` defaults to `stitch_tissue(frame, grid)` (needs the `path` column).
    """
    grid = patient_grid(frame, threshold)
    if tissue is None:
        tissue = stitch_tissue(frame, grid)
    summary = patient_summary(frame, threshold)
    shown = shrink(tissue)
    extent = grid.extent()
    rows, cols = grid.shape
    aspect = rows / cols
    width = 11.0
    figure = Figure(figsize=(width, min(16.0, max(4.0, width * aspect * 0.95 + 1.2))))
    figure.set_layout_engine("constrained")
    axes = figure.subplots(2, 2, sharex=True, sharey=True).ravel()
    for ax in axes:
        ax.imshow(shown, extent=extent, interpolation="nearest")
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    axes[0].set_title("(a) tissue", fontsize=9)

    segments = outline_segments(grid.label.filled(0) == 1, grid)
    axes[1].add_collection(LineCollection(segments, colors=OUTLINE_COLOUR, linewidths=1.2))
    axes[1].set_title("(b) ground-truth IDC outlined", fontsize=9)

    norm = TwoSlopeNorm(vmin=0.0, vcenter=min(max(threshold, 1e-6), 1 - 1e-6), vmax=1.0)
    image = axes[2].imshow(
        grid.probability,
        cmap=PROBABILITY_MAP,
        norm=norm,
        extent=extent,
        interpolation="nearest",
        alpha=0.75,
    )
    # One bar beside the right column keeps the four panels the same size.
    bar = figure.colorbar(image, ax=axes[[1, 3]], shrink=0.6, pad=0.02)
    bar.set_ticks(sorted({0.0, round(threshold, 3), 1.0}))
    bar.set_label(f"P(IDC), centred on threshold {threshold:.3f}", fontsize=8)
    axes[2].set_title("(c) P(IDC)", fontsize=9)

    codes = np.ma.MaskedArray(grid.outcome, grid.mask)
    axes[3].imshow(
        codes,
        cmap=ListedColormap(OUTCOME_COLOURS),
        vmin=-0.5,
        vmax=3.5,
        extent=extent,
        interpolation="nearest",
        alpha=0.85,
    )
    counts = np.bincount(grid.outcome[~grid.mask], minlength=4)
    handles = [
        Patch(color=colour, label=f"{name} {count}")
        for name, colour, count in zip(OUTCOMES, OUTCOME_COLOURS, counts, strict=True)
    ]
    axes[3].legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.8)
    axes[3].set_title(f"(d) outcome at threshold {threshold:.3f}", fontsize=9)
    axes[0].set_xlim(extent[0], extent[1])
    axes[0].set_ylim(extent[2], extent[3])
    figure.suptitle(title_line(summary), fontsize=10)
    figure.supxlabel("slide x (px)", fontsize=8)
    figure.supylabel("slide y (px)", fontsize=8)
    return figure, grid


def save_patient_map(
    frame: pd.DataFrame, threshold: float, png: str | Path, *, dpi: int = 100
) -> dict[str, Any]:
    """Write `<png>` and the grids as `<png>.with_suffix('.npz')`; returns the patient summary."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    figure, grid = render_patient_map(frame, threshold)
    figure.savefig(png, dpi=dpi)
    np.savez_compressed(png.with_suffix(".npz"), **grid.arrays())
    return patient_summary(frame, threshold)
