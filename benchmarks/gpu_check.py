"""GPU check: training images/s of histomlf's backbones on one GPU, Keras 3 on JAX, no TensorFlow.

    bash benchmarks/gpu_check.sh            # on the GPU machine (installs keras from .whl/)
    KERAS_BACKEND=jax python -m benchmarks.gpu_check --json out.json [--steps 40]

The GPU image has JAX and PyTorch but no TensorFlow, so this imports only `histomlf.models`
(which needs keras alone: checked here, the run fails if anything pulled TensorFlow in) and
compiles each model itself (`histomlf.training.fit` imports TensorFlow): Adam 1e-3, binary
cross-entropy, accuracy. Each backbone (weights=none, 50x50, batch 256, `mixed_float16`, head
output float32) trains on random uint8 patches held in host memory as a numpy array: one
untimed fit of 3 steps (XLA compilation, reported as `compile_s`), then one timed fit of
`--steps` steps; images/s counts the steps after the first over the time from its end to
the end of the fit (which waits for the device). Under `benchmarks.run` on a machine without
a GPU, `run()` reports the last recorded result (benchmarks/results/gpu_check.json) or
"pending".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_FILE = REPO_ROOT / "benchmarks" / "results" / "gpu_check.json"
MODELS = ("simplecnn", "resnet50", "vgg16")


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def measure(name: str, steps: int, batch: int, x: Any, y: Any) -> dict[str, Any]:
    """Compile time and training images/s of one backbone on the in-memory arrays."""
    import keras

    from histomlf.models import create_model

    class Clock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.stamps: list[float] = []

        def on_train_batch_end(self, batch_index: int, logs: Any = None) -> None:
            self.stamps.append(time.perf_counter())

    model = create_model(name, weights="none", image_size=50, dropout=0.3, dense_units=128)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.BinaryCrossentropy(), metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(x[: 3 * batch], y[: 3 * batch], batch_size=batch, epochs=1, verbose=0)
    compile_s = time.perf_counter() - started
    clock = Clock()
    n = steps * batch
    model.fit(x[:n], y[:n], batch_size=batch, epochs=1, verbose=0, callbacks=[clock])
    ended = time.perf_counter()
    rate = (steps - 1) * batch / (ended - clock.stamps[0])
    return {"backbone": name, "images_per_s": rate, "compile_s": compile_s, "steps": steps,
            "batch": batch, "params": model.count_params()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precision", default="mixed_float16")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--allow-cpu", action="store_true", help="Smoke-test without a GPU.")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, str(REPO_ROOT))
    import jax
    import keras
    import numpy as np

    devices = [str(d) for d in jax.devices()]
    if not args.allow_cpu and jax.default_backend() != "gpu":
        print(f"no GPU: JAX sees {devices}", file=sys.stderr)
        return 2
    keras.mixed_precision.set_global_policy(args.precision)
    import histomlf.models.factory  # noqa: F401

    leaked = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
    if leaked:
        print(f"histomlf.models.factory imported TensorFlow ({leaked[0]})", file=sys.stderr)
        return 3
    rng = np.random.default_rng(0)
    count = args.steps * args.batch
    x = rng.integers(0, 256, size=(count, 50, 50, 3), dtype=np.uint8)
    y = rng.integers(0, 2, size=(count,)).astype(np.float32)
    started = time.perf_counter()
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        results.append(measure(name, args.steps, args.batch, x, y))
        print(json.dumps(results[-1]), flush=True)
    report = {
        "status": "measured",
        "machine": {"gpu": gpu_name(), "jax_devices": devices, "cores": os.cpu_count(),
                    "cpu": platform.processor() or platform.machine(),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "load_average": os.getloadavg()},
        "versions": {"jax": jax.__version__, "keras": keras.__version__,
                     "python": platform.python_version()},
        "backend": keras.backend.backend(),
        "precision": args.precision,
        "seconds": time.perf_counter() - started,
        "results": results,
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def run(quick: bool) -> dict[str, Any]:
    """For `benchmarks.run`: the recorded GPU result, or a "pending" row without one."""
    from benchmarks.common import row

    if RESULT_FILE.is_file():
        report = json.loads(RESULT_FILE.read_text())
        machine = report["machine"]
        rows = [row("gpu", f"{r['backbone']} train bs{r['batch']} {report['precision']} (JAX)",
                    r["images_per_s"], "img/s",
                    note=f"{machine['gpu']}, {machine['date']}; compile {r['compile_s']:.0f} s")
                for r in report["results"]]  # fmt: skip
        return {"benchmark": "gpu_check", "rows": rows, "report": report}
    note = "pending: no GPU machine was lent to this task; run benchmarks/gpu_check.sh on one"
    rows = [row("gpu", f"{m} train bs256 mixed_float16 (JAX)", None, "img/s", note=note)
            for m in MODELS]  # fmt: skip
    return {"benchmark": "gpu_check", "rows": rows, "status": "pending"}


if __name__ == "__main__":
    sys.exit(main())
