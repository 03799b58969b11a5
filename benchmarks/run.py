"""The benchmarks' single entry point: run them, print one table, write JSON.

    .venv/bin/python -m benchmarks.run --quick                  # CI smoke, <= 2 minutes
    .venv/bin/python -m benchmarks.run --json benchmarks/results/full-$(date +%F).json
    .venv/bin/python -m benchmarks.run --only serving,training

Each benchmark runs in a fresh Python process (`python -m benchmarks.common MODULE`) so
TensorFlow settings, memory and threads of one never bias the next; each measures its own
baseline in the same process and reports the ratio. The table's columns: benchmark, variant,
value and unit, the baseline's value in the same unit, value/baseline, the target and whether
it was met. The JSON holds every row, each benchmark's details, the machine (cores, CPU, GPU,
date, load average at start and end) and the wall time of each benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import format_table, machine, machine_line, number, row

# name: (module, timeout seconds in quick mode, in full mode); quick timeouts leave room for a
# loaded CI machine: on a quiet 2-core one the quick set takes about 2 minutes.
BENCHMARKS: dict[str, tuple[str, int, int]] = {
    "feed": ("benchmarks.pipeline_feed", 120, 1200),
    "training": ("benchmarks.training_throughput", 120, 1200),
    "tracking": ("benchmarks.tracking_overhead", 180, 1200),
    "serving": ("benchmarks.serving", 150, 1200),
    "scale": ("benchmarks.scan_scale", 60, 1800),
    "memory": ("benchmarks.train_memory", 120, 1800),
    "quality": ("benchmarks.quality", 30, 2400),
    "gpu": ("benchmarks.gpu_check", 30, 30),
}
QUICK_ORDER = ("feed", "training", "tracking", "serving", "scale", "quality", "memory", "gpu")


def run_benchmark(name: str, quick: bool) -> dict[str, Any]:
    """One benchmark in a fresh process; a failure becomes an `error` entry, not a crash."""
    module, quick_timeout, full_timeout = BENCHMARKS[name]
    command = [sys.executable, "-m", "benchmarks.common", module]
    if quick:
        command.append("--quick")
    started = time.perf_counter()
    timeout = quick_timeout if quick else full_timeout
    # Its own session, so a timeout kills its children too (servers, training subprocesses).
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1], start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"benchmark": name, "rows": [], "error": f"timed out after {timeout} s",
                "wall_seconds": time.perf_counter() - started}  # fmt: skip
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"benchmark": name, "rows": [], "error": stderr[-3000:] or stdout[-3000:],
                "wall_seconds": time.perf_counter() - started}  # fmt: skip
    result = json.loads(lines[-1])
    result["wall_seconds"] = time.perf_counter() - started
    return result


def cross_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Targets that need two benchmarks: warm light-augment feed vs the fastest training rate."""
    feed, training = results.get("feed"), results.get("training")
    if not feed or not training or "details" not in training or "error" in feed:
        return []
    fastest = max(d["pipeline"] for d in training["details"])
    light = feed["patches_per_second"]["warm_packed_train_light"]
    return [
        row("feed_vs_training", "warm packed, light aug vs fastest backbone training", light,
            "patches/s", baseline=fastest, baseline_name="fastest backbone img/s (simplecnn)",
            target=">= 5x", met=light >= 5 * fastest)
    ]  # fmt: skip


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """The same table as Markdown (for docs/benchmarks.md), notes in the last column."""
    lines = ["| name | variant | value | unit | baseline | ratio | target | met? | note |",
             "|---|---|---:|---|---:|---:|---|---|---|"]  # fmt: skip
    for r in rows:
        baseline = number(r["baseline"])
        if r["baseline"] is not None and r.get("baseline_name"):
            baseline = f"{baseline} ({r['baseline_name']})"
        cells = [r["name"], r["variant"], number(r["value"]), r["unit"], baseline,
                 "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"] or "-",
                 {True: "yes", False: "**no**", None: "-"}[r["met"]], r.get("note", "")]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: <= 2 min, <= 2k files.")
    parser.add_argument("--only", default="", help=f"Comma list of {','.join(BENCHMARKS)}.")
    parser.add_argument("--json", type=Path, default=None, help="Write all results here.")
    parser.add_argument(
        "--markdown", type=Path, default=None, help="Print the table of this results JSON as "
        "Markdown and exit (runs nothing).",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.markdown:
        report = json.loads(args.markdown.read_text())
        print(f"Machine: {machine_line(report['machine'])}; mode {report['mode']}, "
              f"{report['wall_seconds'] / 60:.0f} min.\n")  # fmt: skip
        print(format_markdown(report["rows"]))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(QUICK_ORDER)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")

    started = time.perf_counter()
    machine_start = machine()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"[{time.perf_counter() - started:6.0f} s] {name} ...", file=sys.stderr, flush=True)
        results[name] = run_benchmark(name, args.quick)
        if "error" in results[name]:
            print(f"  {name} failed: {results[name]['error'][-800:]}", file=sys.stderr)
    rows = [r for name in names for r in results[name]["rows"]] + cross_rows(results)
    report = {
        "mode": "quick" if args.quick else "full",
        "machine": machine_start,
        "machine_end": machine(),
        "wall_seconds": time.perf_counter() - started,
        "rows": rows,
        "benchmarks": results,
    }
    print(f"machine: {machine_line(machine_start)}")
    print(format_table(rows))
    print(f"total {report['wall_seconds']:.0f} s; load average at end "
          f"{', '.join(str(x) for x in report['machine_end']['load_average'])}")  # fmt: skip
    failed = [name for name in names if "error" in results[name]]
    if failed:
        print(f"failed: {', '.join(failed)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
