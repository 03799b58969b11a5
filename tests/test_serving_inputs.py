"""Request validation: real sample patches in, padded batches out; each bad row refused by name."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histomlf.data.patches import PAD_VALUE, decode_patch
from histomlf.serving.inputs import (
    InvalidPatchInput,
    encode_png_base64,
    images_from_arrays,
    images_from_base64,
)


def sample_paths(idc_sample: Path) -> tuple[list[Path], list[Path]]:
    """(full 50x50 patches, border patches smaller than 50x50) from the real sample."""
    full, border = [], []
    for path in sorted(idc_sample.rglob("*.png")):
        with Image.open(path) as image:
            (full if image.size == (50, 50) else border).append(path)
        if len(full) >= 6 and len(border) >= 3:
            break
    return full[:6], border[:3]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring a huge image, under 1 KB: a decompression bomb's shape."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_real_patches_decode_like_training(idc_sample: Path) -> None:
    full, border = sample_paths(idc_sample)
    paths = full + border
    batch = images_from_base64([b64(p.read_bytes()) for p in paths])
    assert batch.shape == (len(paths), 50, 50, 3) and batch.dtype == np.uint8
    for row, path in zip(batch, paths, strict=True):
        np.testing.assert_array_equal(row, decode_patch(path.read_bytes()))
    with Image.open(border[0]) as image:
        height = image.size[1]
    assert height < 50
    assert (batch[len(full), height:] == PAD_VALUE).all()


def test_jpeg_and_wrapped_base64_are_accepted(idc_sample: Path) -> None:
    full, _ = sample_paths(idc_sample)
    buffer = io.BytesIO()
    Image.open(full[0]).convert("RGB").save(buffer, format="JPEG", quality=95)
    jpeg = b64(buffer.getvalue())
    wrapped = "\n".join(jpeg[i : i + 76] for i in range(0, len(jpeg), 76))
    batch = images_from_base64([jpeg, wrapped])
    np.testing.assert_array_equal(batch[0], batch[1])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64 at all!", "row 1: not valid base64"),
        (b64(b"GIF89a just some other bytes"), "row 1: not a PNG or JPEG"),
        (b64(bomb_png()), "row 1: image declares 100000x100000"),
        (b64(png_bytes(np.zeros((60, 60, 3), np.uint8))), "row 1: image declares 60x60 = 3600 px"),
        (b64(png_bytes(np.zeros((20, 100, 3), np.uint8))), "larger than a 50x50 patch"),
        (b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "row 1: not a readable image"),
        (b64(png_bytes(np.zeros((50, 50, 3), np.uint8)))[:-40], "row 1:"),
        ("", "row 1: empty string"),
        (None, "row 1: expected a base64 string, got NoneType"),
    ],
)
def test_bad_rows_are_refused_by_index(value: object, message: str) -> None:
    good = encode_png_base64(np.full((50, 50, 3), 200, np.uint8))
    with pytest.raises(InvalidPatchInput) as info:
        images_from_base64([good, value])
    assert message in str(info.value)


def test_bomb_header_is_small_and_refused_before_decoding() -> None:
    data = bomb_png()
    assert len(data) < 1024
    with pytest.raises(InvalidPatchInput, match="decompression bomb"):
        images_from_base64([b64(data)])


def test_request_limits() -> None:
    good = encode_png_base64(np.full((50, 50, 3), 200, np.uint8))
    with pytest.raises(InvalidPatchInput, match="empty request"):
        images_from_base64([])
    with pytest.raises(InvalidPatchInput, match="too many images in one request: 3 > 2"):
        images_from_base64([good] * 3, max_images=2)
    with pytest.raises(InvalidPatchInput, match=r"row 0: image too large: about \d+ bytes > 100"):
        images_from_base64([good], max_bytes=100)


def test_arrays_of_any_patch_size_are_padded_like_training(idc_sample: Path) -> None:
    full, border = sample_paths(idc_sample)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in full[:2] + border[:2]]
    batch = images_from_arrays(arrays)
    for row, path in zip(batch, full[:2] + border[:2], strict=True):
        np.testing.assert_array_equal(row, decode_patch(path.read_bytes()))
    stacked = images_from_arrays(np.stack(arrays[:2]).astype(np.float32))
    np.testing.assert_array_equal(stacked, batch[:2])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ([np.zeros((50, 50, 3), np.float32) + 0.5], "row 0: expected raw pixel values"),
        ([np.zeros((50, 50), np.uint8)], "row 0: expected an HxWx3 RGB array"),
        ([np.zeros((50, 50, 3), np.uint8), np.zeros((51, 50, 3), np.uint8)], "row 1:"),
        ([np.zeros((50, 50, 3), np.uint8), "x"], "row 1: expected a numpy array"),
        (np.zeros((50, 50, 3), np.uint8), "pass a batch"),
        ([], "empty request"),
    ],
)
def test_bad_arrays_are_refused(arrays: object, message: str) -> None:
    with pytest.raises(InvalidPatchInput) as info:
        images_from_arrays(arrays)  # type: ignore[arg-type]
    assert message in str(info.value)
