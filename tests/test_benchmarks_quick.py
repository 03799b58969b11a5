"""The benchmarks' CI smoke test: `python -m benchmarks.run --quick` runs and its numbers are sane.

It checks that every benchmark ran and produced positive, finite values with their ratios
computed; it does not check the targets (those are measured on purpose-sized runs, see
docs/benchmarks.md). Runs the real sample, <= 2k synthetic files, two short-lived servers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"feed", "training_throughput", "tracking_overhead", "serving", "scan",
            "train_memory", "quality", "gpu"}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_benchmarks_run_and_report_sane_numbers(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--json", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1150,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "name" in done.stdout and "ratio" in done.stdout  # the one table was printed
    report = json.loads(out.read_text())
    assert report["mode"] == "quick"
    assert report["machine"]["cores"] >= 1 and report["machine"]["date"]
    assert len(report["machine"]["load_average"]) == 3
    rows = report["rows"]
    assert EXPECTED <= {r["name"] for r in rows}
    for r in rows:
        if r["name"] == "gpu" and r["value"] is None:
            assert "pending" in r["note"]  # no GPU here: reported as pending, not as a number
            continue
        assert isinstance(r["value"], int | float) and math.isfinite(r["value"]), r
        assert r["value"] > 0, r
        if r["baseline"] is not None:
            assert math.isfinite(r["baseline"]) and r["baseline"] > 0, r
            assert r["ratio"] == pytest.approx(r["value"] / r["baseline"]), r
        if r["target"]:
            assert r["met"] in (True, False), r
