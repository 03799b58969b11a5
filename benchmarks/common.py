"""Shared benchmark helpers: machine facts, result rows, timing, peak RSS, sample data.

Every benchmark module exposes `run(quick: bool) -> dict` returning `{"rows": [...], ...}`
where each row is made by `row(...)`: one measured value, the baseline measured in the same
run (same unit), their ratio and the target. `benchmarks.run` runs each module in a fresh
process (TensorFlow state such as op determinism must not leak from one benchmark into the
next) and prints one table. Absolute numbers on a shared 2-core machine are noise; ratios
against a baseline measured minutes apart in the same process are what to compare.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = Path(os.environ.get("HISTOMLF_SAMPLE_DIR", REPO_ROOT.parent / "shared" / "idc-sample"))
# Synthetic sets, scans and packed caches shared across benchmark runs (built once).
BENCH_CACHE = Path(os.environ.get("HISTOMLF_BENCH_CACHE", "/tmp/histomlf-bench"))
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match[1].strip() if match else platform.machine()


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name, or None (no nvidia-smi or no GPU)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def machine() -> dict[str, Any]:
    """Where and when a figure was measured: cores, CPU, GPU, date, load average."""
    gpu = gpu_name()
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        memory_gb = None
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "gpu": gpu or "none",
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(info: dict[str, Any]) -> str:
    """One human line for a `machine()` dict."""
    load = ", ".join(f"{x:.2f}" for x in info["load_average"])
    return (
        f"{info['cores']} cores ({info['cpu']}), GPU: {info['gpu']}, "
        f"{info['date']}, load average {load}"
    )


def row(
    name: str,
    variant: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    baseline_name: str = "",
    target: str = "",
    met: bool | None = None,
    ratio: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One result row; `ratio` defaults to value / baseline when a baseline is given."""
    if ratio is None and baseline not in (None, 0):
        ratio = value / baseline
    return {
        "name": name,
        "variant": variant,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_name": baseline_name,
        "ratio": ratio,
        "target": target,
        "met": met,
        "note": note,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latencies_ms(call: Callable[[], Any], count: int, warmup: int = 3) -> list[float]:
    """Milliseconds of `count` sequential calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    out = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
        "mean_ms": statistics.fmean(values) if values else math.nan,
        "count": len(values),
    }


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM) in MB: unlike ru_maxrss it ignores the forking parent."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024


def run_python_json(args: list[str], *, timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run `python ARGS` in a fresh process; its last stdout line is JSON, returned parsed.

    The child's peak RSS as the kernel saw it (ru_maxrss of the reaped child, via a
    measuring shim so earlier children don't count) is added as `child_maxrss_mb`.
    """
    shim = (
        "import json, resource, subprocess, sys; "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(p.stderr[-6000:]); print(p.stdout, end=''); "
        "print(json.dumps({'rc': p.returncode, "
        "'maxrss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", shim, sys.executable, *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    shim_info = json.loads(lines[-1]) if lines else {"rc": done.returncode}
    if shim_info.get("rc") != 0 or len(lines) < 2:
        raise RuntimeError(
            f"python {' '.join(args)} failed (exit {shim_info.get('rc')}):\n{done.stderr[-3000:]}"
        )
    result = json.loads(lines[-2])
    result["child_maxrss_mb"] = shim_info["maxrss_mb"]
    return result


SAMPLE_NAME = re.compile(r"(\d+)_idx5_x(\d+)_y(\d+)_class([01])\.png$")


def sample_manifest(root: Path):
    """Manifest rows for every PNG under `root` (Kaggle file names), sorted by path."""
    import pandas as pd
    from PIL import Image

    records = []
    for path in sorted(root.rglob("*.png")):
        match = SAMPLE_NAME.search(path.name)
        if match is None:
            continue
        with Image.open(path) as image:
            width, height = image.size
        records.append(
            {
                "path": str(path.resolve()),
                "patient_id": match[1],
                "x": int(match[2]),
                "y": int(match[3]),
                "label": int(match[4]),
                "width": width,
                "height": height,
            }
        )
    return pd.DataFrame(records)


def number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The one table: name, variant, value, unit, baseline, ratio, target, met?"""
    header = ("name", "variant", "value", "unit", "baseline", "ratio", "target", "met?")
    body = [
        (
            r["name"], r["variant"], number(r["value"]), r["unit"], number(r["baseline"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"] or "-",
            {True: "yes", False: "NO", None: "-"}[r["met"]],
        )
        for r in rows
    ]  # fmt: skip
    widths = [max(len(str(x)) for x in column) for column in zip(header, *body, strict=False)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
             for line in (header, *body)]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def sample_rows(root: Path = SAMPLE_DIR, limit: int = 0):
    """Manifest rows (path, patient_id, label, ...) of the real sample, sorted by path."""
    rows = sample_manifest(root)
    if limit and len(rows) > limit:
        rows = rows.iloc[:limit].reset_index(drop=True)
    return rows


def cli(description: str, run: Callable[[bool], dict[str, Any]]) -> None:
    """`python -m benchmarks.X [--quick] [--json out]`: run one benchmark, print its rows."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="The CI-sized smoke version.")
    parser.add_argument("--json", type=Path, default=None, help="Write the result here.")
    parser.add_argument(
        "--emit-json", action="store_true", help="Print the result as one JSON line (for run.py)."
    )
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(args.quick)
    result["seconds"] = time.perf_counter() - started
    result.setdefault("machine", machine())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.emit_json:
        print(json.dumps(result, default=str))
    else:
        print(format_table(result["rows"]))


def child_main(argv: list[str]) -> None:
    """`python -m benchmarks.common MODULE [--quick]`: call MODULE.run, print one JSON line."""
    import importlib

    module = importlib.import_module(argv[0])
    quick = "--quick" in argv[1:]
    started = time.perf_counter()
    result = module.run(quick)
    result["seconds"] = time.perf_counter() - started
    result.setdefault("machine", machine())
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    child_main(sys.argv[1:])
