"""Pyramidal TIFF slides written tile by tile: Kaggle-layout patches stitched back at their x/y,
and large synthetic slides, for tests and benchmarks.

A Kaggle patch `<pid>_idx5_x<X>_y<Y>_class<C>.png` is the region whose 1-based top-left corner
is (X, Y) on its slide's 50-px grid; stitching puts it at (X-1, Y-1) on a white canvas. The
canvas is kept in memory at its own scale (a patient is a few thousand pixels a side) and every
written pixel is looked up from it, so a slide `scale` times larger (pixel replication) and its
reduced levels are produced one 256² tile at a time, never whole.

OpenSlide reads what is written here as `generic-tiff`, one level per page, with `openslide.mpp`
from the resolution tags, and `read_region` returns the written pixels bit-exact: tiles are
deflate-compressed (JPEG would change pixels), reduced pages are separate pages with
`subfiletype=1` (SubIFDs left OpenSlide with one level).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from histomlf.data.patches import PAD_VALUE, PATCH_SIZE, to_rgb_array

TILE = 256
_NAME = re.compile(r"_x(\d+)_y(\d+)_class(\d)\.png$")


def patient_patches(patient_dir: Path) -> list[tuple[int, int, int, Path]]:
    """`(x, y, label, path)` of every patch of one Kaggle-layout patient folder."""
    found = []
    for path in sorted(Path(patient_dir).glob("[01]/*.png")):
        match = _NAME.search(path.name)
        if match:
            found.append((int(match[1]), int(match[2]), int(match[3]), path))
    if not found:
        raise ValueError(f"{patient_dir}: no Kaggle-layout patches (<0|1>/*_x*_y*_class*.png)")
    return found


def patient_canvas(patient_dir: Path) -> np.ndarray:
    """The patient's patches pasted at (x-1, y-1) on white, at the patches' own scale."""
    patches = patient_patches(patient_dir)
    images = []
    for x, y, _, path in patches:
        with Image.open(path) as image:
            images.append((x - 1, y - 1, to_rgb_array(image)))
    width = max(x + im.shape[1] for x, _, im in images)
    height = max(y + im.shape[0] for _, y, im in images)
    canvas = np.full((height, width, 3), PAD_VALUE, np.uint8)
    for x, y, image in images:
        canvas[y : y + image.shape[0], x : x + image.shape[1]] = image
    return canvas


def write_pyramid(
    out: Path,
    canvas: np.ndarray,
    *,
    mpp: float | None,
    scale: int = 1,
    downsamples: Sequence[int] = (2, 4),
    compression: str = "zlib",
    compression_level: int | None = None,
) -> Path:
    """Write `canvas` enlarged `scale` times (pixel replication) as a tiled pyramidal TIFF.

    Level 0 is `canvas` x `scale` at `mpp` µm/px (None: no resolution tags, a slide whose scale
    is unknown); each of `downsamples` adds a reduced page (nearest pixel) with `subfiletype=1`.
    """
    import tifffile

    height, width = canvas.shape[0] * scale, canvas.shape[1] * scale
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    args = {"compressionargs": {"level": compression_level}} if compression_level else {}
    with tifffile.TiffWriter(out, bigtiff=height * width * 3 > 2**31) as writer:
        for index, downsample in enumerate((1, *downsamples)):
            shape = (-(-height // downsample), -(-width // downsample), 3)
            extra = {}
            if mpp is not None:
                res = 1e4 / (mpp * downsample)
                extra = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            writer.write(
                _tiles(canvas, shape, scale, downsample),
                shape=shape, dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                compression=compression, subfiletype=1 if index else 0, **args, **extra,
            )  # fmt: skip
    return out


def _tiles(canvas: np.ndarray, shape, scale: int, downsample: int) -> Iterator[np.ndarray]:
    """The page's tiles, row-major, each looked up from `canvas` (edges padded white)."""
    rows, cols = shape[0], shape[1]
    src_h, src_w = canvas.shape[:2]
    white = np.full((TILE, TILE, 3), PAD_VALUE, np.uint8)
    for top in range(0, rows, TILE):
        ys = (np.arange(top, top + TILE) * downsample) // scale
        for left in range(0, cols, TILE):
            xs = (np.arange(left, left + TILE) * downsample) // scale
            # Pixels past the canvas or this page's own size stay white.
            inside_y = (ys < src_h) & (np.arange(top, top + TILE) < rows)
            inside_x = (xs < src_w) & (np.arange(left, left + TILE) < cols)
            if not (inside_y.any() and inside_x.any()):
                yield white
                continue
            y_in, x_in = ys[inside_y], xs[inside_x]
            if (canvas[y_in[0] : y_in[-1] + 1, x_in[0] : x_in[-1] + 1] == PAD_VALUE).all():
                yield white  # most of a slide is glass: skip the lookup
                continue
            tile = white.copy()
            tile[np.ix_(inside_y, inside_x)] = canvas[np.ix_(y_in, x_in)]
            yield tile


def stitch_patient(
    patient_dir: Path,
    out: Path,
    *,
    mpp: float | None = 4.0,
    scale: int = 1,
    downsamples: Sequence[int] = (2, 4),
) -> Path:
    """A Kaggle-layout patient folder as a pyramidal TIFF at `mpp` / `scale` µm/px."""
    level0_mpp = None if mpp is None else mpp / scale
    return write_pyramid(
        out, patient_canvas(patient_dir), mpp=level0_mpp, scale=scale, downsamples=downsamples
    )


def synthetic_canvas(cells: int, *, seed: int = 0, tissue_share: float = 0.35) -> np.ndarray:
    """A `cells` x `cells` grid of 50-px synthetic patches (`data/synth.py`): one ragged tissue
    piece with coherent IDC blobs on white glass, at the patches' own scale."""
    from histomlf.data.synth import make_patches, slide_layout

    rng = np.random.default_rng(seed)
    count = max(1, int(cells * cells * tissue_share))
    layout = slide_layout(count, 0.3, 0.0, rng)
    patches = make_patches(layout.labels, rng)
    size = PATCH_SIZE * cells
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    for x, y, patch in zip(layout.xs - 1, layout.ys - 1, patches, strict=True):
        if x + PATCH_SIZE <= size and y + PATCH_SIZE <= size:
            canvas[y : y + PATCH_SIZE, x : x + PATCH_SIZE] = patch
    return canvas


def synthetic_slide(
    out: Path,
    *,
    size_px: int = 40_000,
    mpp: float = 0.25,
    patch_mpp: float = 4.0,
    seed: int = 0,
    downsamples: Sequence[int] = (4,),
) -> Path:
    """A large synthetic H&E slide (`size_px`² at `mpp` µm/px), written tile by tile.

    Its content is `synthetic_canvas` at `patch_mpp` (one synthetic patch per 200 µm cell)
    enlarged by pixel replication, so the whole slide never exists in memory; the default
    40,000² px at 0.25 µm/px is a 10 x 10 mm section, 4.8 GB of pixels.
    """
    scale = round(patch_mpp / mpp)
    if abs(scale * mpp - patch_mpp) > 1e-9:
        raise ValueError(f"patch_mpp / mpp must be a whole number, got {patch_mpp} / {mpp}")
    cells = -(-size_px // (PATCH_SIZE * scale))
    canvas = synthetic_canvas(cells, seed=seed)[: -(-size_px // scale), : -(-size_px // scale)]
    return write_pyramid(
        out, canvas, mpp=mpp, scale=scale, downsamples=downsamples, compression_level=1
    )
