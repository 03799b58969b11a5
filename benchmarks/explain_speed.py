"""Explanation speed: Grad-CAM patches/s per backbone (and with SmoothGrad), patient-map render.

    .venv/bin/python -m benchmarks.explain_speed [--quick] [--json out.json]

Grad-CAM (`histomlf.explain.gradcam.GradCam`, batch 32, weights=none: speed does not depend on
the weights) on real sample patches, against plain compiled inference of the same model in the
same process (`tf.function(model)(x)`, the forward pass alone); SmoothGrad (8 noisy copies) against
plain Grad-CAM. Patient maps (`save_patient_map`: stitch the files, draw four panels, write PNG
and .npz) for the real sample patient closest to 36 patches and for a dense synthetic patient of
2,000 patches, against stitching the tissue alone. Best of 3; one process, so TensorFlow uses
every core it sees, matplotlib one. Target: a dense patient's map in <= 2 s on one core.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import BENCH_CACHE, cli, row, sample_rows  # noqa: E402

FULL = {"patches": 64, "smooth_patches": 32, "repeats": 3, "dense": 2000}
QUICK = {"patches": 32, "smooth_patches": 32, "repeats": 1, "dense": 2000}
BATCH = 32


def _best(call: Any, repeats: int) -> float:
    """Fastest of `repeats` timed calls after one untimed warm-up (tracing, caches)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def gradcam_rows(settings: dict[str, Any]) -> list[dict[str, Any]]:
    import numpy as np
    import tensorflow as tf

    from histomlf.data.patches import decode_patch
    from histomlf.explain.gradcam import GradCam, SmoothGrad
    from histomlf.models import create_model, list_models

    rows = sample_rows(limit=settings["patches"])
    patches = np.stack([decode_patch(Path(p).read_bytes()) for p in rows["path"]])
    smooth_patches = patches[: settings["smooth_patches"]]
    out = []
    for name in list_models():
        model = create_model(name, weights="none")
        explainer = GradCam(model)
        forward = tf.function(lambda x, m=model: m(x, training=False), reduce_retracing=True)

        def infer(m=forward) -> None:
            for start in range(0, len(patches), BATCH):
                m(tf.constant(patches[start : start + BATCH], tf.float32)).numpy()

        inference = len(patches) / _best(infer, settings["repeats"])
        plain = len(patches) / _best(lambda e=explainer: e(patches), settings["repeats"])
        out.append(
            row("explain", f"Grad-CAM {name} ({explainer.layer}, batch {BATCH})", plain,
                "patches/s", baseline=inference, baseline_name="compiled inference",
                note=f"{len(patches)} sample patches")  # fmt: skip
        )
        smooth = SmoothGrad(seed=0)
        seconds = _best(lambda e=explainer, s=smooth: e(smooth_patches, smoothgrad=s), 1)
        out.append(
            row("explain", f"SmoothGrad {name} ({smooth.samples} samples)",
                len(smooth_patches) / seconds, "patches/s", baseline=plain,
                baseline_name="plain Grad-CAM",
                note=f"{len(smooth_patches)} patches, best of 1")  # fmt: skip
        )
        print(f"{name}: Grad-CAM {plain:.1f}, SmoothGrad {out[-1]['value']:.1f} patches/s",
              flush=True)  # fmt: skip
    return out


def _dense_patient(count: int) -> Any:
    from histomlf.data.scan import scan_dataset
    from histomlf.data.synth import generate_dataset

    folder = BENCH_CACHE / "explain" / f"dense-{count}"
    if not (folder / ".complete").exists():
        generate_dataset(folder, 1, count, seed=3, duplicate_folder=False, workers=1)
        (folder / ".complete").touch()
    return scan_dataset(folder, workers=1, progress=False).manifest


def patient_map_rows(settings: dict[str, Any]) -> list[dict[str, Any]]:
    import numpy as np

    from histomlf.explain.patient_map import patient_grid, save_patient_map, stitch_tissue

    sample = sample_rows()
    sizes = sample.groupby("patient_id").size()
    sparse_id = (sizes - 36).abs().idxmin()
    cases = {
        f"real sample patient, {sizes[sparse_id]} patches": sample[sample.patient_id == sparse_id],
        f"dense synthetic patient, {settings['dense']} patches": _dense_patient(settings["dense"]),
    }
    out = []
    with tempfile.TemporaryDirectory() as folder:
        for label, frame in cases.items():
            frame = frame.copy()
            rng = np.random.default_rng(0)
            noisy = 0.3 + 0.4 * frame["label"] + rng.normal(0, 0.2, len(frame))
            frame["probability"] = np.clip(noisy, 0, 1)
            grid = patient_grid(frame, 0.5)
            stitch = _best(lambda f=frame, g=grid: stitch_tissue(f, g), settings["repeats"])
            png = Path(folder) / f"{frame.patient_id.iloc[0]}.png"
            render = _best(lambda f=frame, p=png: save_patient_map(f, 0.5, p), settings["repeats"])
            dense = "dense" in label
            out.append(
                row("explain", f"patient map, {label}", render, "s", baseline=stitch,
                    baseline_name="stitching the tissue alone",
                    target="<= 2 s" if dense else "", met=(render <= 2.0) if dense else None,
                    note=f"grid {grid.shape[0]}x{grid.shape[1]} cells, PNG + npz")  # fmt: skip
            )
            print(out[-1]["variant"], round(render, 3), "s", flush=True)
    return out


def run(quick: bool) -> dict[str, Any]:
    settings = QUICK if quick else FULL
    rows = patient_map_rows(settings) + gradcam_rows(settings)
    return {"rows": rows, "settings": settings}


if __name__ == "__main__":
    cli(__doc__.splitlines()[0], run)
