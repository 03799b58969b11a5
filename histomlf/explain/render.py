"""Grad-CAM pictures: a patch beside its heat map overlay, and a captioned panel of several.

Heat maps use a perceptually uniform colour map (`inferno` by default; `jet` is refused), whose
brightness rises steadily with the value, so a reader never sees structure the map lacks.
Overlays are plain RGB arrays (PIL writes them; `mlflow.log_image` takes them as they are);
the panel is a matplotlib `Figure` on the Agg backend, as in `histomlf.evaluation.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

HEATMAP = "inferno"
UNIFORM_MAPS = frozenset({"inferno", "magma", "viridis", "cividis", "plasma"})
OVERLAY_ALPHA = 0.5
SCALE = 4
GAP = 4


def _colormap(name: str):
    if name not in UNIFORM_MAPS:
        raise ValueError(
            f"colour map must be perceptually uniform ({', '.join(sorted(UNIFORM_MAPS))})"
        )
    return colormaps[name]


def _upscale(image: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def overlay(
    patch: np.ndarray, cam: np.ndarray, *, cmap: str = HEATMAP, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """The patch [50, 50, 3] uint8 blended with its map [50, 50] in [0, 1], as uint8 RGB.

    The map's opacity grows with its value, so cells without evidence show the bare tissue.
    """
    patch = np.asarray(patch, np.float32)
    cam = np.clip(np.nan_to_num(np.asarray(cam, np.float32)), 0.0, 1.0)
    if patch.shape[:2] != cam.shape:
        raise ValueError(f"patch {patch.shape[:2]} and map {cam.shape} differ in size")
    colour = _colormap(cmap)(cam)[..., :3] * 255.0
    weight = (alpha * (0.3 + 0.7 * cam))[..., None]
    return np.round(patch * (1 - weight) + colour * weight).astype(np.uint8)


def overlay_strip(
    patch: np.ndarray, cam: np.ndarray, *, cmap: str = HEATMAP, scale: int = SCALE
) -> np.ndarray:
    """Patch | overlay | map alone, side by side, each upscaled `scale`x (nearest), uint8 RGB."""
    heat = np.round(_colormap(cmap)(np.clip(cam, 0, 1))[..., :3] * 255).astype(np.uint8)
    tiles = [np.asarray(patch, np.uint8), overlay(patch, cam, cmap=cmap), heat]
    size = tiles[0].shape[0] * scale
    strip = np.full((size, len(tiles) * size + (len(tiles) - 1) * GAP, 3), 255, np.uint8)
    for index, tile in enumerate(tiles):
        left = index * (size + GAP)
        strip[:, left : left + size] = _upscale(tile, scale)
    return strip


def save_overlay(
    path: str | Path, patch: np.ndarray, cam: np.ndarray, *, cmap: str = HEATMAP
) -> Path:
    """Write `overlay_strip(patch, cam)` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_strip(patch, cam, cmap=cmap)).save(path, format="PNG")
    return path


def gradcam_panel(
    patches: np.ndarray,
    maps: np.ndarray,
    captions: Sequence[str],
    *,
    columns: int = 4,
    cmap: str = HEATMAP,
    title: str = "",
) -> Figure:
    """A grid of overlays with one caption each and a shared 0-1 colour bar."""
    count = len(patches)
    if not count or count != len(maps) or count != len(captions):
        raise ValueError(
            f"need as many patches, maps and captions (got {count}, {len(maps)}, {len(captions)})"
        )
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    figure = Figure(figsize=(2.3 * columns + 0.8, 2.5 * rows + (0.4 if title else 0)))
    figure.set_layout_engine("constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.ravel():
        axes.set_axis_off()
    for axes, patch, cam, caption in zip(grid.ravel(), patches, maps, captions, strict=False):
        axes.imshow(overlay(patch, cam, cmap=cmap), interpolation="nearest")
        axes.set_title(caption, fontsize=8)
    mappable = matplotlib.cm.ScalarMappable(Normalize(0, 1), _colormap(cmap))
    figure.colorbar(mappable, ax=grid, shrink=0.8, label="Grad-CAM (scaled to each patch's max)")
    if title:
        figure.suptitle(title)
    return figure
