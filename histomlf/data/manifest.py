"""The manifest: one row per usable patch, the single list every later step reads.

Columns: the absolute `path`, the `patient_id` (a string of digits, as in the file name), the
patch's top-left `x`/`y` on the slide, its `label` (1 = IDC), its decoded `width`/`height`
(border crops are smaller than 50x50) and the `sha1` of its bytes.

`dataset_digest` identifies the data by content, not by location: the same patches copied to
another folder give the same digest. It hashes every row (MLflow's own pandas digest only
looks at the first 10,000), so it can be logged with each run to tell datasets apart.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from histomlf.errors import UserError

MANIFEST_COLUMNS = ("path", "patient_id", "x", "y", "label", "width", "height", "sha1")
QUARANTINE_COLUMNS = ("path", "reason")
# What identifies the data itself; the path only says where it lies.
DIGEST_COLUMNS = ("patient_id", "x", "y", "label", "width", "height", "sha1")
_INT_COLUMNS = ("x", "y", "label", "width", "height")


class ManifestError(UserError, ValueError):
    """A manifest file is missing, unreadable or lacks required columns."""


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.loc[:, list(MANIFEST_COLUMNS)].copy()
    frame["path"] = frame["path"].astype(str)
    frame["patient_id"] = frame["patient_id"].astype(str)
    frame["sha1"] = frame["sha1"].astype(str)
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype("int64")
    return frame.reset_index(drop=True)


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> Path:
    """Write `manifest` as CSV with the standard columns, in their standard order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _typed(manifest).to_csv(path, index=False)
    return path


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV, checking its columns; patient ids stay strings."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path} (run `histomlf data scan DATA_DIR`)")
    try:
        frame = pd.read_csv(path, dtype={"patient_id": str, "path": str, "sha1": str})
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not a readable manifest CSV: {error}") from error
    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise ManifestError(
            f"{path}: not a manifest, missing column(s) {', '.join(missing)} "
            f"(expected {', '.join(MANIFEST_COLUMNS)})"
        )
    try:
        return _typed(frame)
    except (TypeError, ValueError) as error:
        raise ManifestError(f"{path}: bad value in an integer column: {error}") from error


def dataset_digest(manifest: pd.DataFrame) -> str:
    """Hex sha256 over the content-identifying columns of every row, in a canonical order."""
    missing = [column for column in DIGEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise ManifestError(f"cannot digest a manifest without column(s) {', '.join(missing)}")
    content = manifest.loc[:, list(DIGEST_COLUMNS)].astype({"patient_id": str, "sha1": str})
    content = content.sort_values(list(DIGEST_COLUMNS), kind="mergesort")
    digest = _HashWriter()
    # Streamed in chunks: the whole CSV text at once is ~100 bytes a row of short-lived memory.
    content.to_csv(digest, index=False, lineterminator="\n", chunksize=16_384)
    return digest.hexdigest()


class _HashWriter:
    """A text sink for `DataFrame.to_csv` that only hashes what it is given."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def write(self, text: str) -> int:
        self._sha.update(text.encode())
        return len(text)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()
