"""The executor side of `histomlf slide predict --engine spark`: one task scores one slide.

A task gets `(slide path, output folder)` pairs, opens each slide itself (OpenSlide handles do
not pickle), scores it with `histomlf.slides.predict.predict_slide` — the in-process path's own
function, so the outputs are the same files — and returns one plain row per slide: its summary
and output files, or `status="failed"` with a one-line reason, so a bad slide never fails the
job (nor is retried by Spark: the failure is an answer, not a lost task).

The model is loaded once per Python worker (`_MODELS`, keyed by URI, scale and tracking URI;
Spark reuses workers across tasks), from the tracking server the driver used: its URI travels
with the task, since a cluster's executors do not share the driver's environment. It lives in
`tracking/` because it loads a logged model; the Spark glue in `histomlf.spark.slides` only
runs it.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from histomlf.slides.predict import SlideModel, SlideOptions, predict_slide

_MODELS: dict[tuple[str, float | None, str], SlideModel] = {}


def slide_task(
    model_uri: str, options: SlideOptions, *, patch_mpp: float | None = None
) -> Callable[[Iterable[tuple[str, str]]], Iterator[dict[str, Any]]]:
    """The picklable task function for `mapPartitions`, bound to the model (a pinned
    `models:/NAME/<version>`), the options and the driver's tracking URI."""
    import mlflow

    return functools.partial(
        score_partition, model_uri=model_uri, options=options, patch_mpp=patch_mpp,
        tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri(),
    )  # fmt: skip


def score_partition(
    items: Iterable[tuple[str, str]],
    *,
    model_uri: str,
    options: SlideOptions,
    patch_mpp: float | None,
    tracking_uri: str,
    registry_uri: str,
) -> Iterator[dict[str, Any]]:
    for slide, out_dir in items:
        yield score_one(slide, out_dir, model_uri=model_uri, options=options,
                        patch_mpp=patch_mpp, tracking_uri=tracking_uri,
                        registry_uri=registry_uri)


def score_one(
    slide: str,
    out_dir: str,
    *,
    model_uri: str,
    options: SlideOptions,
    patch_mpp: float | None = None,
    tracking_uri: str = "",
    registry_uri: str = "",
) -> dict[str, Any]:
    """One slide scored into `out_dir`: a row with `status` "ok" (summary and files as JSON)
    or "failed" (the reason in one line). Any error is a failed row, not a failed task."""
    row = {"slide": Path(slide).name, "path": slide, "out_dir": out_dir, "status": "ok",
           "error": "", "summary": "", "files": "", "host": socket.gethostname(),
           "pid": os.getpid()}
    try:
        model = _model(model_uri, patch_mpp, tracking_uri, registry_uri)
        result = predict_slide(slide, model, options, out_dir)
    except Exception as error:  # noqa: BLE001 - reported per slide, the job goes on
        reason = " ".join(str(error).split()) or type(error).__name__
        if row["slide"] not in reason:
            reason = f"{row['slide']}: {type(error).__name__}: {reason}"
        return {**row, "status": "failed", "error": reason}
    files = {key: str(path) for key, path in result.files.items()}
    return {**row, "summary": json.dumps(result.summary), "files": json.dumps(files)}


def _model(model_uri: str, patch_mpp: float | None, tracking_uri: str,
           registry_uri: str) -> SlideModel:
    key = (model_uri, patch_mpp, tracking_uri)
    if key not in _MODELS:
        import mlflow

        from histomlf.tracking.slides import load_slide_model

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        if registry_uri:
            mlflow.set_registry_uri(registry_uri)
        _MODELS[key] = load_slide_model(model_uri, patch_mpp=patch_mpp)
    return _MODELS[key]
