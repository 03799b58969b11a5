"""The scan against a hostile file system: links to devices, FIFOs, sockets, link loops, huge
files. Each of these crashed, hung or ate memory before the scan checked file types; the ones
that can hang or exhaust memory run in a child process with a hard timeout (and an
address-space limit), so a regression fails the test instead of the test run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from histomlf.data.scan import MAX_PATCH_BYTES, read_patch_file, scan_dataset

PID = "8865"
NAME = f"{PID}_idx5_x5001_y5001_class0.png"
TIMEOUT_S = 60

# Imports first, then the address-space limit: whatever the scan allocates must fit in the
# margin, which a bounded read of 1 MB per file fits many times over and /dev/zero does not.
CHILD = r"""
import json, resource, sys
import pandas, tqdm
import histomlf.data.manifest
from histomlf.data.scan import scan_dataset, scan_to_cache

root, out, margin_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open("/proc/self/status") as status:
    mapped = next(int(line.split()[1]) for line in status if line.startswith("VmSize:")) * 1024
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (mapped + margin_mb * 2**20, hard))
result = scan_to_cache(root, out=out, workers=1, refresh=True, progress=False)
print(json.dumps({
    "stats": {k: v for k, v in result.stats.items() if isinstance(v, (int, float, str, list))},
    "quarantine": dict(zip(result.quarantine.path, result.quarantine.reason)),
    "paths": list(result.manifest.path),
}))
"""


@pytest.fixture
def tree(tmp_path: Path, idc_sample: Path) -> Path:
    """One real patient in a writable folder."""
    root = tmp_path / "data"
    shutil.copytree(idc_sample / PID, root / PID)
    return root.resolve()


def _pngs(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.png"))


def _scan_in_child(root: Path, tmp_path: Path, margin_mb: int = 256) -> dict:
    """`scan_to_cache` (fingerprint, then scan) of `root` in a child process; fails the test
    when the child hangs past TIMEOUT_S, runs out of its memory margin or raises."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    try:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(root), str(tmp_path / "scan-out"), str(margin_mb)],
            capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the scan did not finish within {TIMEOUT_S} s (a hang or a walk blowing up)")
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.splitlines()[-1])


def _reason(result: dict, name: str) -> str:
    (reason,) = [r for p, r in result["quarantine"].items() if Path(p).name == name]
    return reason


def test_patch_named_link_to_dev_zero_is_quarantined_in_bounded_memory(
    tree: Path, tmp_path: Path
) -> None:
    clean = _pngs(tree)
    (tree / PID / "0" / NAME).symlink_to("/dev/zero")
    result = _scan_in_child(tree, tmp_path)
    assert _reason(result, NAME) == "not a regular file: a link to a character device"
    assert result["stats"]["patches"] == clean


def test_patch_named_fifo_does_not_hang_the_scan(tree: Path, tmp_path: Path) -> None:
    clean = _pngs(tree)
    fifo = tree / PID / "0" / NAME
    os.mkfifo(fifo)
    linked = f"{PID}_idx5_x5051_y5001_class0.png"
    (tree / PID / "0" / linked).symlink_to(fifo)
    result = _scan_in_child(tree, tmp_path)
    assert _reason(result, NAME) == "not a regular file: a FIFO (named pipe)"
    assert _reason(result, linked) == "not a regular file: a link to a FIFO (named pipe)"
    assert result["stats"]["patches"] == clean


def test_two_links_to_the_root_end_fast_without_duplicates(tree: Path, tmp_path: Path) -> None:
    clean = _pngs(tree)
    (tree / "a").symlink_to(".")
    (tree / "b").symlink_to(".")
    started = time.monotonic()
    result = _scan_in_child(tree, tmp_path)
    assert time.monotonic() - started < TIMEOUT_S
    stats = result["stats"]
    assert (stats["patches"], stats["duplicates_skipped"], stats["quarantined"]) == (clean, 0, 0)
    assert stats["top_folders"] == [str(tree)]
    assert not any("/a/" in p or "/b/" in p for p in result["paths"])
    assert len(set(result["paths"])) == clean


def test_link_loops_inside_a_patient_folder_do_not_crash(tree: Path, tmp_path: Path) -> None:
    clean = _pngs(tree)
    patient = tree / PID
    (patient / "loop").symlink_to(".")
    (patient / "0" / "up").symlink_to("..")
    misplaced = patient / "extra"
    misplaced.mkdir()
    shutil.copy(next((patient / "0").glob("*.png")), misplaced / NAME)
    (misplaced / "back").symlink_to("..")
    (misplaced / "again").symlink_to(".")
    for folder in (tree, patient, patient / "0"):  # links to themselves: ELOOP on any stat
        (folder / "self").symlink_to("self")
    looped = f"{PID}_idx5_x5051_y5001_class0.png"
    (patient / "0" / looped).symlink_to(looped)
    result = _scan_in_child(tree, tmp_path)
    assert result["stats"]["patches"] == clean
    assert result["quarantine"] == {
        str(misplaced / NAME): "misplaced: not inside a class folder 0 or 1",
        str(patient / "0" / looped): "unreadable file: Too many levels of symbolic links",
    }


def test_patch_file_above_the_size_cap_is_quarantined(tree: Path) -> None:
    clean = _pngs(tree)
    real = next((tree / PID / "0").glob("*.png")).read_bytes()
    # a valid PNG followed by junk, which Pillow would decode happily
    (tree / PID / "0" / NAME).write_bytes(real + bytes(MAX_PATCH_BYTES))
    result = scan_dataset(tree, workers=1, progress=False)
    reasons = dict(zip(result.quarantine.path.map(lambda p: Path(p).name),
                       result.quarantine.reason, strict=True))
    assert reasons[NAME] == (
        f"too large for a patch: {len(real) + MAX_PATCH_BYTES} bytes "
        f"(limit {MAX_PATCH_BYTES} bytes)"
    )
    assert result.stats["patches"] == clean


def test_patch_named_socket_is_quarantined(tree: Path, monkeypatch) -> None:
    monkeypatch.chdir(tree / PID / "0")  # a socket path must be short: bind a relative one
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(NAME)
        result = scan_dataset(tree, workers=1, progress=False)
    assert dict(zip(result.quarantine.path.map(lambda p: Path(p).name),
                    result.quarantine.reason, strict=True))[NAME] == (
        "not a regular file: a socket"
    )


def test_link_to_a_regular_patch_is_followed(tree: Path, tmp_path: Path) -> None:
    clean = _pngs(tree)
    elsewhere = tmp_path / "elsewhere.png"
    shutil.copy(next((tree / PID / "0").glob("*.png")), elsewhere)
    (tree / PID / "0" / NAME).symlink_to(elsewhere)
    result = scan_dataset(tree, workers=1, progress=False)
    assert result.stats["patches"] == clean + 1 and result.stats["quarantined"] == 0


def test_read_patch_file_reads_at_most_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    path.write_bytes(b"x" * 100)
    assert read_patch_file(str(path), cap=100) == b"x" * 100
    assert read_patch_file(str(path), cap=99).startswith("too large for a patch: 100 bytes")
    assert read_patch_file("/dev/zero", cap=99) == "not a regular file: a character device"
    assert read_patch_file(str(tmp_path)) == "not a regular file: a folder"
    assert read_patch_file(str(tmp_path / "gone")).startswith("unreadable file")
