"""Where a `--engine spark` job's seconds go: one run, every Spark stage's wall and task time.

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.spark_profile --data ../shared/idc-sample \\
        --max-patients 20 [--master local[2]] [--tasks-per-core 2]

Prints Spark start-up, the job's seconds, then per stage (from the application's REST API):
its name, tasks, wall seconds and the summed executor run time, and the per-task Python
worker/model-load overhead visible as the gap between them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.spark_predict import _gather, _model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True)
    parser.add_argument("--max-patients", type=int, default=20)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--tasks-per-core", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    work = Path(tempfile.mkdtemp(prefix="histomlf-spark-profile-"))
    os.environ["HISTOMLF_CACHE"] = str(work / "cache")
    data = _gather(args.data, work / "data", args.max_patients)
    model_uri = _model(work)

    from histomlf.recipes.spark_predict import spark_predict
    from histomlf.spark.cluster import get_json
    from histomlf.spark.session import SparkSettings

    stages: list[dict] = []

    def keep_stages(started) -> None:
        url, app = started.ui_url(), started.spark.sparkContext.applicationId
        stages[:] = get_json(f"{url}/api/v1/applications/{app}/stages", timeout=30)

    kwargs = {"master": args.master}
    if args.tasks_per_core:
        kwargs["tasks_per_core"] = args.tasks_per_core
    t0 = time.perf_counter()
    result = spark_predict(model_uri, str(data), work / "out",
                           settings=SparkSettings(**kwargs), before_stop=keep_stages)
    print(f"total {time.perf_counter() - t0:.1f} s; start-up {result['startup_s']:.1f} s; "
          f"job {result['job_s']:.1f} s; {result['patches']} patches, "
          f"{result['patches_per_s']:.1f} patches/s; load {os.getloadavg()[:2]}")
    for s in sorted(stages, key=lambda s: s["stageId"]):
        if s.get("status") != "COMPLETE" or "submissionTime" not in s:
            continue
        from datetime import datetime

        def ts(v: str) -> float:
            return datetime.strptime(v, "%Y-%m-%dT%H:%M:%S.%f%Z").timestamp()

        wall = ts(s["completionTime"]) - ts(s["submissionTime"])
        print(f"stage {s['stageId']:>2} {s['name'][:60]:<60} tasks {s['numTasks']:>3} "
              f"wall {wall:6.1f} s  run {s['executorRunTime'] / 1e3:6.1f} s  "
              f"cpu {s['executorCpuTime'] / 1e9:6.1f} s")
    print(json.dumps({k: v for k, v in result.items() if k != "executor_tasks"}, default=str))


if __name__ == "__main__":
    main()
