"""Patient-level train/val/test splits and k-fold, stratified by each patient's IDC share.

Patches of one patient are strongly correlated, so a patch-level split leaks and inflates every
metric; here whole patients go to one split. Fractions are fractions of patients. Patients
differ a lot in their share of IDC patches, so a plain random draw of 8 test patients can give a
test set with half or twice the overall positive rate. sklearn's StratifiedGroupKFold balances
patch counts per fold, not patient counts, and has no train/val/test fractions, so the
assignment is done here:

1. sort patients by positive share and deal the split labels over that order as a jittered,
   evenly spread sequence (each split gets patients from across the whole share range);
2. draw a number of such candidates from the seed and keep the one whose splits' patch-level
   positive rates are closest to the overall rate;
3. if it is still more than `TOLERANCE` off, improve it by the best patient swaps.

Everything is drawn from `numpy.random.default_rng(seed)`, so a seed gives the same split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from histomlf.errors import UserError

SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = ("patient_id", "split")
CANDIDATES = 64
TOLERANCE = 0.01
MAX_SWAPS = 200


class SplitError(UserError, ValueError):
    """A split cannot be made, read or applied; the message says why."""


def _pid_key(pid: str) -> tuple[int, int, str]:
    return (0, int(pid), "") if pid.isdigit() else (1, 0, pid)


def patient_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: patches, positives, in a stable patient order."""
    if manifest.empty:
        raise SplitError("cannot split an empty manifest")
    table = (
        manifest.assign(patient_id=manifest["patient_id"].astype(str))
        .groupby("patient_id", sort=False)["label"]
        .agg(patches="size", positives="sum")
        .reset_index()
    )
    order = sorted(range(len(table)), key=lambda i: _pid_key(table["patient_id"].iat[i]))
    return table.iloc[order].reset_index(drop=True)


def _objective(patches: np.ndarray, positives: np.ndarray, groups: np.ndarray, k: int) -> float:
    """The largest distance of a group's positive rate from the overall rate."""
    target = positives.sum() / patches.sum()
    n = np.bincount(groups, weights=patches, minlength=k)
    p = np.bincount(groups, weights=positives, minlength=k)
    used = n > 0
    return float(np.max(np.abs(p[used] / n[used] - target)))


def _dealt(share: np.ndarray, sizes: list[int], rng: np.random.Generator) -> np.ndarray:
    """Group labels dealt over patients sorted by share, each group spread evenly."""
    order = np.lexsort((rng.random(len(share)), share))
    slots = np.concatenate(
        [(np.arange(size) + rng.random(size)) / size for size in sizes if size > 0]
    )
    labels = np.concatenate([np.full(size, g) for g, size in enumerate(sizes) if size > 0])
    groups = np.empty(len(share), dtype=np.int64)
    groups[order] = labels[np.argsort(slots, kind="stable")]
    return groups


def _improve(patches: np.ndarray, positives: np.ndarray, groups: np.ndarray, k: int) -> None:
    """Swap patients between groups while a swap lowers the objective (in place)."""
    target = positives.sum() / patches.sum()
    for _ in range(MAX_SWAPS):
        current = _objective(patches, positives, groups, k)
        if current <= TOLERANCE:
            return
        n = np.bincount(groups, weights=patches, minlength=k)
        p = np.bincount(groups, weights=positives, minlength=k)
        best = (current, -1, -1)
        for a in range(k):
            for b in range(a + 1, k):
                ia, ib = np.flatnonzero(groups == a), np.flatnonzero(groups == b)
                if not len(ia) or not len(ib):
                    continue
                dn = patches[ib][None, :] - patches[ia][:, None]
                dp = positives[ib][None, :] - positives[ia][:, None]
                dev_a = np.abs((p[a] + dp) / (n[a] + dn) - target)
                dev_b = np.abs((p[b] - dp) / (n[b] - dn) - target)
                others = [abs(p[g] / n[g] - target) for g in range(k) if g not in (a, b) and n[g]]
                worst = np.maximum(np.maximum(dev_a, dev_b), max(others, default=0.0))
                i, j = np.unravel_index(np.argmin(worst), worst.shape)
                if worst[i, j] < best[0] - 1e-12:
                    best = (float(worst[i, j]), ia[i], ib[j])
        if best[1] < 0:
            return
        groups[best[1]], groups[best[2]] = groups[best[2]], groups[best[1]]


def _assign(table: pd.DataFrame, sizes: list[int], rng: np.random.Generator) -> np.ndarray:
    patches = table["patches"].to_numpy(dtype=np.float64)
    positives = table["positives"].to_numpy(dtype=np.float64)
    share = positives / patches
    k = len(sizes)
    candidates = [_dealt(share, sizes, rng) for _ in range(CANDIDATES)]
    groups = min(candidates, key=lambda g: _objective(patches, positives, g, k))
    _improve(patches, positives, groups, k)
    return groups


def _sizes(patients: int, val_fraction: float, test_fraction: float) -> list[int]:
    """Patients per split (train, val, test); each non-zero fraction gets at least one."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise SplitError(f"{name} must be in [0, 1), got {value}")
    val = max(1, round(val_fraction * patients)) if val_fraction > 0 else 0
    test = max(1, round(test_fraction * patients)) if test_fraction > 0 else 0
    if patients - val - test < 1:
        raise SplitError(
            f"{patients} patient(s) cannot give {val} val + {test} test patients and still "
            "leave one for training"
        )
    return [patients - val - test, val, test]


def _frame(table: pd.DataFrame, groups: np.ndarray, names: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(
        {"patient_id": table["patient_id"].astype(str).to_numpy(), "split": np.array(names)[groups]}
    )


def make_patient_split(
    manifest: pd.DataFrame,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
) -> pd.DataFrame:
    """Assign every patient to train/val/test; returns a frame of (patient_id, split)."""
    table = patient_table(manifest)
    sizes = _sizes(len(table), val_fraction, test_fraction)
    groups = _assign(table, sizes, np.random.default_rng(seed))
    return _frame(table, groups, SPLITS)


def patient_kfold(
    manifest: pd.DataFrame, k: int = 5, seed: int = 42, val_fraction: float = 0.15
) -> list[pd.DataFrame]:
    """k split frames: in frame i fold i is the test set, and `val_fraction` of all patients
    (drawn from the other folds, stratified the same way) is the validation set."""
    table = patient_table(manifest)
    if k < 2:
        raise SplitError(f"k-fold needs k >= 2, got {k}")
    if len(table) < k + 1:
        raise SplitError(f"{len(table)} patient(s) are too few for {k} folds")
    rng = np.random.default_rng(seed)
    extra = rng.permutation(k) < len(table) % k
    folds = _assign(table, [len(table) // k + int(e) for e in extra], rng)
    val = max(1, round(val_fraction * len(table))) if val_fraction > 0 else 0
    frames = []
    for fold in range(k):
        rest = np.flatnonzero(folds != fold)
        if len(rest) - val < 1:
            raise SplitError(f"val_fraction {val_fraction} leaves no training patients")
        inner = _assign(table.iloc[rest], [len(rest) - val, val], rng)
        groups = np.full(len(table), 2)
        groups[rest] = inner
        frames.append(_frame(table, groups, SPLITS))
    return frames


def apply_split(manifest: pd.DataFrame, split_df: pd.DataFrame) -> pd.DataFrame:
    """The manifest with a `split` column; every patient must be in the split."""
    mapping = dict(zip(split_df["patient_id"].astype(str), split_df["split"], strict=True))
    splits = manifest["patient_id"].astype(str).map(mapping)
    if splits.isna().any():
        missing = sorted(manifest.loc[splits.isna(), "patient_id"].astype(str).unique())
        raise SplitError(
            f"{len(missing)} patient(s) of the manifest are not in the split, e.g. "
            f"{', '.join(missing[:5])}: make a new split for this data"
        )
    return manifest.assign(split=splits.astype(str).to_numpy())


def split_summary(manifest: pd.DataFrame, split_df: pd.DataFrame) -> pd.DataFrame:
    """Per split: patients, patches, positives and positive rate."""
    with_split = apply_split(manifest, split_df)
    summary = with_split.groupby("split").agg(
        patients=("patient_id", "nunique"), patches=("label", "size"), positives=("label", "sum")
    )
    summary = summary.reindex([s for s in SPLITS if s in summary.index])
    summary["positive_rate"] = summary["positives"] / summary["patches"]
    return summary


def save_split(split_df: pd.DataFrame, path: str | Path) -> Path:
    """Write a split frame as CSV (patient_id, split)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _checked(split_df.loc[:, list(SPLIT_COLUMNS)], str(path)).to_csv(path, index=False)
    return path


def load_split(path: str | Path) -> pd.DataFrame:
    """Read and check a split CSV written by `save_split`."""
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"split file not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in SPLIT_COLUMNS if c not in frame.columns]
    if missing:
        raise SplitError(f"{path}: not a split file, missing column(s) {', '.join(missing)}")
    return _checked(frame.loc[:, list(SPLIT_COLUMNS)], str(path))


def _checked(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    frame = frame.astype(str).reset_index(drop=True)
    unknown = sorted(set(frame["split"]) - set(SPLITS))
    if unknown:
        raise SplitError(f"{source}: unknown split name(s) {', '.join(unknown)}")
    twice = frame["patient_id"][frame["patient_id"].duplicated()]
    if len(twice):
        raise SplitError(f"{source}: patient {twice.iloc[0]} is listed more than once")
    return frame


def split_digest(split_df: pd.DataFrame) -> str:
    """Hex sha256 of the (patient_id, split) pairs, independent of row order."""
    pairs = sorted(
        zip(split_df["patient_id"].astype(str), split_df["split"].astype(str), strict=True)
    )
    return hashlib.sha256("".join(f"{p},{s}\n" for p, s in pairs).encode()).hexdigest()
