"""`histomlf slide predict MODEL_URI SLIDE|FOLDER --out DIR --engine spark`: slides on Spark.

The driver lists the slides, pins the model (`@alias` resolved once to `models:/NAME/<version>`:
an alias moved mid-job must not mix two models in one folder) and checks its scale from the
`MLmodel` file alone (the driver loads no TensorFlow); Spark runs one task per slide, each
writing the in-process path's outputs into `OUT/<slide stem>/` (`OUT/` for one slide file).
Back on the driver: `slides.parquet` and `slides.csv` (one row per slide, failures with their
reason) and the same MLflow record as the in-process run — a `slide-batch` parent with one
`slide` run per slide, logged from the task's summary and the files it wrote. OUT must be a
filesystem the executors share with the driver.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from histomlf.recipes.slide import FOLDER_COLUMNS, SlideBatchResult, _row, write_folder_table
from histomlf.schema import SlideArtifact
from histomlf.slides.predict import SlideOptions, SlideResult
from histomlf.slides.reader import SlideError, find_slides
from histomlf.spark.outputs import write_table
from histomlf.spark.session import (
    SparkSettings,
    StartedSpark,
    check_pyspark,
    java_executable,
    spark_session,
)
from histomlf.spark.slides import run_per_slide
from histomlf.tracking import runs
from histomlf.tracking import slides as tracked
from histomlf.tracking.spark_scoring import resolve_model
from histomlf.tracking.spark_slides import slide_task


def spark_predict_slides(
    model_uri: str,
    source: str | Path,
    out: str | Path,
    options: SlideOptions,
    *,
    patch_mpp: float | None = None,
    settings: SparkSettings | None = None,
    session: StartedSpark | None = None,
) -> SlideBatchResult:
    """Score one slide or a folder of slides with `model_uri` on Spark, tracked in MLflow.

    `session`: an open session to run in (left open), instead of starting one from `settings`.
    """
    settings = settings or SparkSettings()
    java_executable()  # before a model is resolved or a JVM started: one line
    check_pyspark()
    source, out = Path(source), Path(out)
    slides = find_slides(source)
    pinned = resolve_model(model_uri)
    model = tracked.slide_model_info(pinned.uri, patch_mpp=patch_mpp)
    single = source.is_file()
    items = [(str(s.resolve()), str((out if single else out / s.stem).resolve())) for s in slides]
    task = slide_task(model.uri, options, patch_mpp=patch_mpp)

    started_at = time.perf_counter()
    opened = contextlib.nullcontext(session) if session is not None else spark_session(settings)
    with opened as started:
        job_started = time.perf_counter()
        answers = run_per_slide(started.spark, items, task)
        job_s = time.perf_counter() - job_started
        master = started.conf.get("spark.master", settings.master)
        startup_s = started.startup_s
    params = {**options.as_params(), "patch_mpp": model.patch_mpp, "patch_px": model.patch_px,
              "engine": "spark", "master": master, "requested_model_uri": model_uri}
    metrics = {"slides": len(answers), "spark_startup_s": startup_s, "job_s": job_s}

    result = SlideBatchResult()
    if single:
        with tracked.slide_run(model, slides[0], params, nested=False,
                               sha256=_sha256(answers[0])) as run_id:
            result.run_id = run_id
            result.rows.append(_log(slides[0], answers[0], run_id))
            runs.log_metrics(metrics)
        result.table = _write_tables(result.rows, out, model)
        return result

    with tracked.batch_run(model, str(source), params) as parent_id:
        result.run_id = parent_id
        for slide, answer in zip(slides, answers, strict=True):
            run_id = ""
            try:
                with tracked.slide_run(model, slide, params, nested=True,
                                       sha256=_sha256(answer)) as run_id:
                    result.rows.append(_log(slide, answer, run_id))
            except SlideError as error:
                result.rows.append(
                    {"slide": slide.name, "status": "failed", "error": str(error), "run_id": run_id}
                )
        result.table = _write_tables(result.rows, out, model)
        tracked.log_folder_table(out / SlideArtifact.FOLDER_SUMMARY)
        tracked.log_folder_table(result.table)
        runs.log_metrics({**metrics, "slides_failed": len(result.failures),
                          "seconds": time.perf_counter() - started_at})
    return result


def _sha256(answer: dict[str, Any]) -> str | None:
    return json.loads(answer["summary"]).get("slide_sha256") if answer["summary"] else None


def _log(slide: Path, answer: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Log one task's answer into the open slide run; a failed slide raises its `SlideError`
    (the run ends FAILED with the reason as a tag, as in the in-process path)."""
    if answer["status"] != "ok":
        raise SlideError(answer["error"])
    files = {key: Path(path) for key, path in json.loads(answer["files"]).items()}
    scored = SlideResult(json.loads(answer["summary"]), Path(answer["out_dir"]), files)
    tracked.log_slide_result(scored)
    return _row(slide, scored, run_id)


def _write_tables(rows: list[dict[str, Any]], out: Path, model) -> Path:
    """`slides.csv` (as the in-process path writes it) and `slides.parquet`, the model in its
    metadata; integer columns stay integers (nullable) beside failed rows."""
    write_folder_table(rows, out / SlideArtifact.FOLDER_SUMMARY)
    records = [{key: row.get(key) for key in FOLDER_COLUMNS} for row in rows]
    columns = {}
    for key in FOLDER_COLUMNS:
        raw = [record[key] for record in records]
        values = [v for v in raw if v is not None and v == v]  # NaN != NaN
        if values and all(isinstance(v, bool) for v in values):
            dtype = "boolean"
        elif values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            dtype = "Int64"
        elif values and all(isinstance(v, int | float) for v in values):
            dtype = "float64"
        else:
            dtype = "string"
        columns[key] = pd.array(raw, dtype=dtype)
    frame = pd.DataFrame(columns)
    metadata = {"model_uri": model.uri, "model_name": model.name, "model_version": model.version}
    return write_table(frame, out / SlideArtifact.FOLDER_PARQUET, metadata)
