"""`histomlf data ...` as a user runs it: real sample, real files, real (missing) network."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SAMPLE_NEGATIVES, SAMPLE_PATCHES, SAMPLE_PATIENTS, SAMPLE_POSITIVES

from histomlf.cli import main

CLI = "from histomlf.cli import main; main()"
JSON_KEYS = ("patches", "patients", "positives", "negatives", "duplicates_skipped", "quarantined")


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("HISTOMLF_CACHE", str(tmp_path / "cache"))
    return CliRunner()


def _scan_json(runner: CliRunner, *args: str) -> dict:
    result = runner.invoke(main, ["data", "scan", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_scan_json_on_the_real_sample(runner: CliRunner, idc_sample: Path, tmp_path: Path) -> None:
    stats = _scan_json(runner, str(idc_sample))
    assert all(isinstance(stats[key], int) for key in JSON_KEYS)
    assert stats["patches"] == SAMPLE_PATCHES and stats["patients"] == SAMPLE_PATIENTS
    assert stats["negatives"] == SAMPLE_NEGATIVES and stats["positives"] == SAMPLE_POSITIVES
    assert stats["quarantined"] == 0 and stats["duplicates_skipped"] == 0
    assert len(stats["dataset_digest"]) == 64
    # the read-only data folder is left alone: the files go to the cache
    assert Path(stats["manifest"]).is_relative_to(tmp_path / "cache" / "scans")
    assert Path(stats["quarantine"]).is_file()


def test_scan_human_summary_and_out(runner: CliRunner, idc_sample: Path, tmp_path: Path) -> None:
    result = runner.invoke(main, ["data", "scan", str(idc_sample), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "1,900 patches of 52 patients (483 IDC, 1,417 no IDC)" in result.stdout
    assert (tmp_path / "o" / "manifest.csv").is_file()
    assert (tmp_path / "o" / "quarantine.csv").is_file()


@pytest.mark.parametrize("case", ["missing", "empty", "no-patches"])
def test_scan_errors_are_one_line(runner: CliRunner, tmp_path: Path, case: str) -> None:
    data_dir = tmp_path / case
    if case != "missing":
        data_dir.mkdir()
    if case == "no-patches":
        (data_dir / "12345" / "0").mkdir(parents=True)
        (data_dir / "12345" / "0" / "notes.txt").write_text("nothing to see")
    result = runner.invoke(main, ["data", "scan", str(data_dir), "--json"])
    assert result.exit_code != 0
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_scan_counts_quarantine_and_duplicates(runner: CliRunner, idc_sample_copy: Path) -> None:
    patch = next((idc_sample_copy / "8865" / "0").glob("*.png"))
    (patch.parent / "8865_idx5_x9001_y9001_class0.png").write_bytes(patch.read_bytes()[:300])
    twin = idc_sample_copy / "IDC_regular_ps50_idx5" / "8865" / "0"
    twin.mkdir(parents=True, exist_ok=True)
    (twin / patch.name).write_bytes(patch.read_bytes())
    stats = _scan_json(runner, str(idc_sample_copy), "--workers", "1")
    assert stats["patches"] == SAMPLE_PATCHES
    assert stats["duplicates_skipped"] == 1 and stats["quarantined"] == 1
    assert "truncated" in Path(stats["quarantine"]).read_text()


def test_scan_survives_dangling_links(runner: CliRunner, idc_sample_copy: Path) -> None:
    """A broken link named like a patch is quarantined; one named like litter is ignored;
    the fingerprint pass that `scan_to_cache` runs first no longer aborts on either."""
    folder = idc_sample_copy / "8865" / "1"
    (folder / "8865_idx5_x9001_y9001_class1.png").symlink_to(folder / "vanished.png")
    (idc_sample_copy / "8865" / "notes.txt").symlink_to(idc_sample_copy / "nowhere.txt")
    stats = _scan_json(runner, str(idc_sample_copy), "--workers", "1")
    assert stats["patches"] == SAMPLE_PATCHES and stats["quarantined"] == 1
    quarantine = Path(stats["quarantine"]).read_text()
    assert "8865_idx5_x9001_y9001_class1.png" in quarantine and "unreadable" in quarantine
    assert "notes.txt" not in quarantine
    # training scans through the cache: the fingerprint is stable, so the second call reuses it
    from histomlf.data.scan import scan_to_cache

    first = scan_to_cache(idc_sample_copy, out=idc_sample_copy.parent / "scan", workers=1)
    again = scan_to_cache(idc_sample_copy, out=idc_sample_copy.parent / "scan", workers=1)
    assert first.stats["cached"] is False and again.stats["cached"] is True
    assert again.stats["quarantined"] == 1


def test_split_command_prints_rates(runner: CliRunner, idc_sample: Path, tmp_path: Path) -> None:
    scan = runner.invoke(main, ["data", "scan", str(idc_sample), "--out", str(tmp_path / "s")])
    assert scan.exit_code == 0, scan.output
    args = [
        "data",
        "split",
        str(tmp_path / "s" / "manifest.csv"),
        "--out",
        str(tmp_path / "sp.csv"),
    ]
    result = runner.invoke(main, [*args, "--seed", "5"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["split", "patients", "patches", "positive"]
    assert [line.split()[:2] for line in lines[1:4]] == [
        ["train", "36"],
        ["val", "8"],
        ["test", "8"],
    ]
    assert (tmp_path / "sp.csv").read_text().startswith("patient_id,split\n")
    summary = json.loads(runner.invoke(main, [*args, "--json"]).stdout)
    assert abs(summary["test"]["positive_rate"] - 483 / 1900) <= 0.05
    missing = runner.invoke(main, ["data", "split", str(tmp_path / "none.csv"), "--out", "x.csv"])
    assert missing.exit_code != 0 and "manifest not found" in missing.stderr


def test_synth_then_scan(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    args = ["--patients", "3", "--patches-per-patient", "20", "--border-fraction", "0.2"]
    result = runner.invoke(main, ["data", "synth", str(out), *args, "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "60 patches of 3 patients" in result.stdout
    stats = _scan_json(runner, str(out), "--workers", "1")
    assert (stats["patches"], stats["patients"], stats["quarantined"]) == (60, 3, 0)
    assert stats["duplicates_skipped"] == 60 and stats["border_patches"] > 0


def test_fetch_fails_fast_offline(tmp_path: Path) -> None:
    """No internet here: the command must give up within seconds and say what to do."""
    target = tmp_path / "idc"
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from histomlf.cli import main; main()",
            "data",
            "fetch",
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 30
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert "kaggle.com/datasets/paultimothymooney/breast-histopathology-images" in result.stderr
    assert f"histomlf data scan {target}" in result.stderr
