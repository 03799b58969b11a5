"""Turn a scoring request into a batch of patches, refusing bad input before decoding it.

Two request shapes become the same `[N, 50, 50, 3]` uint8 batch:

- `images_from_base64`: base64 strings of PNG/JPEG bytes (the HTTP API);
- `images_from_arrays`: HxWx3 uint8 arrays (the Python API);

and `patch_from_bytes` turns one uploaded file (the web page) into one patch by the same checks.

Both pad border patches exactly as training does (`histomlf.data.patches.pad_to_patch`, white on
the bottom/right). Every check that can run without decoding pixels runs first, cheapest first:
the string's length, the base64 alphabet, the magic bytes, then the size the image header
declares (a decompression bomb is refused from its header). Each refusal is an
`InvalidPatchInput` naming the row and the reason, so a client can fix the one bad row: whatever
the decoder raises, of any type, becomes one.

Importing this module lowers Pillow's PNG text-chunk limits (`PngImagePlugin.MAX_TEXT_CHUNK`,
`MAX_TEXT_MEMORY`) to `PNG_TEXT_CHUNK_BYTES` / `PNG_TEXT_MEMORY_BYTES`. They are process-wide
globals that Pillow reads at decode time, so they cannot be scoped to one call without racing
the threads that decode uploads; with Pillow's defaults (1 MB per chunk, 64 MB in all) a 74 KB
"patch" carrying 70 compressed text chunks costs 0.19 s of CPU before it is refused. The new
values still hold any real metadata (ICC profiles, which share the per-chunk cap, are far
smaller), and a limit someone set lower before is kept.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from histomlf.data.patches import (
    CHANNELS,
    PATCH_SIZE,
    PatchDecodeError,
    decode_patch,
    pad_to_patch,
)

# One patch is at most 50x50; anything larger would be cropped, i.e. not what training saw.
DEFAULT_MAX_PIXELS = PATCH_SIZE * PATCH_SIZE
# A 50x50 PNG is ~7.5 KB raw; leave room for metadata chunks (ICC profiles, EXIF).
DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_MAX_IMAGES = 1024

# Decompressed bytes of one PNG text/ICC chunk, and of all text chunks of one image.
PNG_TEXT_CHUNK_BYTES = 256 * 1024
PNG_TEXT_MEMORY_BYTES = 1024 * 1024
PngImagePlugin.MAX_TEXT_CHUNK = min(PngImagePlugin.MAX_TEXT_CHUNK, PNG_TEXT_CHUNK_BYTES)
PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, PNG_TEXT_MEMORY_BYTES)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_WHITESPACE = str.maketrans("", "", " \t\r\n")


class InvalidPatchInput(ValueError):
    """A request row (or the whole request) is not a usable patch; the message says which, why."""


def images_from_base64(
    values: Sequence[Any],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> np.ndarray:
    """Decode base64 PNG/JPEG strings into a padded `[N, 50, 50, 3]` uint8 batch.

    Line breaks and spaces inside a string are ignored (`base64` wraps at 76 columns); any other
    character outside the base64 alphabet is refused. Raises `InvalidPatchInput`.
    """
    _check_batch_size(len(values), max_images)
    patches = [
        _decode_row(index, value, max_bytes=max_bytes, max_pixels=max_pixels)
        for index, value in enumerate(values)
    ]
    return np.stack(patches)


def images_from_arrays(
    arrays: np.ndarray | Sequence[np.ndarray],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_images: int = DEFAULT_MAX_IMAGES,
) -> np.ndarray:
    """Pad HxWx3 uint8 arrays (one `[N, H, W, 3]` array or a list of them) into a batch.

    Each array must be RGB with 1 <= H, W <= 50 holding raw pixels: uint8, or any integer or
    float dtype with whole values in 0..255 (converted exactly). Raises `InvalidPatchInput`.
    """
    if isinstance(arrays, np.ndarray) and arrays.ndim == 3:
        raise InvalidPatchInput(
            f"got one {arrays.shape} array: pass a batch [N, H, W, 3] or a list of HxWx3 arrays"
        )
    if isinstance(arrays, np.ndarray) and arrays.ndim != 4:
        raise InvalidPatchInput(f"expected a [N, H, W, 3] array, got shape {arrays.shape}")
    _check_batch_size(len(arrays), max_images)
    patches = [_check_array(index, array, max_pixels) for index, array in enumerate(arrays)]
    return np.stack([pad_to_patch(patch) for patch in patches])


def image_kind(data: bytes) -> str | None:
    """`"png"` or `"jpeg"` from the magic bytes, `None` for anything else."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    return None


def encode_png_base64(patch: np.ndarray) -> str:
    """Encode an HxWx3 uint8 array as a base64 PNG string: what a client sends."""
    buffer = io.BytesIO()
    Image.fromarray(patch).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _check_batch_size(count: int, max_images: int) -> None:
    if count == 0:
        raise InvalidPatchInput("empty request: send at least one image")
    if count > max_images:
        raise InvalidPatchInput(
            f"too many images in one request: {count} > {max_images}; split it into batches"
        )


def _decode_row(index: int, value: Any, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    def refuse(reason: str) -> InvalidPatchInput:
        return InvalidPatchInput(f"row {index}: {reason}")

    if not isinstance(value, str):
        raise refuse(f"expected a base64 string, got {type(value).__name__}")
    text = value.translate(_WHITESPACE)
    if not text:
        raise refuse("empty string, expected base64 PNG/JPEG bytes")
    # Decoded size is 3/4 of the text: refuse oversized rows before decoding them.
    if len(text) // 4 * 3 > max_bytes + 2:
        raise refuse(f"image too large: about {len(text) // 4 * 3} bytes > {max_bytes} allowed")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise refuse(f"not valid base64 ({error})") from error
    return _decode_bytes(data, max_bytes=max_bytes, max_pixels=max_pixels, refuse=refuse)


def patch_from_bytes(
    data: bytes,
    *,
    name: str = "image",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode one uploaded PNG/JPEG file into a padded 50x50x3 uint8 patch.

    The same checks, in the same order, as a base64 row (size, magic bytes, declared size, then
    decoding); an `InvalidPatchInput` names the file (`name`) and the reason.
    """

    def refuse(reason: str) -> InvalidPatchInput:
        return InvalidPatchInput(f"{name}: {reason}")

    if not data:
        raise refuse("empty file, expected PNG/JPEG bytes")
    return _decode_bytes(data, max_bytes=max_bytes, max_pixels=max_pixels, refuse=refuse)


def _decode_bytes(data: bytes, *, max_bytes: int, max_pixels: int, refuse: Any) -> np.ndarray:
    if len(data) > max_bytes:
        raise refuse(f"image too large: {len(data)} bytes > {max_bytes} allowed")
    if image_kind(data) is None:
        raise refuse(f"not a PNG or JPEG image (starts with {data[:8]!r})")
    _check_declared_size(data, max_pixels, refuse)
    try:
        return decode_patch(data, max_pixels=max_pixels)
    except PatchDecodeError as error:
        raise refuse(str(error)) from error
    except Exception as error:  # noqa: BLE001 - untrusted bytes: any decoder failure is a refusal
        raise refuse(f"not a readable image: {type(error).__name__}: {error}") from error


def _check_declared_size(data: bytes, max_pixels: int, refuse: Any) -> None:
    """Read only the header: refuse bombs and images larger than a patch before decoding."""
    if data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    width, height = image.size
        except Image.DecompressionBombError as error:
            raise refuse(f"decompression bomb: {error}") from error
        except Exception as error:  # noqa: BLE001 - untrusted bytes: any failure is a refusal
            raise refuse(f"not a readable image: {type(error).__name__}: {error}") from error
    _check_size(width, height, max_pixels, refuse)


def _check_size(width: int, height: int, max_pixels: int, refuse: Any) -> None:
    if width <= 0 or height <= 0:
        raise refuse(f"image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise refuse(
            f"image declares {width}x{height} = {width * height} px, more than the "
            f"{max_pixels} px allowed (a patch is at most {PATCH_SIZE}x{PATCH_SIZE}; "
            "decompression bomb?)"
        )
    if width > PATCH_SIZE or height > PATCH_SIZE:
        raise refuse(
            f"image is {width}x{height} px, larger than a {PATCH_SIZE}x{PATCH_SIZE} patch: "
            "tile it into patches first"
        )


def _check_array(index: int, array: Any, max_pixels: int) -> np.ndarray:
    def refuse(reason: str) -> InvalidPatchInput:
        return InvalidPatchInput(f"row {index}: {reason}")

    if not isinstance(array, np.ndarray):
        raise refuse(f"expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        array = _as_uint8(array, refuse)
    if array.ndim != 3 or array.shape[2] != CHANNELS:
        raise refuse(f"expected an HxWx{CHANNELS} RGB array, got shape {array.shape}")
    height, width = array.shape[:2]
    _check_size(width, height, max_pixels, refuse)
    return array


def _as_uint8(array: np.ndarray, refuse: Any) -> np.ndarray:
    """Integer or float arrays holding whole numbers in 0..255 (raw pixels) convert exactly."""
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise refuse(f"expected uint8 pixels (0..255), got dtype {array.dtype}")
    if array.size and (
        not np.all(np.isfinite(array))
        or array.min() < 0
        or array.max() > 255
        or not np.array_equal(array, np.round(array))
    ):
        raise refuse(
            f"expected raw pixel values, whole numbers in 0..255; got dtype {array.dtype} "
            f"with values in [{array.min()}, {array.max()}] (rescaled input?)"
        )
    return array.astype(np.uint8)
