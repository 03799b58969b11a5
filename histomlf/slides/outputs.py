"""A scored slide's outputs: heatmap and tissue PNGs, the tile table, QuPath GeoJSON, IDC regions.

Coordinates are level-0 pixels everywhere (QuPath's and WSInfer's convention); areas are µm²
in GeoJSON measurements and mm² in the summary. The heatmap shows colour only where there is
tissue and a scored tile: no tissue, no colour (never "probability 0").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histomlf.schema import PROB_COLUMN

IDC_CLASS = "IDC"
IDC_COLOR = (200, 0, 0)
TILE_COLUMNS = ("minx", "miny", "width", "height", PROB_COLUMN, "label", "tissue_share")
_SCALE_STEPS_UM = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


def tiles_frame(
    xs: np.ndarray,
    ys: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
    probability: np.ndarray,
    threshold: float,
    tissue_share: np.ndarray,
) -> pd.DataFrame:
    """One row per scored tile: `minx,miny,width,height` (level-0 px, clipped at the slide's
    edge), P(IDC), its label at the model's threshold and its tissue share."""
    return pd.DataFrame(
        {
            "minx": xs.astype(np.int64),
            "miny": ys.astype(np.int64),
            "width": widths.astype(np.int64),
            "height": heights.astype(np.int64),
            PROB_COLUMN: probability.astype(np.float64),
            "label": (probability >= threshold).astype(np.int64),
            "tissue_share": np.round(tissue_share.astype(np.float64), 4),
        },
        columns=list(TILE_COLUMNS),
    )


def heat_raster(tiles: pd.DataFrame, shape: tuple[int, int], downsample: float) -> np.ndarray:
    """P(IDC) per thumbnail pixel, averaged over the tiles covering it (overlapping strides);
    NaN where no tile was scored."""
    total = np.zeros(shape, np.float64)
    count = np.zeros(shape, np.int32)
    x0 = np.round(tiles["minx"].to_numpy() / downsample).astype(np.int64)
    y0 = np.round(tiles["miny"].to_numpy() / downsample).astype(np.int64)
    x1 = np.round((tiles["minx"] + tiles["width"]).to_numpy() / downsample).astype(np.int64)
    y1 = np.round((tiles["miny"] + tiles["height"]).to_numpy() / downsample).astype(np.int64)
    for a, b, c, d, p in zip(y0, y1, x0, x1, tiles[PROB_COLUMN].to_numpy(), strict=True):
        total[a:b, c:d] += p
        count[a:b, c:d] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def tile_polygon(minx: float, miny: float, width: float, height: float) -> list[list[list[float]]]:
    x1, y1 = minx + width, miny + height
    return [[[minx, miny], [x1, miny], [x1, y1], [minx, y1], [minx, miny]]]


def tiles_geojson(tiles: pd.DataFrame) -> dict[str, Any]:
    """WSInfer's QuPath shape: a locked `tile` Feature per scored tile with its P(IDC)."""
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": tile_polygon(x, y, w, h)},
            "properties": {
                "objectType": "tile",
                "isLocked": True,
                "measurements": {PROB_COLUMN: float(p)},
            },
        }
        for x, y, w, h, p in tiles[["minx", "miny", "width", "height", PROB_COLUMN]].itertuples(
            index=False, name=None
        )
    ]
    return {"type": "FeatureCollection", "features": features}


def idc_regions(tiles: pd.DataFrame, width: int, height: int, mpp: float):
    """The union of positive tiles as valid polygons inside the slide, with their measurements.

    Returns `(geojson, foci)` where `foci` lists `(area_um2, extent_um, mean_prob)` per polygon,
    largest first.
    """
    import shapely
    from shapely.geometry import box, mapping

    positive = tiles[tiles["label"] == 1]
    bounds = box(0, 0, width, height)
    boxes = shapely.box(
        positive["minx"], positive["miny"],
        positive["minx"] + positive["width"], positive["miny"] + positive["height"],
    )  # fmt: skip
    union = None
    if len(boxes):
        union = shapely.make_valid(shapely.union_all(boxes)).intersection(bounds)
    polygons = [] if union is None or union.is_empty else _polygons(union)
    centres_x = (positive["minx"] + positive["width"] / 2).to_numpy()
    centres_y = (positive["miny"] + positive["height"] / 2).to_numpy()
    probs = positive[PROB_COLUMN].to_numpy()
    features, foci = [], []
    for polygon in sorted(polygons, key=lambda p: -p.area):
        inside = shapely.contains_xy(polygon, centres_x, centres_y)
        mean_prob = float(probs[inside].mean()) if inside.any() else float("nan")
        minx, miny, maxx, maxy = polygon.bounds
        area_um2 = polygon.area * mpp * mpp
        extent_um = max(maxx - minx, maxy - miny) * mpp
        foci.append((area_um2, extent_um, mean_prob))
        features.append(
            {
                "type": "Feature",
                "geometry": mapping(polygon),
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": IDC_CLASS, "color": list(IDC_COLOR)},
                    "measurements": {
                        "area_um2": round(area_um2, 1),
                        f"mean_{PROB_COLUMN}": round(mean_prob, 6),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}, foci


def _polygons(geometry) -> list:
    if geometry.geom_type == "Polygon":
        return [geometry]
    parts = getattr(geometry, "geoms", [])
    return [p for part in parts for p in _polygons(part) if not p.is_empty]


def write_json(payload: Any, path: Path) -> Path:
    path.write_text(json.dumps(payload, indent=1, default=_json_default, allow_nan=False))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def scale_bar_um(width_um: float) -> float:
    """A round scale-bar length near a fifth of the image's width."""
    fitting = [step for step in _SCALE_STEPS_UM if step <= width_um / 4]
    return float(fitting[-1] if fitting else _SCALE_STEPS_UM[0])


def _um_label(um: float) -> str:
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


# Pictures are drawn from at most this many pixels a side (matplotlib resamples every pixel).
DISPLAY_MAX_PX = 1000


def display_step(shape: tuple[int, ...]) -> int:
    """The stride that brings a thumbnail within `DISPLAY_MAX_PX` for drawing."""
    return max(1, math.ceil(max(shape[:2]) / DISPLAY_MAX_PX))


def _figure(thumb: np.ndarray):
    from matplotlib.figure import Figure

    h, w = thumb.shape[:2]
    scale = 9.0 / max(w, h)
    figure = Figure(figsize=(max(3.0, w * scale) + 1.6, max(3.0, h * scale) + 0.6), dpi=110)
    axes = figure.add_axes((0.02, 0.04, 0.78, 0.9))
    axes.imshow(thumb, interpolation="nearest")
    axes.set_axis_off()
    return figure, axes


def _scale_bar(axes, thumb_width: int, mpp: float) -> None:
    from matplotlib.patches import Rectangle

    length_um = scale_bar_um(thumb_width * mpp)
    length_px = length_um / mpp
    h = axes.get_ylim()[0]
    x, y = thumb_width * 0.03, h * 0.96
    axes.add_patch(Rectangle((x, y - h * 0.012), length_px, h * 0.012, color="black"))
    axes.text(x, y - h * 0.02, _um_label(length_um), fontsize=8, va="bottom", color="black",
              bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})


def write_heatmap(
    path: Path,
    thumb: np.ndarray,
    heat: np.ndarray,
    tissue: np.ndarray,
    *,
    mpp: float,
    threshold: float,
    title: str,
) -> Path:
    """P(IDC) in inferno over the thumbnail where there is tissue and a scored tile, with its
    legend (threshold marked) and a scale bar."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    step = display_step(thumb.shape)
    thumb, heat, tissue = thumb[::step, ::step], heat[::step, ::step], tissue[::step, ::step]
    mpp *= step
    figure, axes = _figure(thumb)
    shown = np.ma.masked_where(~(tissue & np.isfinite(heat)), heat)
    axes.imshow(shown, cmap=colormaps["inferno"], vmin=0.0, vmax=1.0, alpha=0.8,
                interpolation="nearest")
    _scale_bar(axes, thumb.shape[1], mpp)
    axes.set_title(title, fontsize=8)
    bar_axes = figure.add_axes((0.84, 0.15, 0.03, 0.7))
    bar = figure.colorbar(ScalarMappable(Normalize(0, 1), colormaps["inferno"]), cax=bar_axes)
    bar.set_label(f"P(IDC); cyan line: threshold {threshold:.2f}; no colour: no tissue",
                  fontsize=7)
    bar.ax.axhline(threshold, color="cyan", linewidth=2)
    figure.savefig(path)
    return path


def write_tissue_png(
    path: Path, thumb: np.ndarray, tissue: np.ndarray, ink: np.ndarray, *, mpp: float, title: str
) -> Path:
    """The tissue mask's outline (green) and ink (blue) over the thumbnail, for QC."""
    step = display_step(thumb.shape)
    thumb, tissue, ink = thumb[::step, ::step], tissue[::step, ::step], ink[::step, ::step]
    mpp *= step
    figure, axes = _figure(thumb)
    for mask, colour in ((tissue, "lime"), (ink, "blue")):
        if mask.any() and not mask.all():
            axes.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2)
    _scale_bar(axes, thumb.shape[1], mpp)
    axes.set_title(title, fontsize=8)
    figure.savefig(path)
    return path


def area_mm2(pixels: int | float, mpp: float) -> float:
    return float(pixels) * mpp * mpp / 1e6


def finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
