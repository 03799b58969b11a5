"""Packed patch cache: every patch of a manifest decoded once into one raw uint8 file.

Decoding 50x50 PNGs costs far more than the model needs to read them, so the first run decodes
the whole manifest in parallel (with the pipeline's own decode + padding, hence the same pixels)
into `patches.u8` (N x 50 x 50 x 3, row order = manifest order) beside `labels.npy` and
`paths.txt`. Later epochs and runs read patches by row index with positional reads (`os.preadv`)
into fresh buffers: nothing is memory-mapped, so resident memory stays flat however large the
file is (a touched mmap would count its file pages in RSS).

The cache folder is named by a digest of the manifest's content columns and is built in a
temporary folder that is renamed into place only when complete, so a crash never leaves a
half-written cache under the real name. One cache serves every split: `subset(rows)` maps a
split's rows to file rows by path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from histomlf.data.patches import CHANNELS, PATCH_SIZE
from histomlf.errors import UserError
from histomlf.memory import release_freed_memory

FORMAT_VERSION = 1
PATCH_SHAPE = (PATCH_SIZE, PATCH_SIZE, CHANNELS)
ROW_BYTES = PATCH_SIZE * PATCH_SIZE * CHANNELS
# What identifies a packed cache: the rows it holds, in order (not the dataset digest, which
# ignores paths and order).
CACHE_KEY_COLUMNS = ("path", "label", "width", "height")
PATCHES_FILE = "patches.u8"
LABELS_FILE = "labels.npy"
PATHS_FILE = "paths.txt"
META_FILE = "meta.json"
TENSOR_ALIGNMENT = 64
DIGEST_CHUNK_ROWS = 16_384


RowDecoder = Callable[[pd.DataFrame], Iterable[np.ndarray]]


class PackedCacheError(UserError, RuntimeError):
    """A packed cache folder is incomplete or inconsistent; the message says what is wrong."""


def manifest_digest(rows: pd.DataFrame) -> str:
    """SHA-256 of the rows' content columns (path, label and, when present, width/height).

    Same manifest rows in the same order, same digest; any added, removed, relabelled or
    reordered row gives a new cache.
    """
    if "path" not in rows.columns or "label" not in rows.columns:
        raise ValueError("a manifest needs 'path' and 'label' columns")
    columns = [c for c in CACHE_KEY_COLUMNS if c in rows.columns]
    digest = hashlib.sha256(f"packed-v{FORMAT_VERSION}:{len(rows)}:{','.join(columns)}\n".encode())
    # A slice at a time: the text of 277k rows at once held ~100 MB of short-lived strings,
    # which the allocator keeps for the rest of the process.
    for start in range(0, len(rows), DIGEST_CHUNK_ROWS):
        part = rows.iloc[start : start + DIGEST_CHUNK_ROWS]
        text = part[columns[0]].astype(str)
        for column in columns[1:]:
            text = text + "\t" + part[column].astype(str)
        if start:
            digest.update(b"\n")
        digest.update("\n".join(text.tolist()).encode())
    return digest.hexdigest()


def aligned_empty(shape: tuple[int, ...], alignment: int = TENSOR_ALIGNMENT) -> np.ndarray:
    """An uninitialised uint8 array whose data starts on an `alignment`-byte boundary.

    TensorFlow adopts an aligned numpy result of `tf.numpy_function` as is; an unaligned one
    (numpy's default 16-byte alignment) is copied once more.
    """
    size = int(np.prod(shape))
    raw = np.empty(size + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + size].reshape(shape)


class PackedPatches:
    """Random access to the patches of one packed cache, through a row-index view.

    `len(self)` and positions passed to `read` refer to the view's rows: the whole file when
    opened, a split's rows after `subset(rows)`.
    """

    def __init__(self, directory: Path, index: np.ndarray | None = None) -> None:
        self.directory = Path(directory)
        meta = _read_meta(self.directory)
        self.digest: str = meta["digest"]
        self.file_rows: int = int(meta["count"])
        self._all_labels = np.load(self.directory / LABELS_FILE)
        if index is None:
            index = np.arange(self.file_rows, dtype=np.int64)
        self._index = np.asarray(index, dtype=np.int64)
        self._fd = os.open(self.directory / PATCHES_FILE, os.O_RDONLY)
        self._paths: pa.Array | None = None

    @classmethod
    def open(cls, directory: str | Path) -> PackedPatches:
        """Open a complete cache folder; raises `PackedCacheError` if it is not one."""
        return cls(Path(directory))

    @classmethod
    def build_or_open(
        cls, rows: pd.DataFrame, cache_dir: str | Path, decode: RowDecoder
    ) -> PackedPatches:
        """Open the cache of `rows` under `cache_dir`, or build it with `decode`.

        `decode(rows)` yields uint8 [k, 50, 50, 3] batches in row order (the pipeline's PNG
        decoder: `histomlf.data.pipeline.open_packed` passes it). A folder under the digest's
        name that fails validation is removed and rebuilt.
        """
        cache_dir = Path(cache_dir)
        digest = manifest_digest(rows)
        final = cache_dir / digest
        if final.exists():
            try:
                return cls.open(final)
            except PackedCacheError:
                shutil.rmtree(final, ignore_errors=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{digest[:16]}-", dir=cache_dir))
        try:
            write_packed(
                staging, decode(rows), rows["label"].to_numpy(), rows["path"].astype(str), digest
            )
            try:
                os.rename(staging, final)
            except OSError:
                if not final.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return cls.open(final)

    def __len__(self) -> int:
        return int(self._index.size)

    @property
    def labels(self) -> np.ndarray:
        """Labels (uint8) of the view's rows, in view order."""
        return self._all_labels[self._index]

    @property
    def paths(self) -> pa.Array:
        """Path of every row of the file (not only the view), as an Arrow string array.

        Arrow, not a Python string per row: for the whole Kaggle set that was ~60 MB of
        objects and hash table held for the whole run.
        """
        if self._paths is None:
            self._paths = read_lines(self.directory / PATHS_FILE)[: self.file_rows]
        return self._paths

    def subset(self, rows: pd.DataFrame) -> PackedPatches:
        """A view whose position i is `rows.iloc[i]`, found by path; every path must be packed."""
        wanted = pa.array(rows["path"].astype(str), type=pa.large_string())
        if len(wanted) == self.file_rows and wanted.equals(self.paths):
            return PackedPatches(self.directory, None)
        # Paths are unique in every cache (`write_packed` refuses duplicates).
        found = pc.index_in(wanted, value_set=self.paths)
        release_freed_memory()  # Arrow's pool keeps the lookup's hash table (~80 MB at 200k)
        if found.null_count:
            raise KeyError(
                f"{found.null_count} of {len(rows)} rows not in packed cache {self.digest[:12]}"
            )
        view = PackedPatches(self.directory, found.to_numpy().astype(np.int64))
        view._paths = self._paths
        return view

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Copy the patches at view `positions` into a new [k, 50, 50, 3] uint8 array.

        One positional read per run of consecutive file rows, straight into its slot of the
        output: a batch in evaluation order is a single read, a shuffled batch one per row.
        """
        file_rows = self._index[np.asarray(positions, dtype=np.int64).ravel()]
        count = file_rows.size
        buffer = aligned_empty((count, *PATCH_SHAPE))
        if count == 0:
            return buffer
        target = memoryview(buffer.reshape(-1))
        breaks = np.flatnonzero(np.diff(file_rows) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [count])).tolist()
        pread = os.preadv
        for start, end, row in zip(starts.tolist(), ends, file_rows[starts].tolist(), strict=True):
            chunk = target[start * ROW_BYTES : end * ROW_BYTES]
            if pread(self._fd, [chunk], row * ROW_BYTES) != len(chunk):
                self._read_fully(chunk, row * ROW_BYTES)
        return buffer

    def _read_fully(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise PackedCacheError(f"{self.directory}: short read at byte {offset + done}")
            done += got

    def close(self) -> None:
        """Release the file descriptor (also done when the object is collected)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):
            pass

    def __repr__(self) -> str:
        return f"PackedPatches({self.directory}, rows={len(self)} of {self.file_rows})"


def read_lines(path: Path) -> pa.Array:
    """The `\\n`-separated lines of a text file as an Arrow large-string array, without
    a Python object per line (the bytes are cut in numpy and handed to Arrow as buffers)."""
    data = np.fromfile(path, dtype=np.uint8)
    newlines = np.flatnonzero(data == ord("\n"))
    lengths = np.diff(np.concatenate(([-1], newlines, [data.size]))) - 1
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    characters = np.delete(data, newlines)
    return pa.LargeStringArray.from_buffers(
        len(lengths), pa.py_buffer(offsets), pa.py_buffer(characters)
    )


def _read_meta(directory: Path) -> dict:
    try:
        meta = json.loads((directory / META_FILE).read_text())
        count = int(meta["count"])
        sizes_ok = (
            meta.get("version") == FORMAT_VERSION
            and meta.get("row_bytes") == ROW_BYTES
            and (directory / PATCHES_FILE).stat().st_size == count * ROW_BYTES
            and (directory / PATHS_FILE).is_file()
            and np.load(directory / LABELS_FILE, mmap_mode="r").shape == (count,)
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PackedCacheError(f"{directory}: not a complete packed cache ({error})") from error
    if not sizes_ok:
        raise PackedCacheError(f"{directory}: packed cache files disagree with {META_FILE}")
    return meta


def write_packed(
    directory: str | Path,
    batches: Iterable[np.ndarray],
    labels: np.ndarray,
    paths: Iterable[str],
    digest: str,
) -> None:
    """Write a cache folder from uint8 [k, 50, 50, 3] batches in row order; meta.json goes last.

    `build_or_open` calls it on a staging folder; benchmarks use it to pack synthetic rows.
    """
    paths = pa.array(
        list(paths) if not isinstance(paths, pd.Series) else paths, type=pa.large_string()
    )
    if pc.count_distinct(paths).as_py() != len(paths):
        raise PackedCacheError("duplicate paths: every packed row needs its own path")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(directory / PATCHES_FILE, "wb") as handle:
        for images in batches:
            if images.dtype != np.uint8 or images.shape[1:] != PATCH_SHAPE:
                raise PackedCacheError(f"want uint8 [k,50,50,3], got {images.dtype} {images.shape}")
            handle.write(np.ascontiguousarray(images).data)
            written += len(images)
        handle.flush()
        os.fsync(handle.fileno())
    if written != len(labels):
        raise PackedCacheError(f"wrote {written} patches for {len(labels)} rows")
    np.save(directory / LABELS_FILE, np.asarray(labels).astype(np.uint8))
    (directory / PATHS_FILE).write_text("\n".join(paths.to_pylist()))
    meta = {"version": FORMAT_VERSION, "digest": digest, "count": written, "row_bytes": ROW_BYTES}
    (directory / META_FILE).write_text(json.dumps(meta))
