"""One slide end to end: `predict_slide(path, model, options, out_dir)` writes every output.

A plain function of (slide path, model, options, output folder) with no MLflow in it, so the
CLI's recipe, the web page and a Spark task (which must open the slide itself: OpenSlide
handles do not pickle) all call the same thing; `tracking/` builds the `SlideModel` from a
logged model and logs the result.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histomlf.schema import SlideArtifact
from histomlf.slides import outputs
from histomlf.slides.grid import stride_px, tile_grid
from histomlf.slides.reader import (
    SlideError,
    open_slide,
    plan_read,
    read_thumbnail,
    sha256_of,
    slide_mpp,
    thumbnail_downsample,
)
from histomlf.slides.scoring import Progress, ScoreFn, score_tiles
from histomlf.slides.tissue import tile_shares, tissue_mask

DEFAULT_MIN_TISSUE = 0.5
CAVEAT = (
    "The map's granularity is one tile ({tile_um:.0f} µm), not cells: areas and foci are "
    "counted in whole tiles; a research tool, not a diagnosis."
)


@dataclass(frozen=True)
class SlideModel:
    """What scoring a slide needs from a model: its scorer, threshold and scale, and its name.

    `score` maps a `[N, patch_px, patch_px, 3]` uint8 batch to N probabilities; `batch_size` is
    the most patches per call.
    """

    score: ScoreFn
    threshold: float
    patch_px: int
    patch_mpp: float
    uri: str = ""
    name: str = ""
    version: str = ""
    batch_size: int = 256


@dataclass(frozen=True)
class SlideOptions:
    """How a slide is read and filtered (`min_tissue` 0 scores every tile, glass included)."""

    slide_mpp: float | None = None
    min_tissue: float = DEFAULT_MIN_TISSUE
    stride: int | None = None
    ink_filter: bool = True
    tissue_threshold: float | None = None
    workers: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_tissue <= 1.0:
            raise SlideError(f"--min-tissue must be in [0, 1], got {self.min_tissue}")
        if self.workers < 1:
            raise SlideError(f"workers must be >= 1, got {self.workers}")

    def as_params(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SlideResult:
    """A scored slide: its summary (also `summary.json`) and where each output was written."""

    summary: dict[str, Any]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def predict_slide(
    path: str | Path,
    model: SlideModel,
    options: SlideOptions,
    out_dir: str | Path,
    *,
    progress: Progress | None = None,
    sha256: str | None = None,
) -> SlideResult:
    """Score the slide at `path` at the model's scale and write every output into `out_dir`.

    `progress(done, total)` is called as tiles are scored; `sha256` is the file's digest if the
    caller has it already (hashing a multi-GB slide twice costs seconds). Raises `SlideError`
    (one line) for a slide that cannot be opened, read, or scored at this scale.
    """
    started = time.perf_counter()
    path, out_dir = Path(path), Path(out_dir)
    slide = open_slide(path)
    try:
        result = _predict_open_slide(path, slide, model, options, out_dir, progress)
        result.summary["slide_sha256"] = sha256 or sha256_of(path)
    except SlideError:
        raise
    except Exception as error:  # OpenSlide raises its own errors on a corrupt tile mid-slide
        if type(error).__module__.startswith("openslide"):
            raise SlideError(f"{path.name}: OpenSlide cannot read it ({_line(error)})") from None
        raise
    finally:
        slide.close()
    result.summary["seconds"] = round(time.perf_counter() - started, 3)
    outputs.write_json(result.summary, result.files["summary"])
    return result


def _predict_open_slide(
    path: Path,
    slide,
    model: SlideModel,
    options: SlideOptions,
    out_dir: Path,
    progress: Progress | None,
) -> SlideResult:
    width, height = slide.dimensions
    mpp, mpp_source = slide_mpp(slide, options.slide_mpp)
    plan = plan_read(mpp, tuple(slide.level_downsamples), model.patch_px, model.patch_mpp)
    grid = tile_grid(
        width, height, plan.tile_px, stride_px(options.stride, model.patch_px, plan.tile_px)
    )
    # A mask pixel needs no more detail than half a model pixel (a tile is 25+ mask px).
    thumb = read_thumbnail(
        slide, mpp, thumbnail_downsample(width, height, mpp, model.patch_mpp / 2)
    )
    mask = tissue_mask(
        thumb.rgb, thumb.mpp, threshold=options.tissue_threshold, ink=options.ink_filter
    )
    share = tile_shares(mask.tissue, grid.xs, grid.ys, grid.size_px, thumb.downsample)
    stained_share = tile_shares(mask.stained, grid.xs, grid.ys, grid.size_px, thumb.downsample)
    keep = share >= options.min_tissue
    dropped_ink = int(((stained_share >= options.min_tissue) & ~keep).sum())
    xs, ys = grid.xs[keep], grid.ys[keep]

    probability = score_tiles(
        path, plan, xs, ys, model.score,
        batch_size=model.batch_size, workers=options.workers, progress=progress,
    )  # fmt: skip
    tiles = outputs.tiles_frame(
        xs, ys, grid.widths(width)[keep], grid.heights(height)[keep], probability,
        model.threshold, share[keep],
    )  # fmt: skip

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "heatmap": out_dir / SlideArtifact.HEATMAP,
        "tissue": out_dir / SlideArtifact.TISSUE,
        "tiles_csv": out_dir / SlideArtifact.TILES_CSV,
        "tiles_geojson": out_dir / SlideArtifact.TILES_GEOJSON,
        "idc_regions": out_dir / SlideArtifact.IDC_REGIONS_GEOJSON,
        "summary": out_dir / SlideArtifact.SUMMARY,
    }
    tiles.to_csv(files["tiles_csv"], index=False)
    outputs.write_json(outputs.tiles_geojson(tiles), files["tiles_geojson"])
    regions, foci = outputs.idc_regions(tiles, width, height, mpp)
    outputs.write_json(regions, files["idc_regions"])

    heat = outputs.heat_raster(tiles, mask.tissue.shape, thumb.downsample)
    tissue_px = int(mask.tissue.sum())
    idc_px = int((mask.tissue & (np.nan_to_num(heat, nan=-1.0) >= model.threshold)).sum())
    title = f"{path.name} · {model.name or model.uri} v{model.version or '?'}"
    outputs.write_heatmap(
        files["heatmap"], thumb.rgb, heat, mask.tissue,
        mpp=thumb.mpp, threshold=model.threshold, title=title,
    )  # fmt: skip
    outputs.write_tissue_png(
        files["tissue"], thumb.rgb, mask.tissue, mask.ink, mpp=thumb.mpp, title=title
    )

    tissue_mm2 = outputs.area_mm2(tissue_px, thumb.mpp)
    idc_mm2 = outputs.area_mm2(idc_px, thumb.mpp)
    largest = foci[0] if foci else (0.0, 0.0, float("nan"))
    tile_um = model.patch_px * model.patch_mpp
    summary = {
        "slide": path.name,
        "slide_sha256": "",  # filled in by predict_slide
        "width_px": width,
        "height_px": height,
        "vendor": slide.properties.get("openslide.vendor", ""),
        "slide_mpp": mpp,
        "slide_mpp_source": mpp_source,
        "level": plan.level,
        "level_downsample": plan.level_downsample,
        "read_downsample": plan.factor,
        "tile_px_level0": plan.tile_px,
        "stride_px_level0": grid.stride_px,
        "model_uri": model.uri,
        "model_name": model.name,
        "model_version": model.version,
        "threshold": model.threshold,
        "patch_px": model.patch_px,
        "patch_mpp": model.patch_mpp,
        "min_tissue": options.min_tissue,
        "ink_filter": options.ink_filter,
        "tissue_threshold": mask.threshold,
        "tiles_total": len(grid),
        "tiles": int(len(tiles)),
        "tiles_dropped_tissue": int(len(grid) - len(tiles) - dropped_ink),
        "tiles_dropped_ink": dropped_ink,
        "tiles_positive": int(tiles["label"].sum()),
        "tissue_area_mm2": round(tissue_mm2, 6),
        "idc_area_mm2": round(idc_mm2, 6),
        "idc_share": round(idc_mm2 / tissue_mm2, 6) if tissue_mm2 > 0 else 0.0,
        "idc_foci": len(foci),
        "largest_focus_area_mm2": round(largest[0] / 1e6, 6),
        "largest_focus_extent_mm": round(largest[1] / 1e3, 4),
        "mask_mpp": thumb.mpp,
        "caveat": CAVEAT.format(tile_um=tile_um),
    }
    return SlideResult(summary, out_dir, files)


def _line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


