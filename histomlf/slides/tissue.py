"""The tissue mask of a slide's thumbnail, with pen ink taken out, and each tile's tissue share.

Tissue is stained, glass is not: the HSV saturation of the thumbnail, median-filtered, above
a threshold (Otsu's on this slide, clipped to a floor and a ceiling so a slide that is nearly
all tissue or all glass does not split itself in two), closed, with objects and holes smaller
than given areas in µm² removed and filled (WSInfer's recipe, with Otsu as TIAToolbox and
slideflow use).

Marker pen is saturated too, but not H&E-coloured: eosin and haematoxylin lie on the
pink-magenta-purple side of the hue circle, while green, blue and black markers do not.
`ink_mask` flags saturated pixels whose hue is in the green-cyan-blue band and very dark
pixels (black marker); tiles whose tissue share falls below the threshold once ink is taken out
are counted as dropped by the ink filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Saturation (0-1) threshold: Otsu's, but never below/above these (glass ≈ 0.0-0.04,
# pale eosin ≈ 0.1, haematoxylin-dense tissue 0.3-0.6 on the CMU-1 region).
SATURATION_FLOOR = 0.05
SATURATION_CEILING = 0.15
MEDIAN_UM = 8.0
CLOSING_UM = 8.0
# Objects < 100² µm² are debris (WSInfer: 200², which drops an isolated 200 µm patch),
# holes < 190² µm² are filled (as WSInfer).
MIN_OBJECT_UM2 = 100.0**2
MIN_HOLE_UM2 = 190.0**2
# Ink: saturated and in the yellow-green-cyan-blue hue band (H&E stays in 0.70-1.0 and
# 0.0-0.10), or darker than any stain (black marker).
INK_HUE_BAND = (0.12, 0.68)
INK_MIN_SATURATION = 0.15
INK_MAX_VALUE = 0.16
INK_SMOOTH_UM = 40.0
MIN_INK_UM2 = 100.0**2


@dataclass(frozen=True)
class TissueMask:
    """Boolean masks at thumbnail resolution: `tissue` (ink removed) and `ink`; `threshold` is
    the saturation threshold used."""

    tissue: np.ndarray
    ink: np.ndarray
    threshold: float

    @property
    def stained(self) -> np.ndarray:
        """Tissue before the ink filter (ink strokes count as stained)."""
        return self.tissue | self.ink


def hsv(rgb: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] of an RGB image (uint8, or float in [0, 1]); skimage's `rgb2hsv` in plain
    vectorised NumPy (it took seconds on a 1.6 Mpx thumbnail here)."""
    image = rgb.astype(np.float32) / (255.0 if rgb.dtype == np.uint8 else 1.0)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    high, low = image.max(axis=-1), image.min(axis=-1)
    delta = high - low
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2,
                                                              (r - g) / safe + 4))
    hue = np.where(delta > 0, hue / 6.0, 0.0)
    saturation = np.where(high > 0, delta / np.where(high > 0, high, 1.0), 0.0)
    return np.stack([hue, saturation, high], axis=-1)


def ink_mask(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """Marker ink: saturated green/blue/cyan or black, judged on the colour averaged over
    `INK_SMOOTH_UM` (a nucleus is dark blue-purple too, but small: averaged with the stroma
    around it, it is H&E-coloured again; a stroke is a fraction of a millimetre wide)."""
    size = _odd(INK_SMOOTH_UM / mpp)
    smooth = ndimage.uniform_filter(rgb.astype(np.float32), size=(size, size, 1)) / 255.0
    hsv_image = hsv(np.clip(smooth, 0.0, 1.0))
    hue, saturation, value = hsv_image[..., 0], hsv_image[..., 1], hsv_image[..., 2]
    coloured = (
        (saturation >= INK_MIN_SATURATION)
        & (hue >= INK_HUE_BAND[0])
        & (hue <= INK_HUE_BAND[1])
    )
    return coloured | (value <= INK_MAX_VALUE)


def tissue_mask(
    rgb: np.ndarray,
    mpp: float,
    *,
    threshold: float | None = None,
    min_object_um2: float = MIN_OBJECT_UM2,
    min_hole_um2: float = MIN_HOLE_UM2,
    ink: bool = True,
) -> TissueMask:
    """Tissue and ink masks of an RGB thumbnail at `mpp` µm/px (`threshold` None: clipped Otsu)."""
    from skimage import filters, morphology

    high, low = rgb.max(axis=-1).astype(np.int32), rgb.min(axis=-1).astype(np.int32)
    saturation_u8 = ((high - low) * 255 // np.maximum(high, 1)).astype(np.uint8)  # HSV's S
    radius = max(1, round(MEDIAN_UM / mpp / 2))
    saturation = filters.median(saturation_u8, morphology.disk(radius)) / 255.0
    if threshold is None:
        otsu = filters.threshold_otsu(saturation) if np.ptp(saturation) > 0 else SATURATION_FLOOR
        threshold = float(np.clip(otsu, SATURATION_FLOOR, SATURATION_CEILING))
    stained = saturation > threshold
    radius = max(1, round(CLOSING_UM / mpp / 2))
    stained = ndimage.binary_closing(stained, morphology.disk(radius), border_value=0)
    px_area = mpp * mpp
    stained = morphology.remove_small_objects(stained, max_size=int(min_object_um2 / px_area))
    stained = morphology.remove_small_holes(stained, max_size=int(min_hole_um2 / px_area))
    inked = np.zeros_like(stained)
    if ink:
        inked = ink_mask(rgb, mpp) & stained
        inked = morphology.remove_small_objects(inked, max_size=int(MIN_INK_UM2 / px_area))
    return TissueMask(stained & ~inked, inked, float(threshold))


def _odd(size: float) -> int:
    size = max(1, int(round(size)))
    return size if size % 2 else size + 1


def tile_shares(
    mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, size_px: float, downsample: float
) -> np.ndarray:
    """The share of each tile's area (level-0 corners `xs`, `ys`, side `size_px`) that is True
    in `mask` (at `downsample` level-0 px per mask px); area beyond the slide counts as not."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    x0, y0, x1, y1 = _mask_boxes(xs, ys, size_px, downsample)
    h, w = mask.shape
    cx0, cx1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    cy0, cy1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    inside = integral[cy1, cx1] - integral[cy0, cx1] - integral[cy1, cx0] + integral[cy0, cx0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return inside / area


def _mask_boxes(xs, ys, size_px, downsample):
    x0 = np.round(xs / downsample).astype(np.int64)
    y0 = np.round(ys / downsample).astype(np.int64)
    x1 = np.maximum(np.round((xs + size_px) / downsample).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.round((ys + size_px) / downsample).astype(np.int64), y0 + 1)
    return x0, y0, x1, y1
