"""Opening a slide with OpenSlide, its µm/px, and the pyramid level a model's scale is read from.

A model scores patches of `patch_px` pixels at `patch_mpp` µm/px (50 px at about 4 µm/px for
the Kaggle IDC layout). On a slide of `slide_mpp` µm/px that patch covers
`patch_px * patch_mpp / slide_mpp` level-0 pixels (WSInfer's rule). It is read from the
coarsest level that is still at least as fine as the model (never upsampled) and downsampled
with area averaging. A slide coarser than the model, or one whose µm/px is unknown, is refused
in one line: never a silent guess.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histomlf.data.patches import to_rgb_array
from histomlf.errors import UserError

# Levels within this relative tolerance of the model's µm/px count as "at the model's scale"
# (scanners write 0.2527 for 0.25; OpenSlide computes downsamples like 4.016 for 4).
MPP_TOLERANCE = 0.02
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
    ".dcm",
)  # fmt: skip
_UNIT_UM = {"centimeter": 1e4, "inch": 25400.0, "millimeter": 1e3, "micrometer": 1.0}


class SlideError(UserError, ValueError):
    """A slide that cannot be scored as asked; the message is one line saying why and what to do
    (a `UserError`: the CLI shows it as one line, not a traceback)."""


def open_slide(path: str | Path):
    """An `openslide.OpenSlide` for `path`, or `SlideError` naming the file and the reason."""
    import openslide

    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path.name}: no such slide file")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(f"{path.name}: not a slide format OpenSlide reads") from None
    except openslide.OpenSlideError as error:
        raise SlideError(f"{path.name}: OpenSlide cannot open it ({_one_line(error)})") from None


def slide_mpp(slide, override: float | None = None) -> tuple[float, str]:
    """The slide's level-0 µm/px and where it came from (`override`, `openslide` or `tiff`).

    OpenSlide's `openslide.mpp-x/y` first (it converts TIFF resolution tags for generic TIFFs),
    then the raw `tiff.XResolution` + `tiff.ResolutionUnit`. Non-square pixels are refused.
    """
    if override is not None:
        if not (math.isfinite(override) and override > 0):
            raise SlideError(f"--slide-mpp must be a positive number of µm/px, got {override}")
        return float(override), "override"
    props = slide.properties
    x, y = props.get("openslide.mpp-x"), props.get("openslide.mpp-y")
    source = "openslide"
    if not x or not y:
        x, y, source = _tiff_mpp(props, "X"), _tiff_mpp(props, "Y"), "tiff"
    try:
        mpp_x, mpp_y = float(x), float(y)
    except (TypeError, ValueError):
        mpp_x = mpp_y = math.nan
    if not (math.isfinite(mpp_x) and math.isfinite(mpp_y) and mpp_x > 0 and mpp_y > 0):
        raise SlideError(
            "the slide's metadata gives no µm/px (no openslide.mpp-x/y, no TIFF resolution); "
            "pass --slide-mpp with the scanner's µm/px"
        )
    if abs(mpp_x - mpp_y) > MPP_TOLERANCE * max(mpp_x, mpp_y):
        raise SlideError(f"non-square pixels ({mpp_x} x {mpp_y} µm/px) are not supported")
    return (mpp_x + mpp_y) / 2, source


def _tiff_mpp(props, axis: str) -> float | None:
    resolution = props.get(f"tiff.{axis}Resolution")
    unit = _UNIT_UM.get(str(props.get("tiff.ResolutionUnit", "")).lower())
    try:
        value = float(resolution)
    except (TypeError, ValueError):
        return None
    return unit / value if unit and value > 0 else None


@dataclass(frozen=True)
class ReadPlan:
    """How a model's patch is read from a slide.

    `tile_px` is the patch's size in level-0 pixels (float: 400.8 for 4 µm/px on 0.499);
    `level` the pyramid level read, `level_downsample` its downsample from level 0,
    `region_px` the square read at that level and `factor` = `region_px / patch_px` >= 1, the
    area-averaging downsample applied after the read.
    """

    slide_mpp: float
    patch_px: int
    patch_mpp: float
    level: int
    level_downsample: float
    tile_px: float
    region_px: int

    @property
    def factor(self) -> float:
        return self.region_px / self.patch_px

    @property
    def level_mpp(self) -> float:
        return self.slide_mpp * self.level_downsample


def plan_read(
    slide_mpp: float, level_downsamples: tuple[float, ...], patch_px: int, patch_mpp: float
) -> ReadPlan:
    """The coarsest level whose µm/px is <= the model's (within `MPP_TOLERANCE`); refuses a slide
    coarser than the model."""
    limit = patch_mpp * (1 + MPP_TOLERANCE)
    if slide_mpp > limit:
        raise SlideError(
            f"the slide is coarser ({slide_mpp:.4g} µm/px) than the model's {patch_mpp:g} µm/px; "
            "upsampling would invent detail the model never saw"
        )
    usable = [i for i, ds in enumerate(level_downsamples) if slide_mpp * ds <= limit]
    level = max(usable, key=lambda i: level_downsamples[i])
    downsample = float(level_downsamples[level])
    tile_px = patch_px * patch_mpp / slide_mpp
    region_px = max(patch_px, round(tile_px / downsample))
    return ReadPlan(slide_mpp, patch_px, patch_mpp, level, downsample, tile_px, region_px)


def read_patch(slide, plan: ReadPlan, x: int, y: int) -> np.ndarray:
    """The model's `patch_px`² RGB uint8 patch whose level-0 top-left corner is (x, y).

    Beyond the slide's edge OpenSlide returns transparent pixels; they are composited onto
    white exactly as `data/patches.py` pads border patches. The region is downsampled by area
    averaging (PIL's box filter; a factor of 1 leaves the pixels untouched).
    """
    region = slide.read_region((int(x), int(y)), plan.level, (plan.region_px, plan.region_px))
    if plan.region_px != plan.patch_px:
        # Premultiply-free: composite first, then average, so glass stays white.
        region = Image.fromarray(to_rgb_array(region))
        region = region.resize((plan.patch_px, plan.patch_px), Image.Resampling.BOX)
    return to_rgb_array(region)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """The slide file's SHA-256: slides are identified by content, not by file name."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def find_slides(source: str | Path) -> list[Path]:
    """One slide file, or the slide files (by suffix) directly inside a folder, sorted."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise SlideError(f"{source}: no such slide file or folder")
    found = sorted(
        p for p in source.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES
    )
    if not found:
        raise SlideError(f"{source}: no slide files ({', '.join(SLIDE_SUFFIXES)}) in this folder")
    return found


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# A thumbnail's longest side: enough to resolve a 200 µm tile on a 20 mm slide in ~20 px.
THUMBNAIL_MAX_PX = 2048
# A pyramid level up to this many times coarser than asked is used as the thumbnail as is.
THUMBNAIL_SLACK = 3.0
# Read a thumbnail in regions of at most this many pixels a side at the level read (16 MB RGBA).
_THUMB_REGION_PX = 2048


@dataclass(frozen=True)
class Thumbnail:
    """An RGB thumbnail of the whole slide; `downsample` level-0 px per thumbnail px."""

    rgb: np.ndarray
    downsample: float
    mpp: float


def thumbnail_downsample(width: int, height: int, slide_mpp: float, finest_mpp: float) -> float:
    """Level-0 px per thumbnail px: the longest side within `THUMBNAIL_MAX_PX`, and no finer
    than `finest_mpp` (a tissue mask needs no cell detail)."""
    return max(1.0, max(width, height) / THUMBNAIL_MAX_PX, finest_mpp / slide_mpp)


def read_thumbnail(slide, slide_mpp: float, downsample: float) -> Thumbnail:
    """The slide downsampled by about `downsample`, read region by region (memory bounded).

    `OpenSlide.get_thumbnail` reads its whole best level into one image (6 GB for a 40k² slide
    without a pyramid); here each region read is at most `_THUMB_REGION_PX`² at its level. The
    read level is the coarsest not coarser than `downsample`, then an integer box downsample
    `k` (rounded up: a thumbnail a little coarser, never larger), so regions tile it exactly.
    """
    level = slide.get_best_level_for_downsample(downsample)
    coarser = [i for i, ds in enumerate(slide.level_downsamples)
               if downsample <= ds <= THUMBNAIL_SLACK * downsample]
    if coarser:  # a pyramid level a little coarser beats reading a finer level whole
        level = min(coarser, key=lambda i: slide.level_downsamples[i])
    level_ds = float(slide.level_downsamples[level])
    k = max(1, math.ceil(downsample / level_ds - 1e-6))
    level_w, level_h = slide.level_dimensions[level]
    out_w, out_h = max(1, level_w // k), max(1, level_h // k)
    out = np.empty((out_h, out_w, 3), np.uint8)
    step = max(1, _THUMB_REGION_PX // k)  # thumbnail px per region side
    for top in range(0, out_h, step):
        for left in range(0, out_w, step):
            w, h = min(step, out_w - left), min(step, out_h - top)
            origin = (round(left * k * level_ds), round(top * k * level_ds))
            region = to_rgb_array(slide.read_region(origin, level, (w * k, h * k)))
            if k > 1:  # PIL's box reduce: the mean of each k x k block, in C
                region = np.asarray(Image.fromarray(region).reduce(k))
            out[top : top + h, left : left + w] = region
    return Thumbnail(out, level_ds * k, slide_mpp * level_ds * k)
