"""Scan an IDC data folder into a manifest of usable patches and a quarantine of the rest.

The Kaggle archive holds `<pid>/<0|1>/<pid>_idx5_x<X>_y<Y>_class<C>.png` and, again, a second
top folder `IDC_regular_ps50_idx5/<pid>/...`. Both are read as one dataset: a file name found
twice with the same bytes counts once, a patient under both folders is one patient. Every
patch is decoded fully once, so the pipeline never meets a broken file; anything unusable goes
to the quarantine with a one-line reason instead of crashing the scan.

The work is split by patient (large patients into shards by file name, so that every copy of
a name lands in the same job and is decoded at most once per distinct content) and runs in
worker processes that return only small rows, so memory does not grow with pixel data.
Workers are spawned, not forked, so scanning from a process that already runs TensorFlow is
safe; pandas is imported only in the parent to keep them light.

The scan does not trust the file system: only regular files (or links to them) of at most
`MAX_PATCH_BYTES` are read, never more than that plus one byte, and a FIFO, socket or device
named like a patch is quarantined from its type before anything opens it. Every folder walk
remembers the (device, inode) of the folders it entered, so a link loop (`ln -s . a`) ends.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import sys
import time
import warnings
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from histomlf.data.patches import MAX_PATCH_PIXELS, PATCH_SIZE, to_rgb_array
from histomlf.errors import UserError
from histomlf.paths import cache_root

if TYPE_CHECKING:
    import pandas as pd

SCAN_VERSION = 1
SECOND_TOP_FOLDER = "IDC_regular_ps50_idx5"
PATCH_NAME = re.compile(r"^(\d+)_idx5_x(\d{1,9})_y(\d{1,9})_class([01])\.png$", re.ASCII)
PATIENT_FOLDER = re.compile(r"[0-9]+")
NAME_PATTERN = "<pid>_idx5_x<X>_y<Y>_class<0|1>.png"
LITTER_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX", ".Spotlight-V100"})
CLASS_FOLDERS = ("0", "1")
# Files per job: big enough to amortise process hand-offs, small enough to balance two cores.
JOB_FILES = 4000
# A 50x50 RGB PNG is at most ~7.5 KB of pixels plus chunks: anything above 1 MB is not a patch
# (and a link to /dev/zero is not read until memory runs out).
MAX_PATCH_BYTES = 1 << 20
MANIFEST_FILE = "manifest.csv"
QUARANTINE_FILE = "quarantine.csv"
STATS_FILE = "scan.json"


class ScanError(UserError, ValueError):
    """The data folder cannot be scanned at all (missing, empty, no patches)."""


@dataclass
class ScanResult:
    """A scan's kept patches, its quarantined files (path, reason) and its counts."""

    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- the walk (parent process)


def _is_litter(name: str) -> bool:
    return name in LITTER_NAMES or name.startswith(".")


def _is_patient(name: str) -> bool:
    return PATIENT_FOLDER.fullmatch(name) is not None


def _is_dir(entry: os.DirEntry) -> bool:
    """`entry.is_dir()`, but False where a link cannot be followed (`x -> x` raises ELOOP)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _folder_id(path: str | os.PathLike) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the folder `path` leads to, the same through any link; None if gone."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _enter(path: str | os.PathLike, seen: set[tuple[int, int]]) -> bool:
    """Whether a walk should enter the folder `path`: not when it (or a link to it) was entered
    before, which is what ends a link loop such as `ln -s . a`."""
    key = _folder_id(path)
    if key is None or key in seen:
        return False
    seen.add(key)
    return True


def _top_folders(data_dir: Path) -> list[Path]:
    """The folders that hold patient folders: DATA_DIR itself, then e.g. IDC_regular_ps50_idx5.

    A child that is DATA_DIR again (a link such as `a -> .`) or another child again is skipped.
    """
    roots = [data_dir]
    seen: set[tuple[int, int]] = set()
    _enter(data_dir, seen)
    with os.scandir(data_dir) as entries:
        children = sorted(
            (
                e
                for e in entries
                if _is_dir(e) and not _is_patient(e.name) and not _is_litter(e.name)
            ),
            key=lambda e: (e.name != SECOND_TOP_FOLDER, e.name),
        )
    for child in children:
        if not _enter(child.path, seen):
            continue
        try:
            with os.scandir(child.path) as entries:
                if any(_is_patient(e.name) and _is_dir(e) for e in entries):
                    roots.append(Path(child.path))
        except OSError:
            continue  # an unreadable side folder holds no patients we could scan
    return roots


def _patient_folders(roots: list[Path]) -> dict[str, list[str]]:
    """Patient id -> its folders under every top folder, first top folder first (a folder
    reached twice, e.g. through a link, counts once)."""
    patients: dict[str, list[str]] = {}
    seen: set[tuple[int, int]] = set()
    for root in roots:
        with os.scandir(root) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if _is_patient(entry.name) and _is_dir(entry) and _enter(entry.path, seen):
                    patients.setdefault(entry.name, []).append(entry.path)
    return patients


def _count_files(folders: list[str]) -> int:
    """Entries in the class folders, to size jobs and the progress bar; no stat calls."""
    total = 0
    for folder in folders:
        for label in CLASS_FOLDERS:
            try:
                total += len(os.listdir(os.path.join(folder, label)))
            except OSError:
                pass
    return total


def _top_level_files(roots: list[Path]) -> tuple[list[tuple[str, str]], int]:
    """Files lying directly in a top folder: PNGs are quarantined, the rest ignored."""
    stray, ignored = [], 0
    for root in roots:
        with os.scandir(root) as entries:
            for entry in entries:
                if _is_dir(entry):
                    continue
                if entry.name.lower().endswith(".png") and not _is_litter(entry.name):
                    reason = "misplaced: not inside a <pid>/<0|1>/ folder"
                    stray.append((entry.path, reason))
                else:
                    ignored += 1
    return stray, ignored


# ---------------------------------------------------------------- one job (worker process)


def check_patch_bytes(data: bytes) -> tuple[int, int] | str:
    """Decode `data` fully; return its (width, height), or the reason it is not a patch.

    The declared size is checked from the header before any pixel is decoded, so a
    decompression bomb costs microseconds, not gigabytes.
    """
    if not data:
        return "empty file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_PATCH_PIXELS:
                    return (
                        f"decompression bomb: header declares {width}x{height} px, "
                        f"far beyond a patch (limit {MAX_PATCH_PIXELS} px)"
                    )
                image.load()
                if width > PATCH_SIZE or height > PATCH_SIZE:
                    # Kaggle patches are at most 50x50; the pipeline pads, it never resizes.
                    return f"larger than a {PATCH_SIZE}x{PATCH_SIZE} patch: {width}x{height} px"
                if image.mode != "RGB":
                    to_rgb_array(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return f"decompression bomb: {error}"
    except Exception as error:  # any decoder failure means the file is unusable
        kind = "truncated image" if "truncat" in str(error).lower() else "not a readable image"
        return f"{kind}: {type(error).__name__}: {error}"
    if width <= 0 or height <= 0:
        return f"not a readable image: empty size {width}x{height}"
    return width, height


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return kind
    return f"a special file (mode {mode:o})"


def _refusal(info: os.stat_result, path: str, cap: int) -> str | None:
    """Why a file with this status is not read as a patch, or None when it may be."""
    if not stat.S_ISREG(info.st_mode):
        link = "a link to " if os.path.islink(path) else ""
        return f"not a regular file: {link}{_kind(info.st_mode)}"
    if info.st_size > cap:
        return f"too large for a patch: {info.st_size} bytes (limit {cap} bytes)"
    return None


def read_patch_file(path: str, *, listed_regular: bool = False, cap: int = MAX_PATCH_BYTES
                    ) -> bytes | str:
    """The bytes of the patch file at `path`, or the reason (one line) they were not read.

    Only a regular file, or a link to one, of at most `cap` bytes is read, and never more than
    `cap + 1` bytes: a FIFO, socket or device (a link to /dev/zero) is refused from its status
    before anything opens it; the open is non-blocking, so a FIFO swapped in meanwhile cannot
    hang the scan, and the opened file's own status is checked again. `listed_regular` says
    the folder listing already showed a plain regular file (no link), which saves one stat.
    """
    try:
        if not listed_regular:
            reason = _refusal(os.stat(path), path, cap)
            if reason:
                return reason
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        return f"unreadable file: {error.strerror or error}"
    try:
        info = os.fstat(fd)
        reason = _refusal(info, path, cap)
        if reason:
            return reason
        chunks, total, want = [], 0, info.st_size + 1
        while total <= cap:
            chunk = os.read(fd, min(want, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            want = 1 << 16
    except OSError as error:
        return f"unreadable file: {error.strerror or error}"
    finally:
        os.close(fd)
    if total > cap:
        return f"too large for a patch: more than {cap} bytes (it grew while read)"
    return b"".join(chunks)


def _listing(folder: str, out: dict[str, Any], keep: Any) -> list[os.DirEntry]:
    """The entries of `folder`; an unreadable one is quarantined (by the one shard that keeps
    its name) and yields nothing, instead of ending the scan."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as error:
        if keep(os.path.basename(folder)):
            out["quarantine"].append((folder, f"unreadable folder: {error.strerror or error}"))
        return []


def _walk_misplaced(
    folder: str, why: str, out: dict[str, Any], keep: Any, seen: set[tuple[int, int]]
) -> None:
    """Quarantine PNGs found where no patch belongs (nothing is opened); ignore anything else.

    Iterative, and a folder already entered (`seen`, by device and inode) is not entered again,
    so a link loop or a deep tree ends the walk instead of the scan.
    """
    stack = [folder] if _enter(folder, seen) else []
    while stack:
        for entry in _listing(stack.pop(), out, keep):
            if _is_litter(entry.name):
                if keep(entry.name):
                    out["ignored"] += 1
            elif _is_dir(entry):
                if _enter(entry.path, seen):
                    stack.append(entry.path)
            elif keep(entry.name):
                out["files"] += 1
                if entry.name.lower().endswith(".png"):
                    out["quarantine"].append((entry.path, f"misplaced: {why}"))
                else:
                    out["ignored"] += 1


def _candidates(pid: str, folders: list[str], out: dict[str, Any], keep: Any) -> dict:
    """File name -> [(path, listed as a plain regular file), ...] for the well-placed,
    well-named PNGs of one patient."""
    names: dict[str, list[tuple[str, bool]]] = {}
    seen: set[tuple[int, int]] = set()
    listings = []
    for folder in folders:
        _enter(folder, seen)
        top = sorted(_listing(folder, out, keep), key=lambda e: e.name)
        listings.append(top)
        for entry in top:
            if entry.name in CLASS_FOLDERS and _is_dir(entry):
                _enter(entry.path, seen)  # so that no walk enters a class folder sideways
    for top in listings:
        for entry in top:
            if _is_litter(entry.name):
                if keep(entry.name):
                    out["ignored"] += 1
            elif _is_dir(entry) and entry.name in CLASS_FOLDERS:
                _class_folder(pid, entry.name, entry.path, names, out, keep, seen)
            elif _is_dir(entry):
                _walk_misplaced(entry.path, "not inside a class folder 0 or 1", out, keep, seen)
            elif keep(entry.name):
                out["files"] += 1
                if entry.name.lower().endswith(".png"):
                    out["quarantine"].append(
                        (entry.path, "misplaced: not inside a class folder 0 or 1")
                    )
                else:
                    out["ignored"] += 1
    return names


def _class_folder(
    pid: str,
    label: str,
    folder: str,
    names: dict,
    out: dict[str, Any],
    keep: Any,
    seen: set[tuple[int, int]],
) -> None:
    for entry in _listing(folder, out, keep):
        name = entry.name
        if _is_dir(entry) and not _is_litter(name):
            # every shard walks it and keeps its own names, as for the files listed here
            _walk_misplaced(entry.path, "nested below a class folder", out, keep, seen)
            continue
        if not keep(name):
            continue
        if _is_litter(name):
            out["ignored"] += 1
            continue
        out["files"] += 1
        if not name.lower().endswith(".png"):
            out["ignored"] += 1
            continue
        match = PATCH_NAME.match(name)
        if match is None:
            out["quarantine"].append((entry.path, f"unparsable name: expected {NAME_PATTERN}"))
        elif match[1] != pid:
            out["quarantine"].append(
                (entry.path, f"patient mismatch: name says {match[1]} but folder is {pid}")
            )
        elif match[4] != label:
            out["quarantine"].append(
                (entry.path, f"label mismatch: name says class{match[4]} but folder is {label}")
            )
        else:
            # the listing's file type (d_type) costs no stat; links and the rest get one
            regular = entry.is_file(follow_symlinks=False)
            names.setdefault(name, []).append((entry.path, regular))


def _scan_job(job: tuple[str, list[str], int, int]) -> dict[str, Any]:
    """Scan one patient (or one shard of its file names); return small rows only."""
    pid, folders, shard, shards = job

    def keep(name: str) -> bool:
        return shards == 1 or zlib.crc32(name.encode()) % shards == shard

    out: dict[str, Any] = {"files": 0, "ignored": 0, "duplicates": 0, "quarantine": []}
    columns: dict[str, list] = {
        k: [] for k in ("path", "x", "y", "label", "width", "height", "sha1")
    }
    for name, paths in _candidates(pid, folders, out, keep).items():
        verdicts: dict[str, tuple[int, int] | str] = {}
        kept_path = kept_sha1 = None
        for path, regular in paths:
            data = read_patch_file(path, listed_regular=regular)
            if isinstance(data, str):
                out["quarantine"].append((path, data))
                continue
            sha1 = hashlib.sha1(data).hexdigest()
            verdict = verdicts.get(sha1)
            if verdict is None:
                verdict = verdicts[sha1] = check_patch_bytes(data)
            if isinstance(verdict, str):
                out["quarantine"].append((path, verdict))
            elif kept_path is None:
                kept_path, kept_sha1 = path, sha1
                match = PATCH_NAME.match(name)
                columns["path"].append(path)
                columns["x"].append(int(match[2]))
                columns["y"].append(int(match[3]))
                columns["label"].append(int(match[4]))
                columns["width"].append(verdict[0])
                columns["height"].append(verdict[1])
                columns["sha1"].append(sha1)
            elif sha1 == kept_sha1:
                out["duplicates"] += 1
            else:
                out["quarantine"].append(
                    (path, f"conflicting duplicate: same name as {kept_path}, different bytes")
                )
    out["pid"] = pid
    out["columns"] = columns
    return out


# ---------------------------------------------------------------- the scan


def _jobs(patients: dict[str, list[str]]) -> tuple[list[tuple[str, list[str], int, int]], int]:
    """One job per patient, or per shard of a big one; largest first for balance."""
    sized = []
    total = 0
    for pid, folders in patients.items():
        count = _count_files(folders)
        total += count
        shards = max(1, -(-count // JOB_FILES))
        sized.extend((count / shards, (pid, folders, shard, shards)) for shard in range(shards))
    sized.sort(key=lambda item: -item[0])
    return [job for _, job in sized], total


def _run_jobs(
    jobs: list[tuple[str, list[str], int, int]], workers: int, total: int, progress: bool
) -> Iterator[dict[str, Any]]:
    from tqdm import tqdm

    with tqdm(total=total, unit="file", desc="scan", file=sys.stderr, disable=not progress) as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                result = _scan_job(job)
                bar.update(result["files"])
                yield result
            return
        context = get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
            futures = {pool.submit(_scan_job, job) for job in jobs}
            for future in as_completed(futures):
                futures.discard(future)  # let each job's rows go once they are merged
                result = future.result()
                bar.update(result["files"])
                yield result


def _check_data_dir(data_dir: str | Path) -> Path:
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise ScanError(f"data dir not found: {path}")
    if not path.is_dir():
        raise ScanError(f"data dir is not a folder: {path}")
    with os.scandir(path) as entries:
        empty = next(entries, None) is None
    if empty:
        raise ScanError(f"data dir is empty: {path} (expected <pid>/<0|1>/{NAME_PATTERN})")
    return path.resolve()


def scan_dataset(
    data_dir: str | Path, *, workers: int | None = None, progress: bool | None = None
) -> ScanResult:
    """Scan `data_dir` (Kaggle layout) into a manifest, a quarantine and counts.

    `workers` defaults to `os.cpu_count()`; `progress` (a tqdm bar on stderr) defaults to
    whether stderr is a terminal. Raises `ScanError` when there is nothing to scan.
    """
    import pandas as pd

    from histomlf.data.manifest import QUARANTINE_COLUMNS, _typed, dataset_digest

    start = time.perf_counter()
    root = _check_data_dir(data_dir)
    workers = max(1, workers or os.cpu_count() or 1)
    if progress is None:
        progress = sys.stderr.isatty()
    roots = _top_folders(root)
    patients = _patient_folders(roots)
    quarantine, ignored = _top_level_files(roots)
    jobs, total = _jobs(patients)

    columns: dict[str, list] = {}
    pids: list[str] = []
    counts = {"files": len(quarantine) + ignored, "ignored": ignored, "duplicates": 0}
    for result in _run_jobs(jobs, workers, total, progress):
        for key in counts:
            counts[key] += result[key]
        quarantine.extend(result["quarantine"])
        for key, values in result["columns"].items():
            columns.setdefault(key, []).extend(values)
        pids.extend([result["pid"]] * len(result["columns"]["path"]))

    if not pids:
        detail = (
            f"; {len(quarantine)} file(s) quarantined, e.g. {quarantine[0][0]}: {quarantine[0][1]}"
            if quarantine
            else ""
        )
        raise ScanError(f"no usable patches ({NAME_PATTERN}) found in {root}{detail}")
    manifest = pd.DataFrame({"patient_id": pids, **columns})
    manifest["_pid"] = manifest["patient_id"].astype("int64")
    manifest = manifest.sort_values(["_pid", "x", "y", "label", "path"], kind="mergesort")
    manifest = _typed(manifest.drop(columns="_pid"))
    quarantine_frame = pd.DataFrame(sorted(quarantine), columns=list(QUARANTINE_COLUMNS))

    positives = int(manifest["label"].sum())
    stats: dict[str, Any] = {
        "data_dir": str(root),
        "top_folders": [str(path) for path in roots],
        "files_seen": counts["files"],
        "patches": len(manifest),
        "patients": int(manifest["patient_id"].nunique()),
        "positives": positives,
        "negatives": len(manifest) - positives,
        "border_patches": int(((manifest["width"] < 50) | (manifest["height"] < 50)).sum()),
        "duplicates_skipped": counts["duplicates"],
        "quarantined": len(quarantine_frame),
        "ignored": counts["ignored"],
        "dataset_digest": dataset_digest(manifest),
        "workers": workers,
        "scan_version": SCAN_VERSION,
    }
    stats["seconds"] = round(time.perf_counter() - start, 3)
    return ScanResult(manifest=manifest, quarantine=quarantine_frame, stats=stats)


# ---------------------------------------------------------------- files and the cache


def _replace_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_scan(result: ScanResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write manifest.csv, quarantine.csv and scan.json (the counts) into `out_dir`."""
    from histomlf.data.manifest import write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path, quarantine_path = out / MANIFEST_FILE, out / QUARANTINE_FILE
    _replace_atomically(manifest_path, lambda p: write_manifest(result.manifest, p))
    _replace_atomically(quarantine_path, lambda p: result.quarantine.to_csv(p, index=False))
    stats = {**result.stats, "manifest": str(manifest_path), "quarantine": str(quarantine_path)}
    _replace_atomically(out / STATS_FILE, lambda p: p.write_text(json.dumps(stats, indent=2)))
    return manifest_path, quarantine_path


def scan_cache_dir(data_dir: str | Path) -> Path:
    """The default output folder of a scan: one per resolved data folder, in the cache root
    (`$HISTOMLF_CACHE` or `./.histomlf-cache`), never beside the maybe read-only data."""
    key = hashlib.sha256(str(Path(data_dir).expanduser().resolve()).encode()).hexdigest()[:16]
    return cache_root() / "scans" / key


def data_fingerprint(data_dir: str | Path) -> str:
    """A hash of every file's relative path, size and mtime: changes when the data does.

    An entry that cannot be read (a dangling link, a file that vanished between listing and
    reading, a folder without permission) is hashed as missing rather than failing: the scan
    itself then quarantines it when it is named like a patch and ignores it otherwise. No file
    is opened, and a folder reached twice (a link loop) is entered once, as in the scan.
    """
    root = _check_data_dir(data_dir)
    digest = hashlib.sha256()
    stack = [str(root)]
    prefix = len(str(root)) + 1
    seen: set[tuple[int, int]] = set()
    _enter(root, seen)
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError:
            digest.update(f"{folder[prefix:]}\0unreadable folder\n".encode())
            continue
        for entry in entries:
            if _is_dir(entry):
                if _enter(entry.path, seen):
                    stack.append(entry.path)
                else:  # a link loop or a folder reached twice: walked once, named here
                    digest.update(f"{entry.path[prefix:]}\0folder seen before\n".encode())
                continue
            try:
                info = entry.stat()
            except OSError:
                digest.update(f"{entry.path[prefix:]}\0missing\n".encode())
                continue
            digest.update(f"{entry.path[prefix:]}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _load_cached(out: Path, fingerprint: str) -> ScanResult | None:
    import pandas as pd

    from histomlf.data.manifest import ManifestError, read_manifest

    try:
        stats = json.loads((out / STATS_FILE).read_text())
        if stats.get("fingerprint") != fingerprint or stats.get("scan_version") != SCAN_VERSION:
            return None
        manifest = read_manifest(out / MANIFEST_FILE)
        quarantine = pd.read_csv(out / QUARANTINE_FILE, dtype=str, keep_default_na=False)
    except (OSError, ValueError, ManifestError):
        return None
    return ScanResult(manifest=manifest, quarantine=quarantine, stats={**stats, "cached": True})


def scan_to_cache(
    data_dir: str | Path,
    out: str | Path | None = None,
    workers: int | None = None,
    *,
    refresh: bool = False,
    progress: bool | None = None,
) -> ScanResult:
    """Scan `data_dir` and write the result to `out` (default: the cache), or reuse it.

    A previous scan in `out` is reused when the data folder's fingerprint (file list, sizes,
    mtimes) is unchanged, so training can call this on every run; `refresh` forces a rescan.
    """
    out_dir = Path(out) if out is not None else scan_cache_dir(data_dir)
    fingerprint = data_fingerprint(data_dir)
    if not refresh:
        cached = _load_cached(out_dir, fingerprint)
        if cached is not None:
            return cached
    result = scan_dataset(data_dir, workers=workers, progress=progress)
    result.stats["fingerprint"] = fingerprint
    result.stats["cached"] = False
    manifest_path, quarantine_path = write_scan(result, out_dir)
    result.stats["manifest"], result.stats["quarantine"] = str(manifest_path), str(quarantine_path)
    return result


def manifest_for(data: str | Path) -> tuple[Any, str, str]:
    """Rows to score from a dataset folder (scanned through the cache) or a manifest CSV,
    with the manifest's digest and the resolved source path."""
    from histomlf.data.manifest import dataset_digest, read_manifest

    path = Path(data)
    manifest = read_manifest(path) if path.is_file() else scan_to_cache(path).manifest
    return manifest, dataset_digest(manifest), str(path.resolve())
