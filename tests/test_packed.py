"""PackedPatches on the real IDC sample: same pixels as the PNG path, atomic builds, flat memory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from helpers_data import epoch, sample_rows

from histomlf.data.packed import (
    PATCHES_FILE,
    PackedCacheError,
    PackedPatches,
    manifest_digest,
    write_packed,
)
from histomlf.data.pipeline import make_dataset, open_packed


@pytest.fixture(scope="module")
def rows(idc_sample: Path) -> pd.DataFrame:
    return sample_rows(idc_sample)


@pytest.fixture(scope="module")
def png_epoch(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return epoch(make_dataset(rows, batch_size=128, training=False))


@pytest.fixture(scope="module")
def packed(rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> PackedPatches:
    return open_packed(rows, tmp_path_factory.mktemp("cache") / "packed")


def test_packed_eval_equals_png_eval(packed: PackedPatches, rows: pd.DataFrame, png_epoch) -> None:
    assert len(packed) == len(rows)
    batches = list(make_dataset(rows, batch_size=128, training=False, packed=packed))
    assert [len(y) for _, y in batches] == [128] * (len(rows) // 128) + [len(rows) % 128]
    images = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    np.testing.assert_array_equal(images, png_epoch[0])
    np.testing.assert_array_equal(labels, png_epoch[1])


def test_packed_training_epoch_is_the_png_multiset(
    packed: PackedPatches, rows: pd.DataFrame, png_epoch
) -> None:
    def keys(images: np.ndarray, labels: np.ndarray) -> Counter:
        return Counter(
            (image.tobytes(), int(label)) for image, label in zip(images, labels, strict=True)
        )

    dataset = make_dataset(rows, batch_size=48, training=True, seed=3, packed=packed)
    assert keys(*epoch(dataset)) == keys(*png_epoch)
    sizes = [len(y) for _, y in dataset.as_numpy_iterator()]
    assert sizes == [48] * (len(rows) // 48) + [len(rows) % 48]


def test_split_rows_read_from_the_full_packed_file(
    packed: PackedPatches, rows: pd.DataFrame, png_epoch
) -> None:
    patients = sorted(rows["patient_id"].unique())[::3]
    split = rows[rows["patient_id"].isin(patients)].sample(frac=1.0, random_state=2)
    images, labels = epoch(make_dataset(split, batch_size=50, training=False, packed=packed))
    np.testing.assert_array_equal(images, png_epoch[0][split.index.to_numpy()])
    np.testing.assert_array_equal(labels, split["label"].to_numpy())
    view = packed.subset(split)
    assert len(view) == len(split) and view.file_rows == len(rows)


def test_read_returns_requested_order_with_repeats(packed: PackedPatches, png_epoch) -> None:
    positions = np.array([1899, 3, 4, 5, 3, 0, 1000, 999])
    np.testing.assert_array_equal(packed.read(positions), png_epoch[0][positions])
    assert packed.read(np.array([], dtype=np.int64)).shape == (0, 50, 50, 3)


def test_unknown_rows_are_refused(packed: PackedPatches, rows: pd.DataFrame) -> None:
    stranger = rows.iloc[:3].assign(path=["/nowhere/a.png", "/nowhere/b.png", "/nowhere/c.png"])
    with pytest.raises(KeyError, match="3 of 3 rows"):
        packed.subset(stranger)


def test_duplicate_paths_are_refused_when_writing(tmp_path: Path) -> None:
    images = np.zeros((3, 50, 50, 3), np.uint8)
    with pytest.raises(PackedCacheError, match="duplicate paths"):
        write_packed(tmp_path / "dup", [images], np.zeros(3), ["/a.png", "/b.png", "/a.png"], "d")
    assert not (tmp_path / "dup" / PATCHES_FILE).exists()


def test_paths_with_any_characters_round_trip(tmp_path: Path) -> None:
    paths = ["/data/a b/ü/x,1.png", "/data/\t'\"q.png", "", "/z.png"]
    images = np.arange(4, dtype=np.uint8)[:, None, None, None] * np.ones((1, 50, 50, 3), np.uint8)
    write_packed(tmp_path / "odd", [images], np.array([0, 1, 0, 1]), paths, "odd")
    packed = PackedPatches.open(tmp_path / "odd")
    assert packed.paths.to_pylist() == paths
    view = packed.subset(pd.DataFrame({"path": paths[::-1], "label": [1, 0, 1, 0]}))
    np.testing.assert_array_equal(view.read(np.arange(4))[:, 0, 0, 0], [3, 2, 1, 0])


def test_digest_follows_content_and_second_open_reuses_the_cache(
    packed: PackedPatches, rows: pd.DataFrame
) -> None:
    assert manifest_digest(rows) == manifest_digest(rows.copy()) == packed.digest
    relabelled = rows.assign(label=1 - rows["label"])
    assert manifest_digest(relabelled) != packed.digest
    assert manifest_digest(rows.iloc[1:]) != packed.digest
    patches = packed.directory / PATCHES_FILE
    before = patches.stat().st_mtime_ns
    again = open_packed(rows, packed.directory.parent)
    assert again.directory == packed.directory and patches.stat().st_mtime_ns == before


def test_half_written_caches_are_never_used(rows: pd.DataFrame, tmp_path: Path, png_epoch) -> None:
    part = rows.iloc[:200]
    cache_dir = tmp_path / "packed"
    digest = manifest_digest(part)
    # A crashed build's staging folder, and a truncated folder under the final name.
    staging = cache_dir / f".tmp-{digest[:16]}-crashed"
    staging.mkdir(parents=True)
    (staging / PATCHES_FILE).write_bytes(b"\0" * 7500)
    final = cache_dir / digest
    write_packed(final, [png_epoch[0][:200]], part["label"].to_numpy(), part["path"], digest)
    with open(final / PATCHES_FILE, "r+b") as handle:
        handle.truncate(7500 * 150)
    with pytest.raises(PackedCacheError):
        PackedPatches.open(final)

    rebuilt = open_packed(part, cache_dir)
    assert rebuilt.directory == final
    np.testing.assert_array_equal(rebuilt.read(np.arange(200)), png_epoch[0][:200])


def test_failed_build_leaves_nothing_behind(rows: pd.DataFrame, tmp_path: Path) -> None:
    broken = rows.iloc[:100].copy()
    broken.loc[broken.index[60], "path"] = str(tmp_path / "missing.png")
    cache_dir = tmp_path / "packed"
    with pytest.raises(Exception, match="missing.png"):
        open_packed(broken, cache_dir)
    assert list(cache_dir.iterdir()) == []


def rss_growth_over_one_epoch(directory: Path) -> int:
    packed = PackedPatches.open(directory)
    rows = pd.DataFrame({"path": list(packed.paths), "label": packed.labels.astype(int)})
    dataset = make_dataset(rows, batch_size=256, training=True, packed=packed)
    next(iter(dataset))
    process = psutil.Process()
    before = process.memory_info().rss
    peak = before
    for step, _ in enumerate(dataset):
        if step % 20 == 0:
            peak = max(peak, process.memory_info().rss)
    return max(peak, process.memory_info().rss) - before


def test_memory_stays_flat_with_packed_file_size(png_epoch, tmp_path: Path) -> None:
    images, labels = png_epoch
    growth = {}
    for size in (2_000, 60_000):
        repeats = -(-size // len(images))
        batches = [images] * repeats
        paths = [f"synthetic-{i}" for i in range(repeats * len(images))]
        directory = tmp_path / str(size)
        write_packed(directory, batches, np.tile(labels, repeats), paths, f"synthetic-{size}")
        growth[size] = rss_growth_over_one_epoch(directory)
    file_bytes = 60_000 * 7500
    print("RSS growth over one epoch (bytes):", growth)
    assert growth[60_000] < growth[2_000] + 0.1 * file_bytes, growth


def test_digests_stream_in_chunks_without_changing_value() -> None:
    """Both digests hash 40k rows a slice at a time; the value is that of the whole text."""
    import hashlib

    from histomlf.data.manifest import DIGEST_COLUMNS, dataset_digest
    from histomlf.data.packed import FORMAT_VERSION

    count = 40_000  # more than two chunks
    rows = pd.DataFrame({
        "path": [f"/d/{i % 97}/{i}_idx5_x{i}_y{i}_class{i % 2}.png" for i in range(count)],
        "patient_id": [str(i % 97) for i in range(count)],
        "x": np.arange(count), "y": np.arange(count)[::-1], "label": np.arange(count) % 2,
        "width": 50, "height": 50, "sha1": [f"{i:040x}" for i in range(count)],
    })  # fmt: skip
    columns = ["path", "label", "width", "height"]
    text = "\n".join("\t".join(str(v) for v in values)
                     for values in rows[columns].itertuples(index=False))  # fmt: skip
    header = f"packed-v{FORMAT_VERSION}:{count}:{','.join(columns)}\n"
    assert manifest_digest(rows) == hashlib.sha256((header + text).encode()).hexdigest()
    content = rows.loc[:, list(DIGEST_COLUMNS)].sort_values(list(DIGEST_COLUMNS), kind="mergesort")
    whole = content.to_csv(index=False, lineterminator="\n")
    assert dataset_digest(rows) == hashlib.sha256(whole.encode()).hexdigest()
