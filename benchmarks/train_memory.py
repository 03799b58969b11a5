"""Peak RSS of a training process on 2k, 20k and 200k synthetic patches: it must stay flat.

    .venv/bin/python -m benchmarks.train_memory [--quick] [--json out.json]

Each set is made once by `histomlf data synth DIR --patients P --patches-per-patient N
--no-duplicate-folder` and cached under $HISTOMLF_BENCH_CACHE (default /tmp/histomlf-bench),
together with its scan and packed cache, built by an untimed "prepare" process first. Then a
fresh process per size runs what `histomlf train` runs up to the fit: `prepare_data` (the scan
reused, the patient split, the packed cache opened; all rows, max_samples=0), the training
pipeline over the whole train split (packed, light augment, class weights, shuffled each
epoch), a simplecnn, and `model.fit` for exactly `STEPS` steps of batch 64 (no validation):
for 2k that is several passes over the data, for 200k a slice of one epoch. The figure is the
process's peak RSS (VmHWM at exit; the kernel's ru_maxrss of the reaped child is in the
details). Target: 200k <= 1.2x 2k.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_CACHE, REPO_ROOT, cli, row, run_python_json

# label: (patients, patches per patient)
SETS = {"500": (4, 125), "2k": (8, 250), "20k": (40, 500), "200k": (200, 1000)}
FULL = {"sets": ("2k", "20k", "200k"), "steps": 150}
QUICK = {"sets": ("500", "2k"), "steps": 10}


def ensure_set(label: str) -> Path:
    """The synthetic set `label`, generated with the CLI unless a complete one is cached."""
    patients, per_patient = SETS[label]
    folder = BENCH_CACHE / "synth" / label
    marker = folder.with_suffix(".done")
    if marker.is_file():
        return folder
    command = [sys.executable, "-m", "histomlf", "data", "synth", str(folder),
               "--patients", str(patients), "--patches-per-patient", str(per_patient),
               "--seed", "3", "--no-duplicate-folder"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=1800, cwd=REPO_ROOT)
    marker.write_text(json.dumps({"seconds": time.perf_counter() - started}))
    return folder


def child(mode: str, data_dir: str, steps: int) -> dict[str, Any]:
    """In a fresh process: `prepare` builds scan + packed cache; `train` measures peak RSS."""
    from histomlf.config import TrainConfig
    from histomlf.training.workflow import prepare_data

    config = TrainConfig(data_dir=data_dir, max_samples=0, augment="light")
    data = prepare_data(config)
    if mode == "prepare":
        return {"rows": len(data.manifest)}
    from benchmarks.common import peak_rss_mb
    from histomlf.data.pipeline import class_weights, make_dataset
    from histomlf.models import create_model
    from histomlf.training.fit import compile_model

    ready_mb = peak_rss_mb()
    train_rows = data.rows["train"]
    dataset = make_dataset(train_rows, batch_size=64, training=True, augment="light",
                           balance="class_weight", seed=1, packed=data.packed, repeat=True)
    model = create_model("simplecnn", weights="none", image_size=50, dropout=0.3,
                         dense_units=64)  # fmt: skip
    compile_model(model, "adam", 1e-3)
    started = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0,
              class_weight=class_weights(train_rows["label"].to_numpy()))  # fmt: skip
    return {"rows": len(data.manifest), "train_rows": len(train_rows), "steps": steps,
            "fit_seconds": time.perf_counter() - started, "ready_rss_mb": ready_mb,
            "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def spawn(mode: str, folder: Path, steps: int) -> dict[str, Any]:
    args = ["-m", "benchmarks.train_memory", "--child", mode, str(folder), str(steps)]
    env = {"HISTOMLF_CACHE": str(BENCH_CACHE / "memory-cache"), "MLFLOW_TRACKING_URI": ""}
    return run_python_json(args, timeout=1800, env={k: v for k, v in env.items() if v})


def run(quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    results = {}
    for label in plan["sets"]:
        lock_path = BENCH_CACHE / "synth" / f"{label}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:  # one builder per set across concurrent runs
            fcntl.flock(lock, fcntl.LOCK_EX)
            folder = ensure_set(label)
            prepared = folder.with_suffix(".prepared")
            if not prepared.is_file():
                prepared.write_text(json.dumps(spawn("prepare", folder, plan["steps"])))
        results[label] = spawn("train", folder, plan["steps"])
    small, big = plan["sets"][0], plan["sets"][-1]
    rows = []
    for label in plan["sets"]:
        info = results[label]
        is_big = label == big
        rows.append(row(
            "train_memory", f"peak RSS, {label} patches, {plan['steps']} steps simplecnn",
            info["peak_rss_mb"], "MB", baseline=results[small]["peak_rss_mb"],
            baseline_name=f"{small} patches", target="<= 1.2x" if is_big else "",
            met=info["peak_rss_mb"] <= 1.2 * results[small]["peak_rss_mb"] if is_big else None,
            note=f"{info['rows']:,} rows; {info['ready_rss_mb']:.0f} MB before fit",
        ))  # fmt: skip
    return {"benchmark": "train_memory", "rows": rows, "plan": plan, "details": results}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        cli(__doc__.splitlines()[0], run)
