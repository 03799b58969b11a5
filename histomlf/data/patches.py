"""What a patch is, and how an image becomes one: shared by the scan, the pipeline and serving.

A patch is a 50x50 RGB uint8 array. About 0.85 % of the Kaggle patches are slide-border crops
smaller than that (50 px wide, 1-49 px high). They are padded, never resized, so tissue keeps
its scale: the crop stays anchored at its top-left corner (the file name's x/y) and the missing
rows/columns on the bottom/right are filled with white (255), the colour of bare glass beyond the
slide edge. Training, evaluation and serving all go through `pad_to_patch`, so a served border
patch sees exactly what training saw.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from histomlf.errors import UserError
from histomlf.schema import ModelMeta

PATCH_SIZE = 50
CHANNELS = 3
PAD_VALUE = 255
# Anything larger than this is not a patch; checked from the header before decoding pixels.
MAX_PATCH_PIXELS = 1024 * 1024


def pad_to_patch(image: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """Pad an HxWx3 uint8 array with white on the bottom/right to `size`x`size`.

    Larger inputs are cropped to the top-left `size`x`size` window.
    """
    height, width = image.shape[:2]
    if height == size and width == size:
        return image
    out = np.full((size, size, image.shape[2]), PAD_VALUE, dtype=np.uint8)
    h, w = min(height, size), min(width, size)
    out[:h, :w] = image[:h, :w]
    return out


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a decoded PIL image of any mode (L, LA, P, RGBA, I;16 ...) to HxWx3 uint8 RGB.

    Transparent pixels (RGBA, LA, P with transparency) are composited onto white.
    """
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (PAD_VALUE,) * 3 + (255,))
        image = Image.alpha_composite(background, rgba)
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array16 = np.asarray(image, dtype=np.float64)
        scale = 255.0 / max(float(array16.max()), 1.0)
        image = Image.fromarray((array16 * scale).astype(np.uint8))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def patch_scale(patch_mpp: float) -> dict[str, str]:
    """The physical size of a model's input, as logged with every model (metadata, run params,
    registered version tags): `PATCH_SIZE` px a side at `patch_mpp` µm/px (issue 22)."""
    return {ModelMeta.PATCH_PX: str(PATCH_SIZE), ModelMeta.PATCH_MPP: str(patch_mpp)}


class PatchDecodeError(UserError, ValueError):
    """The bytes are not a usable patch image; the message says why."""


def decode_patch(data: bytes, max_pixels: int = MAX_PATCH_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG bytes into a padded 50x50x3 uint8 patch.

    The header's declared size is checked against `max_pixels` before any pixel is decoded,
    so a decompression bomb is refused cheaply. Raises `PatchDecodeError` with a reason.
    """
    if not data:
        raise PatchDecodeError("empty image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise PatchDecodeError(f"image declares an empty size {width}x{height}")
            if width * height > max_pixels:
                raise PatchDecodeError(
                    f"image declares {width}x{height} px, more than the {max_pixels} px "
                    "allowed for a patch (decompression bomb?)"
                )
            image.load()
            array = to_rgb_array(image)
    except PatchDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise PatchDecodeError(f"not a readable image: {error}") from error
    return pad_to_patch(array)
