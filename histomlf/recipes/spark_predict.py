"""`histomlf predict MODEL DATA --engine spark`: score every patch of DATA on Apache Spark.

The same model and numbers as the in-process `histomlf predict` (its pyfunc, through
`mlflow.pyfunc.spark_udf`), for data that outgrows one process: a Kaggle-layout folder, a
manifest or an `s3://` prefix, on `local[N]`, a standalone cluster, Kubernetes or Databricks.
Every file is checked first; bad ones go to `quarantine.parquet` and the job completes. The job
is one MLflow run of kind `spark-predict` holding the resolved model version, the input, the
counts, the seconds (Spark start-up apart) and the throughput.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from histomlf.schema import RunKind, Tag
from histomlf.spark.outputs import (
    PATIENTS_FILE,
    QUARANTINE_FILE,
    patient_summary,
    write_patches,
    write_table,
)
from histomlf.spark.patches import checked, kept, quarantine
from histomlf.spark.session import (
    SparkSettings,
    StartedSpark,
    check_pyspark,
    java_executable,
    spark_session,
)
from histomlf.spark.sources import read_source, source_of
from histomlf.tracking import runs
from histomlf.tracking.spark_scoring import (
    images_per_call,
    patch_scorer,
    resolve_model,
    score,
)


def spark_predict(
    model_uri: str,
    data: str,
    out_dir: Path,
    *,
    settings: SparkSettings | None = None,
    on_session: Callable[[Any], None] | None = None,
    before_stop: Callable[[Any], None] | None = None,
    session: StartedSpark | None = None,
) -> dict[str, Any]:
    """Score DATA with MODEL_URI on Spark into `out_dir`; returns counts, seconds and paths.

    `on_session` is called with the started session (`StartedSpark`) before the job runs, e.g.
    to watch it through the Spark UI's REST API; `before_stop` after the job, while the session
    (and its UI) is still up, e.g. to read its stages. `session`: an open session to run in
    (left open; `settings` then only name the batch and thread choices logged), instead of
    starting one: several jobs in one process (the tests) pay Spark's start-up once.
    """
    settings = settings or SparkSettings()
    java_executable()  # before any run is opened or a JVM started: one line, not a traceback
    check_pyspark()
    source = source_of(data)
    model = resolve_model(model_uri)
    cap = images_per_call(model.uri)
    if settings.max_records_per_batch > cap:
        raise ValueError(
            f"max_records_per_batch {settings.max_records_per_batch} exceeds the "
            f"{cap} images {model.uri} accepts per call"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"model_uri": model.uri, "requested_model_uri": model.requested,
                "model_name": model.name or "", "model_version": model.version or "",
                "input": source.location}
    started_at = time.perf_counter()
    opened = contextlib.nullcontext(session) if session is not None else spark_session(settings)
    with runs.active_run(run_name="spark-predict") as run, opened as started:
        runs.set_tags({Tag.KIND: RunKind.SPARK_PREDICT, Tag.MODEL_URI: model.uri,
                       Tag.MODEL_NAME: model.name or "", Tag.MODEL_VERSION: model.version or "",
                       Tag.DATA_SOURCE: source.location})
        runs.log_resolved_params({
            "model_uri": model.requested, "data": source.location, "source": source.kind,
            "master": started.conf.get("spark.master", settings.master),
            "max_records_per_batch": settings.max_records_per_batch,
            "tf_intra_op_threads": settings.tf_intra_op_threads, "tasks": started.task_count,
            "out": str(out_dir.resolve()),
        })
        if on_session is not None:
            on_session(started)
        spark = started.spark
        job_started = time.perf_counter()
        phases: dict[str, float] = {}

        def phase(name: str, since: float) -> float:
            now = time.perf_counter()
            phases[name] = round(now - since, 3)
            return now

        rows = checked(read_source(spark, source, started.task_count)).persist()
        try:
            bad = quarantine(rows).toPandas()
            mark = phase("list_check_quarantine", job_started)
            scorer = patch_scorer(spark, model.uri)
            mark = phase("spark_udf", mark)
            scored = score(kept(rows).repartition(started.task_count), scorer)
            patches_dir = write_patches(scored, out_dir, metadata)
            mark = phase("score_write", mark)
        finally:
            rows.unpersist()
        patients = patient_summary(spark, patches_dir)
        phase("patient_summary", mark)
        job_s = time.perf_counter() - job_started
        write_table(patients, out_dir / PATIENTS_FILE, metadata)
        write_table(bad, out_dir / QUARANTINE_FILE, metadata)
        executor_tasks = started.executor_tasks()
        count = int(patients["patches"].sum())
        result = {
            "run_id": run.info.run_id,
            "app_id": spark.sparkContext.applicationId,
            "model_uri": model.uri,
            "model_version": model.version,
            "patches": count,
            "patients": len(patients),
            "quarantined": len(bad),
            "startup_s": started.startup_s,
            "job_s": job_s,
            "patches_per_s": count / job_s if job_s > 0 else 0.0,
            "executor_tasks": executor_tasks,
            "phase_s": phases,  # where the job's seconds went, on the driver's clock
            "out": str(out_dir),
        }
        runs.log_metrics({"patches": count, "patients": len(patients), "quarantined": len(bad),
                          "spark_startup_s": started.startup_s, "job_s": job_s,
                          "seconds": time.perf_counter() - started_at,
                          "patches_per_s": result["patches_per_s"]})
        runs.log_json({**result, "spark_conf": started.conf}, "spark_predict.json")
        if before_stop is not None:
            before_stop(started)
        return result
