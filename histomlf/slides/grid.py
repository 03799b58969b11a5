"""Tile positions on a slide: the model's patch laid on a grid of level-0 pixels, with a stride.

The grid starts at the slide's top-left corner (0, 0) — where a Kaggle patch's 1-based x/y
minus one puts it — and steps by `stride` model pixels (`patch_px` for no overlap, fewer for
overlapping tiles, averaged per pixel in the heatmap). Positions are rounded to whole level-0
pixels; every tile that starts inside the slide is on the grid (its part beyond the edge is read
as white, like a Kaggle border patch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    """Top-left corners (`xs`, `ys`, level-0 px, int64) of `rows` x `cols` tiles, row-major.

    `size_px` is the tile's level-0 size (float), `stride_px` the step between tiles.
    """

    xs: np.ndarray
    ys: np.ndarray
    cols: int
    rows: int
    size_px: float
    stride_px: float

    def __len__(self) -> int:
        return len(self.xs)

    def widths(self, slide_width: int) -> np.ndarray:
        """Each tile's width in level-0 px, clipped at the slide's right edge."""
        return np.minimum(self.xs + round(self.size_px), slide_width) - self.xs

    def heights(self, slide_height: int) -> np.ndarray:
        """Each tile's height in level-0 px, clipped at the slide's bottom edge."""
        return np.minimum(self.ys + round(self.size_px), slide_height) - self.ys


def tile_grid(width: int, height: int, size_px: float, stride_px: float | None = None) -> TileGrid:
    """The tiles of a `width` x `height` slide, `size_px` wide, every `stride_px` (default:
    `size_px`)."""
    stride = float(stride_px or size_px)
    if not (size_px > 0 and stride > 0):
        raise ValueError(f"tile size and stride must be positive, got {size_px} and {stride}")
    cols, rows = math.ceil(width / stride), math.ceil(height / stride)
    xs = np.round(np.arange(cols) * stride).astype(np.int64)
    ys = np.round(np.arange(rows) * stride).astype(np.int64)
    xs, ys = xs[xs < width], ys[ys < height]
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return TileGrid(grid_x.ravel(), grid_y.ravel(), len(xs), len(ys), float(size_px), stride)


def stride_px(stride: int | None, patch_px: int, tile_px: float) -> float:
    """A stride given in model pixels (1..patch_px; None = patch_px) as level-0 pixels."""
    stride = patch_px if stride is None else int(stride)
    if not 1 <= stride <= patch_px:
        raise ValueError(f"--stride must be in 1..{patch_px} model pixels, got {stride}")
    return tile_px * stride / patch_px
