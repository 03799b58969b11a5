"""Property-based fuzzing (Hypothesis) of the three parsers that read untrusted bytes.

- the base64/PNG/JPEG decoding that the pyfunc and the web page share (`histomlf.serving.inputs`);
- the patient-zip reader (`histomlf.web.uploads.read_patient_zip`);
- the Kaggle file-name parser (`histomlf.data.scan.PATCH_NAME` and the integers it yields).

Inputs are arbitrary bytes/text and mutations of real patches, JPEGs and zips built from the
IDC sample (byte edits, insertions, cuts, chunks re-signed with a valid CRC, header fields set
to edge values). Each call must give a result or the module's own error (`InvalidPatchInput`,
`UploadError`), never another exception. The zip cases run in a child process (this file run as
a script) under an address-space limit, importing only the upload, serving and scan modules.

Settings are reproducible (`derandomize=True`, no example database, no deadline) with a fixed
budget per property (`EXAMPLES`); every failing input Hypothesis found is kept as an `@example`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from histomlf.data.scan import PATCH_NAME
from histomlf.serving.inputs import InvalidPatchInput, images_from_base64, patch_from_bytes
from histomlf.web.limits import Limits
from histomlf.web.uploads import UploadError, read_patient_zip

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SAMPLE_DIR  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
PATIENT = "10255"
MAX_BYTES, MAX_PIXELS = 256 * 1024, 2500
# Examples per property: the whole file stays well under 60 s on a shared 2-core machine.
EXAMPLES = {"image_bytes": 300, "image_mutations": 400, "jpeg_mutations": 150,
            "png_chunks": 300, "base64_text": 200, "names": 1000,
            "zip_bytes": 100, "zip_mutations": 300, "zip_names": 150}
# Address space granted to the zip child beyond what it holds after its imports and warm-up.
CHILD_HEADROOM_MB = 1024
COUNTS: dict[str, int] = dict.fromkeys(EXAMPLES, 0)


def fuzz_settings(name: str) -> settings:
    return settings(max_examples=EXAMPLES[name], derandomize=True, database=None,
                    deadline=None, suppress_health_check=list(HealthCheck))


# ------------------------------------------------------------------ real material, small
def _sample_patches(count: int = 4) -> list[bytes]:
    files = sorted((SAMPLE_DIR / PATIENT).rglob("*.png"))
    return [f.read_bytes() for f in files[:: max(len(files) // count, 1)][:count]]


PATCHES = _sample_patches()


def _jpeg(png: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


JPEGS = [_jpeg(p) for p in PATCHES[:2]]


def _zip(compression: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for index, data in enumerate(PATCHES):
            archive.writestr(f"{PATIENT}/0/{PATIENT}_idx5_x{50 * index + 1}_y1_class0.png", data)
    return buffer.getvalue()


ZIPS = [_zip(zipfile.ZIP_STORED), _zip(zipfile.ZIP_DEFLATED)]


def _with_an_empty_name() -> bytes:
    """Found by `fuzz_mutated_real_zips`: an entry with an empty name (`ZipInfo.is_dir()`
    raised IndexError in `check_zip`)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo(""), b"x")
        archive.writestr(f"{PATIENT}_idx5_x1_y1_class0.png", PATCHES[0])
    return buffer.getvalue()
REAL_NAMES = [f.name for f in sorted((SAMPLE_DIR / PATIENT).rglob("*.png"))[:20]]


# ---------------------------------------------------------------------------- mutations
@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A real file with up to 8 byte edits, insertions, deletions or a cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data)


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[at : at + 8])
        chunks.append((kind, png[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def _signed(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


CHUNK_KINDS = [b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"tEXt", b"zTXt", b"iTXt", b"iCCP",
               b"gAMA", b"pHYs", b"sBIT", b"acTL", b"fcTL", b"fdAT", b"eXIf", b"bKGD", b"xxXx"]


@st.composite
def rechunked(draw: st.DrawFn) -> bytes:
    """A real PNG whose chunks are edited, inserted (text bombs included) or dropped, each with
    a valid CRC, so the edits reach Pillow's chunk handlers instead of its CRC check."""
    chunks = _chunks(draw(st.sampled_from(PATCHES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["edit", "insert", "drop", "zinsert"]))
        at = draw(st.integers(0, len(chunks) - 1)) if chunks else 0
        if op == "edit" and chunks:
            kind, body = chunks[at]
            body = bytearray(body)
            if body:
                body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
            chunks[at] = (kind, bytes(body[: draw(st.integers(0, len(body)))]))
        elif op == "insert":
            chunks.insert(at, (draw(st.sampled_from(CHUNK_KINDS)), draw(st.binary(max_size=64))))
        elif op == "zinsert":  # compressed payload: what a text-chunk bomb looks like
            kind = draw(st.sampled_from([b"zTXt", b"iCCP", b"iTXt"]))
            payload = bytes(draw(st.sampled_from([10, 100_000, 2_000_000])))
            head = b"k\0\0" if kind != b"iTXt" else b"k\0\1\0\0\0"
            chunks.insert(at, (kind, head + zlib.compress(payload, 9)))
        elif chunks:
            del chunks[at]
    return b"\x89PNG\r\n\x1a\n" + b"".join(_signed(kind, body) for kind, body in chunks)


def _header_fields(data: bytes) -> list[int]:
    """Offsets of every zip header (local, central, end records) in `data`."""
    offsets = []
    for signature in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"):
        at = data.find(signature)
        while at >= 0:
            offsets.append(at)
            at = data.find(signature, at + 1)
    return offsets


EDGE_VALUES = [0, 1, 8, 9, 12, 14, 93, 99, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


@st.composite
def zip_mutated(draw: st.DrawFn) -> bytes:
    """A real patient zip with header fields set to edge values, plus byte-level mutations."""
    data = bytearray(draw(mutated(ZIPS)) if draw(st.booleans()) else draw(st.sampled_from(ZIPS)))
    heads = _header_fields(bytes(data))
    for _ in range(draw(st.integers(0, 4 if heads else 0))):
        at = draw(st.sampled_from(heads)) + draw(st.integers(4, 44))
        width = draw(st.sampled_from([2, 4]))
        value = draw(st.sampled_from(EDGE_VALUES)) & (0xFFFF if width == 2 else 0xFFFFFFFF)
        if at + width <= len(data):
            struct.pack_into("<H" if width == 2 else "<I", data, at, value)
    return bytes(data)


# ------------------------------------------------------------------- the properties
def _decodes_or_refuses(data: bytes) -> None:
    for call in (lambda: patch_from_bytes(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS),
                 lambda: images_from_base64([base64.b64encode(data).decode()])[0]):
        try:
            patch = call()
        except InvalidPatchInput:
            continue
        assert patch.shape == (50, 50, 3) and patch.dtype.name == "uint8"


@fuzz_settings("image_bytes")
@given(st.one_of(st.binary(max_size=512),
                 st.binary(max_size=512).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                 st.binary(max_size=512).map(lambda b: b"\xff\xd8\xff" + b)))
def test_any_bytes_decode_to_a_patch_or_an_invalid_patch_input(data: bytes) -> None:
    COUNTS["image_bytes"] += 1
    _decodes_or_refuses(data)


@fuzz_settings("image_mutations")
@given(mutated(PATCHES))
def test_mutated_real_patches_decode_or_are_refused(data: bytes) -> None:
    COUNTS["image_mutations"] += 1
    _decodes_or_refuses(data)


@fuzz_settings("jpeg_mutations")
@given(mutated(JPEGS))
def test_mutated_real_jpegs_decode_or_are_refused(data: bytes) -> None:
    COUNTS["jpeg_mutations"] += 1
    _decodes_or_refuses(data)


@fuzz_settings("png_chunks")
@given(rechunked())
def test_real_pngs_with_edited_signed_chunks_decode_or_are_refused(data: bytes) -> None:
    COUNTS["png_chunks"] += 1
    _decodes_or_refuses(data)


@fuzz_settings("base64_text")
@given(st.text(max_size=256))
def test_any_text_as_a_base64_row_decodes_or_is_refused(text: str) -> None:
    COUNTS["base64_text"] += 1
    try:
        images_from_base64([text])
    except InvalidPatchInput:
        pass


def test_text_chunks_are_capped_by_the_lowered_pillow_limits() -> None:
    """250 zTXt chunks of 256 KB zeros in a 74 KB PNG: Pillow's defaults decoded all 65 MB of
    text (0.2 s of CPU per row); the limits `histomlf.serving.inputs` sets refuse it at 1 MB."""
    from PIL import PngImagePlugin

    from histomlf.serving.inputs import PNG_TEXT_CHUNK_BYTES, PNG_TEXT_MEMORY_BYTES

    assert PngImagePlugin.MAX_TEXT_CHUNK <= PNG_TEXT_CHUNK_BYTES
    assert PngImagePlugin.MAX_TEXT_MEMORY <= PNG_TEXT_MEMORY_BYTES
    chunks = _chunks(PATCHES[0])
    zeros = zlib.compress(bytes(256 * 1024 - 16), 9)
    text = [(b"zTXt", b"k%d\0\0" % i + zeros) for i in range(250)]
    png = b"\x89PNG\r\n\x1a\n" + b"".join(_signed(k, b) for k, b in chunks[:1] + text + chunks[1:])
    with pytest.raises(InvalidPatchInput, match="MAX_TEXT_MEMORY"):
        patch_from_bytes(png, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)


@st.composite
def names(draw: st.DrawFn) -> str:
    base = draw(st.sampled_from(REAL_NAMES))
    kind = draw(st.sampled_from(["text", "edit", "digits"]))
    if kind == "text":
        return draw(st.text(max_size=80))
    if kind == "digits":  # coordinates of any length, the 4,301-digit int() limit included
        x, y = draw(st.integers(0, 5000)), draw(st.integers(0, 5000))
        label = draw(st.integers(0, 2))
        return f"{PATIENT}_idx5_x{'9' * x or '0'}_y{'1' * y or '0'}_class{label}.png"
    chars = list(base)
    for _ in range(draw(st.integers(1, 4))):
        chars[draw(st.integers(0, len(chars) - 1))] = draw(st.characters())
    return "".join(chars)


@fuzz_settings("names")
@given(names())
@example(f"{PATIENT}_idx5_x{'1' * 4301}_y1_class0.png")
def test_a_file_name_parses_to_bounded_integers_or_not_at_all(name: str) -> None:
    COUNTS["names"] += 1
    match = PATCH_NAME.match(name)
    if match is not None:
        x, y, label = int(match[2]), int(match[3]), int(match[4])
        assert 0 <= x < 10**9 and 0 <= y < 10**9 and label in (0, 1)
        assert match[1].isdigit()


# ------------------------------------------------------- zips: in a memory-limited child
def _reads_or_refuses(data: bytes) -> None:
    try:
        read_patient_zip(data, Limits(), max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    except UploadError:
        pass


@fuzz_settings("zip_bytes")
@given(st.one_of(st.binary(max_size=1024),
                 st.binary(max_size=1024).map(lambda b: b"PK\x03\x04" + b)))
def fuzz_any_bytes_as_a_zip(data: bytes) -> None:
    COUNTS["zip_bytes"] += 1
    _reads_or_refuses(data)


@fuzz_settings("zip_mutations")
@given(zip_mutated())
@example(_with_an_empty_name())
def fuzz_mutated_real_zips(data: bytes) -> None:
    COUNTS["zip_mutations"] += 1
    _reads_or_refuses(data)


@fuzz_settings("zip_names")
@given(st.lists(st.one_of(names(), st.text(min_size=1, max_size=40)), min_size=1, max_size=6))
def fuzz_member_names(members: list[str]) -> None:
    COUNTS["zip_names"] += 1
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, name in enumerate(members):
            try:
                archive.writestr(zipfile.ZipInfo(name), PATCHES[index % len(PATCHES)])
            except (ValueError, UnicodeEncodeError):
                continue  # a name zipfile itself cannot write (surrogates, NUL)
    _reads_or_refuses(buffer.getvalue())


def _run_zip_fuzz() -> dict:
    """The zip properties under RLIMIT_AS; the counts and the peak RSS growth, as a dict."""
    import pandas as pd

    pd.DataFrame([{"file": "a.png", "x": 1}])  # pyarrow reserves its address space on first use
    _reads_or_refuses(ZIPS[0])
    with open("/proc/self/status") as status:
        vm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = (vm_kb + CHILD_HEADROOM_MB * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    before = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])
    fuzz_any_bytes_as_a_zip()
    fuzz_mutated_real_zips()
    fuzz_member_names()
    growth = (int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) - before) / 1024
    heavy = sorted(m for m in ("tensorflow", "keras", "mlflow", "matplotlib") if m in sys.modules)
    return {"counts": {k: v for k, v in COUNTS.items() if k.startswith("zip")},
            "peak_growth_mb": growth, "heavy": heavy}


def test_the_zip_reader_reads_or_refuses_every_fuzzed_zip_in_a_limited_child() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, __file__, "zip"], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, f"the zip fuzz child failed:\n{done.stdout[-4000:]}\n" \
                                 f"{done.stderr[-4000:]}"
    answer = json.loads(done.stdout.splitlines()[-1])
    print("zip fuzz:", answer)
    assert answer["heavy"] == []
    assert all(answer["counts"][name] > 0 for name in answer["counts"])
    assert answer["peak_growth_mb"] < 100


def test_zz_report_the_examples_run() -> None:
    """Prints the examples each in-process property ran (`pytest -s` shows them)."""
    print("fuzz examples:", {k: v for k, v in COUNTS.items() if not k.startswith("zip")})


if __name__ == "__main__" and sys.argv[1:] == ["zip"]:
    print(json.dumps(_run_zip_fuzz()))
