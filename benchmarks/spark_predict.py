"""Patches/s of `histomlf predict --engine spark` against the in-process `histomlf predict`.

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.spark_predict \\
        --data ../shared/idc-sample ../shared/idc-more --json benchmarks/results/spark.json
    ... --max-patients 20        # a subset, when the machine is busy

Same model (histomlf's `simplecnn`, untrained: inference cost is what counts, no training),
same patches, same run: the in-process predict first (the baseline), an untimed Spark warm-up
job, then Spark on `local[2]` with the previous and the current worker settings
(`--all-variants`: also Arrow batch and TF threads), then a standalone cluster of two 1-core
workers started with pyspark's `spark-class`. Spark's start-up (JVM, context,
executors) is reported apart from the job's seconds; throughput is patches / job seconds.
Ends with a paper estimate for the full dataset (277,524 patches) from the measured rates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

FULL_DATASET_PATCHES = 277_524


def _load() -> tuple[float, float]:
    one, five, _ = os.getloadavg()
    return round(one, 2), round(five, 2)


def _gather(data: list[Path], target: Path, max_patients: int) -> Path:
    """One Kaggle-layout folder of symlinks to every patient of `data` (both top folders)."""
    taken = 0
    for root in data:
        for top in (root, root / "IDC_regular_ps50_idx5"):
            if not top.is_dir():
                continue
            for patient in sorted(p for p in top.iterdir() if p.name.isdigit()):
                if max_patients and taken >= max_patients:
                    return target
                for label in ("0", "1"):
                    source = patient / label
                    if source.is_dir():
                        dest = target / top.relative_to(root) / patient.name / label
                        dest.mkdir(parents=True, exist_ok=True)
                        for png in source.glob("*.png"):
                            (dest / png.name).symlink_to(png)
                taken += 1
    return target


def _model(store: Path) -> str:
    import mlflow

    from histomlf.models.factory import create_model
    from histomlf.tracking.pyfunc import log_patch_classifier

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_experiment("spark-bench")
    with mlflow.start_run():
        log_patch_classifier(create_model("simplecnn", weights=None), threshold=0.5,
                             registered_model_name="bench")
    mlflow.tracking.MlflowClient().set_registered_model_alias("bench", "champion", "1")
    return "models:/bench@champion"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--max-patients", type=int, default=0, help="0: all")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--all-variants", action="store_true",
                        help="also Arrow batch 256 and TF intra-op 2 (measured 2026-12-04)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    work = Path(tempfile.mkdtemp(prefix="histomlf-spark-bench-"))
    os.environ["HISTOMLF_CACHE"] = str(work / "cache")
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"load_start": _load(), "cores": os.cpu_count(), "rows": rows}
    try:
        data = _gather(args.data, work / "data", args.max_patients)
        model_uri = _model(work)

        # the scan is cached first, so the baseline times scoring, as Spark's job does
        from histomlf.data.scan import scan_to_cache
        from histomlf.recipes.evaluate import predict
        from histomlf.recipes.spark_predict import spark_predict
        from histomlf.spark.cluster import standalone_cluster
        from histomlf.spark.session import SparkSettings

        patches = len(scan_to_cache(data).manifest)
        started = time.perf_counter()
        predict(model_uri, str(data), work / "inproc" / "predictions.csv")
        baseline = patches / (time.perf_counter() - started)
        rows.append({"variant": "in-process histomlf predict", "patches_per_s": baseline,
                     "patches": patches})
        print(f"in-process: {baseline:.0f} patches/s ({patches} patches)", flush=True)

        # an untimed job on two patients first: the first job in a JVM pays its JIT warm-up
        # (binaryFile, Arrow, Parquet), which measured 2x on whichever variant ran first; each
        # variant then gets a fresh context (fresh Python daemon and workers) in a warm JVM.
        # The previous defaults: bare pyspark daemon, model loaded in every task.
        warm = _gather(args.data, work / "warm", 2)
        first = spark_predict(model_uri, str(warm), work / "warm-out",
                              settings=SparkSettings(master="local[2]"))
        report["warmup"] = {"patches": first["patches"], "startup_s": first["startup_s"],
                            "job_s": first["job_s"], "note": "JVM start + first context"}
        print(f"warm-up: JVM + first context {first['startup_s']:.1f} s, "
              f"{first['patches']} patches in {first['job_s']:.1f} s", flush=True)
        before = {"spark.executorEnv.HISTOMLF_PYFUNC_PROCESS_CACHE": "0"}
        variants = [
            ("local[2], no preload, model per task (previous)",
             SparkSettings(master="local[2]", preload=False, conf=before)),
            ("local[2], preload + model per worker (current)", SparkSettings(master="local[2]")),
        ]
        if args.all_variants:
            variants += [
                ("local[2], batch 256, TF threads 1",
                 SparkSettings(master="local[2]", max_records_per_batch=256)),
                ("local[2], batch 1024, TF threads 2",
                 SparkSettings(master="local[2]", tf_intra_op_threads=2)),
            ]
        for name, settings in variants:
            rows.append(_spark_row(name, spark_predict, model_uri, data, work, settings,
                                   baseline))
        if not args.skip_cluster:
            with standalone_cluster(work / "cluster", workers=2, cores=1, memory="1g") as c:
                rows.append(_spark_row("standalone, 2 workers x 1 core (current)",
                                       spark_predict, model_uri, data, work,
                                       SparkSettings(master=c.url), baseline))
        best = max(r["patches_per_s"] for r in rows[1:])
        report["estimate_full_dataset_s"] = {
            "in_process": FULL_DATASET_PATCHES / baseline,
            "spark_best_2_cores": FULL_DATASET_PATCHES / best,
        }
    finally:
        report["load_end"] = _load()
        shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(report, indent=2, default=float))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, default=float))


def _spark_row(name, spark_predict, model_uri, data, work, settings, baseline) -> dict:
    out = work / "spark" / name.replace(" ", "_").replace(",", "").replace("[", "").replace(
        "]", "")
    result = spark_predict(model_uri, str(data), out, settings=settings)
    row = {"variant": name, "patches_per_s": result["patches_per_s"],
           "ratio": result["patches_per_s"] / baseline, "startup_s": result["startup_s"],
           "job_s": result["job_s"], "patches": result["patches"], "load": _load()}
    print(f"{name}: {row['patches_per_s']:.0f} patches/s ({row['ratio']:.2f}x), start-up "
          f"{row['startup_s']:.1f} s", flush=True)
    return row


if __name__ == "__main__":
    main()
