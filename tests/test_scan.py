"""The scan on the real sample and on crafted bad files: every rule, no mocks."""

from __future__ import annotations

import io
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_NEGATIVES, SAMPLE_PATCHES, SAMPLE_PATIENTS, SAMPLE_POSITIVES
from PIL import Image

from histomlf.data.manifest import (
    MANIFEST_COLUMNS,
    ManifestError,
    dataset_digest,
    read_manifest,
    write_manifest,
)
from histomlf.data.scan import (
    SECOND_TOP_FOLDER,
    ScanError,
    check_patch_bytes,
    scan_dataset,
    scan_to_cache,
    write_scan,
)

PID = "8865"


@pytest.fixture
def tree(tmp_path: Path, idc_sample: Path) -> Path:
    """Two real patients of the sample in a writable folder (small, so each scan is fast)."""
    root = tmp_path / "data"
    for pid in (PID, "9022"):
        shutil.copytree(idc_sample / pid, root / pid)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def _real_patch(tree: Path, label: str = "0", index: int = 0) -> Path:
    return sorted((tree / PID / label).glob("*.png"))[index]


def _scan(root: Path):
    return scan_dataset(root, workers=1, progress=False)


def _reasons(result) -> dict[str, str]:
    return {
        Path(p).name: r
        for p, r in zip(result.quarantine.path, result.quarantine.reason, strict=True)
    }


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_real_sample_counts_and_manifest(idc_sample: Path) -> None:
    result = scan_dataset(idc_sample, workers=2, progress=False)
    stats = result.stats
    assert (stats["patches"], stats["patients"]) == (SAMPLE_PATCHES, SAMPLE_PATIENTS)
    assert (stats["negatives"], stats["positives"]) == (SAMPLE_NEGATIVES, SAMPLE_POSITIVES)
    assert stats["quarantined"] == 0 and stats["duplicates_skipped"] == 0
    manifest = result.manifest
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["path"].map(lambda p: Path(p).is_absolute() and Path(p).is_file()).all()
    assert not manifest["path"].duplicated().any()
    # border crops are kept with their real size; the second top folder is merged by patient
    assert ((manifest.width == 50) & (manifest.height < 50)).sum() == stats["border_patches"] > 0
    assert manifest["path"].str.contains(f"/{SECOND_TOP_FOLDER}/").any()
    assert ((manifest.x % 50 == 1) & (manifest.y % 50 == 1)).all()
    inline = scan_dataset(idc_sample, workers=1, progress=False)
    pd.testing.assert_frame_equal(inline.manifest, manifest)


def test_digest_is_content_not_location(idc_sample: Path, idc_sample_copy: Path) -> None:
    original = scan_dataset(idc_sample, workers=1, progress=False)
    copy = scan_dataset(idc_sample_copy, workers=1, progress=False)
    assert copy.stats["dataset_digest"] == original.stats["dataset_digest"]
    assert dataset_digest(original.manifest.iloc[::-1]) == original.stats["dataset_digest"]
    changed = original.manifest.copy()
    changed.loc[len(changed) - 1, "label"] ^= 1
    assert dataset_digest(changed) != original.stats["dataset_digest"]


def test_truncated_empty_and_garbage_files_are_quarantined(tree: Path) -> None:
    data = _real_patch(tree).read_bytes()
    (tree / PID / "0" / f"{PID}_idx5_x5001_y5001_class0.png").write_bytes(data[: len(data) // 2])
    (tree / PID / "0" / f"{PID}_idx5_x5051_y5001_class0.png").write_bytes(b"")
    (tree / PID / "0" / f"{PID}_idx5_x5101_y5001_class0.png").write_bytes(b"not a png" * 50)
    before = _scan(tree).stats["patches"]
    result = _scan(tree)
    reasons = _reasons(result)
    assert reasons[f"{PID}_idx5_x5001_y5001_class0.png"].startswith("truncated image")
    assert reasons[f"{PID}_idx5_x5051_y5001_class0.png"] == "empty file"
    assert reasons[f"{PID}_idx5_x5101_y5001_class0.png"].startswith("not a readable image")
    assert result.stats["quarantined"] == 3 and result.stats["patches"] == before


def test_unreadable_file_is_quarantined(tree: Path) -> None:
    (tree / PID / "1" / f"{PID}_idx5_x5001_y5001_class1.png").symlink_to(tree / "gone.png")
    assert _reasons(_scan(tree))[f"{PID}_idx5_x5001_y5001_class1.png"].startswith("unreadable")


def test_name_label_and_patient_mismatches_are_quarantined(tree: Path) -> None:
    data = _real_patch(tree).read_bytes()
    (tree / PID / "0" / f"{PID}_idx5_x5001_y5001_class1.png").write_bytes(data)
    (tree / PID / "0" / "9022_idx5_x5001_y5001_class0.png").write_bytes(data)
    (tree / PID / "0" / "scan_0001.png").write_bytes(data)
    (tree / PID / f"{PID}_idx5_x5051_y5001_class0.png").write_bytes(data)
    result = _scan(tree)
    reasons = _reasons(result)
    assert reasons[f"{PID}_idx5_x5001_y5001_class1.png"].startswith("label mismatch")
    assert reasons["9022_idx5_x5001_y5001_class0.png"].startswith("patient mismatch")
    assert reasons["scan_0001.png"].startswith("unparsable name")
    assert reasons[f"{PID}_idx5_x5051_y5001_class0.png"].startswith("misplaced")
    assert result.stats["quarantined"] == 4


def test_bomb_header_is_refused_before_decoding(tree: Path) -> None:
    bomb = _bomb_png(100_000, 100_000)
    assert len(bomb) < 1024
    (tree / PID / "1" / f"{PID}_idx5_x5001_y5001_class1.png").write_bytes(bomb)
    peak_before = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])
    start = time.perf_counter()
    verdict = check_patch_bytes(bomb)
    result = _scan(tree)
    elapsed = time.perf_counter() - start
    peak_after = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])
    growth_mb = (peak_after - peak_before) / 1024
    assert isinstance(verdict, str) and verdict.startswith("decompression bomb")
    assert _reasons(result)[f"{PID}_idx5_x5001_y5001_class1.png"].startswith("decompression bomb")
    assert elapsed < 1.0 and growth_mb < 50
    # just past the patch limit, below PIL's own bomb limit: our header check refuses it too
    assert check_patch_bytes(_bomb_png(2000, 2000)).startswith("decompression bomb")


def test_rgba_grayscale_and_small_patches_are_kept(tree: Path) -> None:
    clean = _scan(tree).stats
    rgb = Image.open(_real_patch(tree)).convert("RGB")
    folder = tree / PID / "0"
    rgb.convert("RGBA").save(folder / f"{PID}_idx5_x5001_y5001_class0.png")
    rgb.convert("L").save(folder / f"{PID}_idx5_x5051_y5001_class0.png")
    rgb.crop((0, 0, 50, 7)).save(folder / f"{PID}_idx5_x5101_y5001_class0.png")
    result = _scan(tree)
    assert result.stats["quarantined"] == 0
    assert result.stats["patches"] == clean["patches"] + 3
    sizes = result.manifest.set_index(result.manifest.path.map(lambda p: Path(p).name))
    assert tuple(sizes.loc[f"{PID}_idx5_x5101_y5001_class0.png", ["width", "height"]]) == (50, 7)


def test_litter_is_ignored_silently(tree: Path) -> None:
    clean = _scan(tree).stats
    for folder in (tree, tree / PID, tree / PID / "0"):
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
        (folder / "notes.txt").write_text("slide 8865, scanned at 40x")
    (tree / PID / "0" / f"._{PID}_idx5_x51_y51_class0.png").write_bytes(b"\0\5\26\7")
    (tree / "__MACOSX").mkdir()
    stats = _scan(tree).stats
    assert stats["quarantined"] == 0
    assert stats["patches"] == clean["patches"]
    assert stats["ignored"] == clean["ignored"] + 10


def test_identical_duplicate_counts_once_conflicting_one_is_quarantined(tree: Path) -> None:
    clean = _scan(tree).stats
    first, second = _real_patch(tree, "0", 0), _real_patch(tree, "0", 1)
    twin = tree / SECOND_TOP_FOLDER / PID / "0"
    twin.mkdir(parents=True)
    shutil.copy(first, twin / first.name)
    (twin / second.name).write_bytes(first.read_bytes())
    result = _scan(tree)
    stats = result.stats
    assert stats["patches"] == clean["patches"] and stats["patients"] == clean["patients"]
    assert stats["duplicates_skipped"] == 1 and stats["quarantined"] == 1
    assert _reasons(result)[second.name].startswith("conflicting duplicate")
    assert str(result.quarantine.path.iloc[0]).startswith(str(tree / SECOND_TOP_FOLDER))
    kept = result.manifest.path.map(lambda p: Path(p).name)
    assert result.manifest.path[kept == second.name].iloc[0] == str(second)


def test_a_folder_holding_only_the_second_top_folder(tree: Path, tmp_path: Path) -> None:
    other = tmp_path / "only-second"
    shutil.copytree(tree, other / SECOND_TOP_FOLDER)
    assert _scan(other).stats["dataset_digest"] == _scan(tree).stats["dataset_digest"]


def test_missing_empty_and_patchless_folders_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ScanError, match="not found"):
        _scan(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError, match="empty"):
        _scan(tmp_path / "empty")
    (tmp_path / "text" / "8865" / "0").mkdir(parents=True)
    (tmp_path / "text" / "README.md").write_text("no patches here")
    with pytest.raises(ScanError, match="no usable patches"):
        _scan(tmp_path / "text")


def test_scan_to_cache_reuses_an_unchanged_scan(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HISTOMLF_CACHE", str(tmp_path / "cache"))
    first = scan_to_cache(tree, workers=1)
    assert not first.stats["cached"]
    assert Path(first.stats["manifest"]).parent.parent.parent == tmp_path / "cache"
    again = scan_to_cache(tree, workers=1)
    assert again.stats["cached"]
    pd.testing.assert_frame_equal(again.manifest, first.manifest)
    shutil.copy(_real_patch(tree), tree / PID / "0" / f"{PID}_idx5_x5001_y5001_class0.png")
    changed = scan_to_cache(tree, workers=1)
    assert not changed.stats["cached"]
    assert changed.stats["patches"] == first.stats["patches"] + 1


def test_manifest_round_trip_and_errors(tree: Path, tmp_path: Path) -> None:
    result = _scan(tree)
    manifest_path, quarantine_path = write_scan(result, tmp_path / "out")
    assert quarantine_path.read_text().strip() == "path,reason"
    pd.testing.assert_frame_equal(read_manifest(manifest_path), result.manifest)
    write_manifest(result.manifest.drop(columns="sha1").assign(sha1="x"), tmp_path / "m.csv")
    broken = pd.read_csv(tmp_path / "m.csv").drop(columns=["label", "width"])
    broken.to_csv(tmp_path / "broken.csv", index=False)
    with pytest.raises(ManifestError, match="missing column.*label, width"):
        read_manifest(tmp_path / "broken.csv")
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


def test_check_patch_bytes_on_png_modes() -> None:
    for mode in ("RGB", "RGBA", "L", "LA", "P", "I;16"):
        image = Image.fromarray(np.full((20, 50, 3), 128, dtype=np.uint8)).convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        assert check_patch_bytes(buffer.getvalue()) == (50, 20), mode


def test_image_larger_than_a_patch_is_quarantined(tree: Path) -> None:
    name = f"{PID}_idx5_x7001_y7001_class0.png"
    Image.fromarray(np.full((60, 60, 3), 200, np.uint8)).save(tree / PID / "0" / name)
    assert _reasons(_scan(tree))[name].startswith("larger than a 50x50 patch")
