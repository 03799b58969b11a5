"""Uploaded files in, patches out: each bad file gets its own message, the good ones go on.

Pure (no web framework, no MLflow): the app hands over `(name, bytes)` pairs, read in memory.

- `decode_files`: PNG/JPEG patches, each through `histomlf.serving.patch_from_bytes` (the
  served model's own checks: size, magic bytes, declared size, decoding).
- `read_patient_zip`: one patient's folder as a zip, in the Kaggle layout (`<pid>/<0|1>/...`,
  with or without a top folder) or flat, with Kaggle file names (which carry the slide position
  and the pathologist's label). The archive's directory is checked before any member is read:
  its entry count and byte size from the raw end-of-central-directory record (ZIP64 included),
  before `zipfile.ZipFile` parses it; then the declared total size, compression ratio, no
  absolute or `..` paths, no links, no encryption. A failed check refuses the whole zip
  (`UploadError`, 413 for sizes, 400 for the rest); members are then read one at a time, in
  memory, never extracted to disk. The patches' positions must fit one slide
  (`Limits.slide_cells`), so the map stays small.

The sizes a zip's directory declares are whatever the sender wrote, and Python's zipfile
decompresses a whole bzip2 or LZMA block per `read` call, so the declared checks are only a
cheap first pass. What bounds memory is the reading: only stored and deflate members are
opened (anything else is that member's error line, never decompressed), each is read in chunks
of at most `READ_CHUNK` bytes, and the bytes really produced count against the per-member cap
(`max_bytes`), the archive's total (`Limits.zip_bytes`) and the ratio (`Limits.zip_ratio`).
Whatever a member raises, of any type, is that member's error line. Two files in the same 50-px
cell of the slide are one position: the first usable one is kept, the others are error lines.
"""

from __future__ import annotations

import re
import stat
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from histomlf.data.patches import PATCH_SIZE
from histomlf.data.scan import LITTER_NAMES, NAME_PATTERN, PATCH_NAME
from histomlf.serving.inputs import InvalidPatchInput, patch_from_bytes
from histomlf.web.limits import MB, Limits

# Members this small pass the ratio check whatever their ratio: a bomb needs size.
RATIO_FLOOR_BYTES = 64 * 1024
# Bytes asked of a member per read: what one read may add to memory.
READ_CHUNK = 64 * 1024
# Central-directory bytes allowed per allowed entry (46-byte header + name + extra fields; a
# Kaggle path in its top folder takes about 150).
DIRECTORY_BYTES_PER_ENTRY = 512
# The only compression methods read; bzip2 and LZMA decompress a whole block per read call.
READ_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
METHOD_NAMES = {8: "deflate", 9: "deflate64", 12: "bzip2", 14: "LZMA", 93: "zstandard", 98: "PPMd"}
_DRIVE = re.compile(r"^[A-Za-z]:")


class UploadError(ValueError):
    """The upload as a whole is refused; `status` is the HTTP code, `errors` per-file notes."""

    def __init__(self, message: str, status: int = 400, errors: Iterable[FileError] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.errors = list(errors)


@dataclass(frozen=True)
class FileError:
    """One file that was not scored, and why."""

    file: str
    message: str


@dataclass
class Decoded:
    """The usable files' names and patches `[N, 50, 50, 3]` uint8, and the refused files."""

    names: list[str]
    patches: np.ndarray
    errors: list[FileError] = field(default_factory=list)


@dataclass
class PatientFiles:
    """One patient's usable patches with their positions and labels, and the refused files.

    `rows` has `file, patient_id, x, y, label` (label from the file name), one per patch.
    """

    patient_id: str
    rows: pd.DataFrame
    patches: np.ndarray
    errors: list[FileError] = field(default_factory=list)
    skipped: int = 0
    """Litter entries (`__MACOSX/`, `.DS_Store`...) passed over without a message."""


def decode_files(
    uploads: Iterable[tuple[str, bytes]], *, max_bytes: int, max_pixels: int
) -> Decoded:
    """Decode each `(name, bytes)`; a file that fails is a `FileError`, the others a batch."""
    names, patches, errors = [], [], []
    for name, data in uploads:
        try:
            patches.append(
                patch_from_bytes(data, name=name, max_bytes=max_bytes, max_pixels=max_pixels)
            )
        except InvalidPatchInput as error:
            errors.append(FileError(name, _reason(error, name)))
            continue
        names.append(name)
    return Decoded(names, _stack(patches), errors)


def check_zip(archive: zipfile.ZipFile, limits: Limits) -> list[zipfile.ZipInfo]:
    """The archive's file entries after the directory checks (see the module docstring)."""
    entries = archive.infolist()
    if len(entries) > limits.zip_members:
        raise UploadError(
            f"the zip holds {len(entries):,} entries, more than the {limits.zip_members:,} "
            "allowed: send one patient's folder",
            status=413,
        )
    total = sum(entry.file_size for entry in entries)
    if total > limits.zip_bytes:
        raise UploadError(
            f"the zip unpacks to {total:,} bytes, more than the {limits.zip_bytes // MB} MB "
            "allowed: send one patient's folder",
            status=413,
        )
    files = []
    for entry in entries:
        name = entry.filename
        parts = re.split(r"[/\\]", name)
        if name.startswith(("/", "\\")) or _DRIVE.match(name):
            raise UploadError(f"the zip holds an absolute path ({name!r}): refused")
        if ".." in parts:
            raise UploadError(f"the zip holds a path leaving its folder ({name!r}): refused")
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise UploadError(f"the zip holds a symbolic link ({name!r}): refused")
        if entry.flag_bits & 0x1:
            raise UploadError(f"the zip holds an encrypted entry ({name!r}): refused")
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size > RATIO_FLOOR_BYTES and ratio > limits.zip_ratio:
            raise UploadError(
                f"zip entry {name!r} expands {ratio:,.0f}x (limit {limits.zip_ratio:g}x): "
                "a zip bomb? refused"
            )
        if not name.endswith("/"):  # ZipInfo.is_dir() raises IndexError on an empty name
            files.append(entry)
    return files


def check_directory(data: bytes, limits: Limits) -> None:
    """Refuse a zip whose central directory is too large, from the raw bytes alone.

    `zipfile.ZipFile` parses (and keeps a `ZipInfo` for) every directory entry when it opens,
    so the entry count and the directory's size are read here first, the way zipfile finds them:
    the end-of-central-directory record (and the ZIP64 one before it), then the headers counted
    one by one (the record's own count is the sender's word). Raises `UploadError` (413).
    """
    directory = _directory_span(data)
    if directory is None:
        return  # no end record: zipfile refuses it without parsing anything
    start, size = directory
    cap = limits.zip_members * DIRECTORY_BYTES_PER_ENTRY
    if size > cap:
        raise UploadError(
            f"the zip's directory takes {size:,} bytes, more than the {cap:,} allowed for "
            f"{limits.zip_members:,} entries: send one patient's folder",
            status=413,
        )
    count, offset, end = 0, start, min(start + size, len(data))
    while offset + 46 <= end and data[offset : offset + 4] == b"PK\x01\x02":
        name, extra, comment = struct.unpack_from("<3H", data, offset + 28)
        offset += 46 + name + extra + comment
        count += 1
    if count > limits.zip_members:
        raise UploadError(
            f"the zip holds {count:,} entries, more than the {limits.zip_members:,} "
            "allowed: send one patient's folder",
            status=413,
        )


def _directory_span(data: bytes) -> tuple[int, int] | None:
    """(start, size) of the central directory as `zipfile` locates it, or None without one."""
    eocd = len(data) - 22
    if not (eocd >= 0 and data[eocd : eocd + 4] == b"PK\x05\x06" and data[-2:] == b"\0\0"):
        eocd = data.rfind(b"PK\x05\x06", max(len(data) - (1 << 16) - 22, 0))
        if eocd < 0 or eocd + 22 > len(data):
            return None
    size = struct.unpack_from("<L", data, eocd + 12)[0]
    start = eocd - size
    locator = eocd - 20
    if locator >= 0 and data[locator : locator + 4] == b"PK\x06\x07":
        record = locator - 56
        if record >= 0 and data[record : record + 4] == b"PK\x06\x06":
            size = struct.unpack_from("<Q", data, record + 40)[0]
            start = record - size
    return max(start, 0), size


def read_patient_zip(
    data: bytes, limits: Limits, *, max_bytes: int, max_pixels: int
) -> PatientFiles:
    """One patient's patches from a zip (checked first); `UploadError` if none is usable."""
    check_directory(data, limits)
    try:
        archive = zipfile.ZipFile(BytesIO(data))
    except Exception as error:  # noqa: BLE001 - any parse failure is "not a zip", never a 500
        raise UploadError(f"not a readable zip archive ({error})") from None
    with archive:
        try:
            entries = check_zip(archive, limits)
        except UploadError:
            raise
        except Exception as error:  # noqa: BLE001 - a directory zipfile accepted but odd
            raise UploadError(
                f"not a readable zip directory ({type(error).__name__}: {error})"
            ) from None
        rows, patches, errors, skipped = [], [], [], 0
        seen: dict[tuple[int, int], str] = {}
        unpacked = [0]  # bytes really decompressed so far, all members together
        for entry in entries:
            path = PurePosixPath(entry.filename.replace("\\", "/"))
            if any(part in LITTER_NAMES or part.startswith(".") for part in path.parts):
                skipped += 1
                continue
            match = PATCH_NAME.match(path.name)
            if match is None:
                errors.append(FileError(str(path), f"not a Kaggle patch name ({NAME_PATTERN})"))
                continue
            pid, x, y, label = match[1], int(match[2]), int(match[3]), int(match[4])
            if x < 1 or y < 1:
                errors.append(FileError(str(path), "positions are 1-based: x and y must be >= 1"))
                continue
            folder = path.parent.name
            if folder in ("0", "1") and int(folder) != label:
                errors.append(FileError(str(path), f"in folder {folder} but named class{label}"))
                continue
            # The patient map's cell (histomlf.explain.patient_map.cell_of): one patch each.
            cell = ((y - 1) // PATCH_SIZE, (x - 1) // PATCH_SIZE)
            if cell in seen:
                errors.append(FileError(
                    str(path), f"same position (50-px cell) as {seen[cell]}: skipped"
                ))
                continue
            if entry.compress_type not in READ_METHODS:
                method = METHOD_NAMES.get(entry.compress_type, f"method {entry.compress_type}")
                errors.append(FileError(
                    str(path), f"compressed with {method}: only stored and deflate are read"
                ))
                continue
            try:
                raw = _read_member(archive, entry, limits, max_bytes, unpacked)
                patch = patch_from_bytes(
                    raw, name=path.name, max_bytes=max_bytes, max_pixels=max_pixels
                )
            except UploadError:
                raise
            except InvalidPatchInput as error:
                errors.append(FileError(str(path), _reason(error, path.name)))
                continue
            except Exception as error:  # noqa: BLE001 - one bad member never breaks the page
                errors.append(FileError(
                    str(path), f"corrupt zip entry: {type(error).__name__}: {error}"
                ))
                continue
            seen[cell] = path.name
            rows.append({"file": path.name, "patient_id": pid, "x": x, "y": y, "label": label})
            patches.append(patch)
    if not rows:
        raise UploadError(
            f"no usable patch in the zip (expected files named {NAME_PATTERN})", errors=errors
        )
    frame = pd.DataFrame(rows)
    patients = sorted(frame["patient_id"].unique())
    if len(patients) > 1:
        shown = ", ".join(patients[:5]) + (", ..." if len(patients) > 5 else "")
        raise UploadError(
            f"one patient per zip: found {len(patients)} ({shown}); zip one patient's folder",
            errors=errors,
        )
    span = [(frame[axis].max() - frame[axis].min()) // PATCH_SIZE + 1 for axis in ("x", "y")]
    if max(span) > limits.slide_cells:
        raise UploadError(
            f"the patches' positions span {span[0]:,} x {span[1]:,} cells of 50 px, more than "
            f"{limits.slide_cells:,} per side: not one slide",
            errors=errors,
        )
    return PatientFiles(patients[0], frame, _stack(patches), errors, skipped)


def _read_member(
    archive: zipfile.ZipFile, entry: zipfile.ZipInfo, limits: Limits, max_bytes: int,
    unpacked: list[int],
) -> bytes:
    """A member's bytes, at most `max_bytes + 1`, read in chunks; the real output is counted.

    Past `max_bytes` the member is not a patch (the caller's size check names it); the running
    total over the archive (`unpacked[0]`) and the member's real ratio refuse the whole zip.
    """
    chunks, size = [], 0
    with archive.open(entry) as member:
        while size <= max_bytes:
            chunk = member.read(min(READ_CHUNK, max_bytes + 1 - size))
            if not chunk:
                break
            size += len(chunk)
            unpacked[0] += len(chunk)
            if unpacked[0] > limits.zip_bytes:
                raise UploadError(
                    f"the zip unpacks to more than the {limits.zip_bytes // MB} MB allowed "
                    f"(its directory said {sum(i.file_size for i in archive.infolist()):,} "
                    "bytes): send one patient's folder",
                    status=413,
                )
            chunks.append(chunk)
    ratio = size / max(entry.compress_size, 1)
    if size > RATIO_FLOOR_BYTES and ratio > limits.zip_ratio:
        raise UploadError(
            f"zip entry {entry.filename!r} expands {ratio:,.0f}x (limit {limits.zip_ratio:g}x): "
            "a zip bomb? refused"
        )
    return b"".join(chunks)


def _stack(patches: list[np.ndarray]) -> np.ndarray:
    return np.stack(patches) if patches else np.zeros((0, 50, 50, 3), np.uint8)


def _reason(error: InvalidPatchInput, name: str) -> str:
    """The message without the file name it starts with (the page shows the name apart)."""
    text = str(error)
    return text[len(name) + 2 :] if text.startswith(f"{name}: ") else text
