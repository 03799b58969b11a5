"""Patient-level splits on the real sample: no patient leaks, positive rates stay close."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from histomlf.data.scan import scan_dataset
from histomlf.data.splits import (
    SplitError,
    apply_split,
    load_split,
    make_patient_split,
    patient_kfold,
    save_split,
    split_digest,
    split_summary,
)

TOLERANCE = 0.05


@pytest.fixture(scope="module")
def manifest(idc_sample: Path) -> pd.DataFrame:
    return scan_dataset(idc_sample, workers=1, progress=False).manifest


def _assert_no_leak(manifest: pd.DataFrame, split_df: pd.DataFrame) -> None:
    assert not split_df["patient_id"].duplicated().any()
    assert set(split_df["patient_id"]) == set(manifest["patient_id"])
    per_patient = apply_split(manifest, split_df).groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()


def test_split_is_by_patient_with_patient_fractions(manifest: pd.DataFrame) -> None:
    split_df = make_patient_split(manifest, 0.15, 0.15, seed=0)
    _assert_no_leak(manifest, split_df)
    assert split_df["split"].value_counts().to_dict() == {"train": 36, "val": 8, "test": 8}
    assert len(apply_split(manifest, split_df)) == len(manifest)


@pytest.mark.parametrize("seed", range(20))
def test_every_split_keeps_the_positive_rate(manifest: pd.DataFrame, seed: int) -> None:
    overall = manifest["label"].mean()
    assert overall == pytest.approx(0.254, abs=0.001)
    summary = split_summary(manifest, make_patient_split(manifest, 0.15, 0.15, seed))
    assert list(summary.index) == ["train", "val", "test"]
    assert (summary["positive_rate"] - overall).abs().max() <= TOLERANCE


def test_seed_reproduces_and_changes_the_split(manifest: pd.DataFrame) -> None:
    digests = {split_digest(make_patient_split(manifest, 0.15, 0.15, s)) for s in range(5)}
    assert len(digests) == 5
    again = make_patient_split(manifest, 0.15, 0.15, 3)
    assert split_digest(again) == split_digest(make_patient_split(manifest, 0.15, 0.15, 3))
    assert split_digest(again.iloc[::-1]) == split_digest(again)


def test_kfold_folds_partition_patients(manifest: pd.DataFrame) -> None:
    overall = manifest["label"].mean()
    frames = patient_kfold(manifest, k=5, seed=1, val_fraction=0.15)
    assert len(frames) == 5
    tests = [set(f.loc[f.split == "test", "patient_id"]) for f in frames]
    assert set().union(*tests) == set(manifest["patient_id"])
    assert sum(len(t) for t in tests) == manifest["patient_id"].nunique()
    for frame in frames:
        _assert_no_leak(manifest, frame)
        summary = split_summary(manifest, frame)
        assert summary.loc["val", "patients"] == 8
        assert (summary["positive_rate"] - overall).abs().max() <= TOLERANCE


def test_save_load_and_errors(manifest: pd.DataFrame, tmp_path: Path) -> None:
    split_df = make_patient_split(manifest, 0.15, 0.15, 7)
    path = save_split(split_df, tmp_path / "split.csv")
    loaded = load_split(path)
    assert split_digest(loaded) == split_digest(split_df)
    pd.testing.assert_frame_equal(loaded, split_df)
    with pytest.raises(SplitError, match="not in the split"):
        apply_split(manifest, split_df.iloc[1:])
    pd.DataFrame({"patient_id": ["1", "1"], "split": ["train", "test"]}).to_csv(
        tmp_path / "twice.csv", index=False
    )
    with pytest.raises(SplitError, match="more than once"):
        load_split(tmp_path / "twice.csv")
    with pytest.raises(SplitError, match="leave one for training"):
        two = manifest[manifest.patient_id.isin(manifest.patient_id.unique()[:2])]
        make_patient_split(two, 0.4, 0.4, 0)
    with pytest.raises(SplitError, match=r"\[0, 1\)"):
        make_patient_split(manifest, 1.5, 0.1, 0)
