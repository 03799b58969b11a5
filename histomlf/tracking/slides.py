"""Slide runs in MLflow: a logged model as a `SlideModel`, and one run per scored slide.

A slide run has kind `slide` (`RunKind.SLIDE`); a folder gets a `slide-batch` parent with one
nested run per slide, so the UI compares slides and models side by side. Each slide run carries
the model's URI, name and resolved version and the slide's SHA-256 as tags, the summary figures
as metrics (`SLIDE_METRICS` and the tile counts), and every output file as an artifact, the
heatmap also as an MLflow image. Nothing else about the slide is logged: never its label or
macro image (they can carry patient identifiers).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from histomlf.data.patches import PATCH_SIZE
from histomlf.schema import SLIDE_METRICS, MlflowTag, ModelMeta, RunKind, SlideArtifact, Tag
from histomlf.slides.predict import SlideModel, SlideResult
from histomlf.slides.reader import SlideError, sha256_of
from histomlf.tracking import runs
from histomlf.tracking.pyfunc import predict_patches
from histomlf.tracking.scoring import load_model, model_threshold

# Summary figures logged as metrics besides SLIDE_METRICS.
_EXTRA_METRICS = (
    "tiles_total", "tiles_dropped_tissue", "tiles_dropped_ink", "tiles_positive", "idc_foci",
    "largest_focus_area_mm2", "largest_focus_extent_mm", "slide_mpp", "seconds",
)  # fmt: skip
_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))$")


def model_scale(metadata: Mapping[str, Any] | None, patch_mpp: float | None) -> tuple[int, float]:
    """`(patch_px, patch_mpp)` of a logged model: from its metadata, or from an explicit
    `patch_mpp` for a model logged before models recorded their scale; else a one-line refusal.
    """
    metadata = dict(metadata or {})
    recorded = metadata.get(ModelMeta.PATCH_MPP)
    patch_px = int(metadata.get(ModelMeta.PATCH_PX) or PATCH_SIZE)
    if recorded is None:
        if patch_mpp is None:
            raise SlideError(
                "the model does not record its scale (patch_mpp, from before models did); "
                "pass --patch-mpp with the µm/px of its training patches (4 for the Kaggle IDC "
                "layout)"
            )
        return patch_px, float(patch_mpp)
    recorded = float(recorded)
    if patch_mpp is not None and not math.isclose(patch_mpp, recorded, rel_tol=1e-3):
        raise SlideError(
            f"--patch-mpp {patch_mpp:g} contradicts the model's own {recorded:g} µm/px; "
            "a model applied at another scale than it was trained at is silently wrong"
        )
    return patch_px, recorded


def resolve_version(model_uri: str) -> tuple[str, str]:
    """`(registered name, version)` behind `models:/NAME/V` or `models:/NAME@ALIAS`; for a run's
    or a logged model's URI, the registered version made from it if exactly one, else ("", "")."""
    client = MlflowClient()
    match = _REGISTERED.match(model_uri)
    if match and match["version"]:
        return match["name"], match["version"]
    if match and match["alias"]:
        version = client.get_model_version_by_alias(match["name"], match["alias"])
        return match["name"], str(version.version)
    run = re.match(r"^runs:/([^/]+)/", model_uri)
    if run:
        found = client.search_model_versions(f"run_id = '{run[1]}'")
        if len(found) == 1:
            return found[0].name, str(found[0].version)
    return "", ""


def load_slide_model(model_uri: str, *, patch_mpp: float | None = None) -> SlideModel:
    """A logged histomlf model as a `SlideModel`: tiles go through its pyfunc (the same
    validation, padding and compiled predictor as `mlflow models serve`)."""
    model = load_model(model_uri)
    patch_px, mpp = model_scale(getattr(model.metadata, "metadata", None), patch_mpp)
    python_model = model.unwrap_python_model()
    batch_size = max(1, min(int(python_model.batch_size), int(python_model.max_images)))
    name, version = resolve_version(model_uri)

    def score(batch):
        return predict_patches(model, batch)["probability"].to_numpy()

    return SlideModel(
        score=score, threshold=model_threshold(model), patch_px=patch_px, patch_mpp=mpp,
        uri=model_uri, name=name, version=version, batch_size=batch_size,
    )  # fmt: skip


def slide_model_info(model_uri: str, *, patch_mpp: float | None = None) -> SlideModel:
    """What a driver needs of a logged model without loading it (no TensorFlow, only its
    `MLmodel` file): scale, threshold, batch size, name and version, refusals included. Its
    `score` refuses to run: the tasks load the model themselves (`tracking/spark_slides`)."""
    from mlflow.models import Model

    from histomlf.tracking.pyfunc import DEFAULT_LIMITS, _check_threshold, config_key

    logged = Model.load(model_uri)
    patch_px, mpp = model_scale(logged.metadata, patch_mpp)
    flavor = logged.flavors.get("python_function", {})
    config = flavor.get("config") or flavor.get("model_config") or {}  # MLmodel says "config"
    batch_size = min(int(config.get(config_key(key), DEFAULT_LIMITS[key]))
                     for key in ("batch_size", "max_images"))
    name, version = resolve_version(model_uri)

    def score(batch):
        raise RuntimeError(f"{model_uri} is described, not loaded: use load_slide_model")

    return SlideModel(
        score=score, threshold=_check_threshold(config.get(config_key("threshold"))),
        patch_px=patch_px, patch_mpp=mpp, uri=model_uri, name=name, version=version,
        batch_size=max(1, batch_size),
    )  # fmt: skip


def _model_tags(model: SlideModel) -> dict[str, str]:
    return {Tag.MODEL_URI: model.uri, Tag.MODEL_NAME: model.name, Tag.MODEL_VERSION: model.version}


@contextlib.contextmanager
def batch_run(model: SlideModel, source: str, params: Mapping[str, Any]) -> Iterator[str]:
    """The `slide-batch` parent run of a folder; yields its run id."""
    with runs.active_run(run_name=f"slides-{Path(source).name}") as run:
        runs.set_tags({Tag.KIND: RunKind.SLIDE_BATCH, **_model_tags(model)})
        runs.log_resolved_params({**params, "model_uri": model.uri, "source": source})
        yield run.info.run_id


@contextlib.contextmanager
def slide_run(
    model: SlideModel, slide: Path, params: Mapping[str, Any], *, nested: bool,
    sha256: str | None = None,
) -> Iterator[str]:
    """One slide's run (nested under the active batch run when `nested`), tagged with the
    slide's SHA-256 before it is read (`sha256` when the caller has it: a Spark task hashed the
    slide already); yields its run id.

    A `SlideError` inside marks the run FAILED with the reason as a tag and is re-raised.
    """
    name = f"slide-{slide.stem}"
    tags = {Tag.KIND: str(RunKind.SLIDE), Tag.SLIDE_NAME: slide.name, **_model_tags(model)}
    opener = (
        runs.nested_run(name, tags=tags) if nested else runs.active_run(run_name=name, tags=tags)
    )
    with opener as run:
        runs.log_resolved_params({**params, "model_uri": model.uri})
        if sha256 or slide.is_file():  # by content, failed slides too
            runs.set_tags({Tag.SLIDE_SHA256: sha256 or sha256_of(slide)})
        try:
            yield run.info.run_id
        except SlideError as error:
            mlflow.set_tag(Tag.SLIDE_ERROR, str(error)[:5000])
            raise  # leaving `start_run`'s block with an exception ends the run FAILED


def log_slide_result(result: SlideResult) -> None:
    """The summary as metrics, SHA-256 as a tag, every output file as an artifact."""
    summary = result.summary
    metrics = {
        key: float(summary[key])
        for key in (*SLIDE_METRICS, *_EXTRA_METRICS)
        if isinstance(summary.get(key), int | float) and math.isfinite(summary[key])
    }
    runs.log_metrics(metrics)
    for path in result.files.values():
        mlflow.log_artifact(str(path))
    from PIL import Image

    with Image.open(result.files["heatmap"]) as heatmap:
        mlflow.log_image(heatmap.convert("RGB"), key="heatmap")


def log_folder_table(path: Path) -> None:
    """The folder's `slides.csv` (or `slides.parquet`, from Spark) on the batch run."""
    if path.name not in (SlideArtifact.FOLDER_SUMMARY, SlideArtifact.FOLDER_PARQUET):
        raise ValueError(f"expected {SlideArtifact.FOLDER_SUMMARY}, got {path.name}")
    mlflow.log_artifact(str(path))


def run_tag(run_id: str, key: str) -> str | None:
    """One tag of a run (None when unset)."""
    return MlflowClient().get_run(run_id).data.tags.get(key)


def run_record(run_id: str) -> dict[str, Any]:
    """A slide run read back: kind, tags, metrics and artifact paths (for tests and readers)."""
    client = MlflowClient()
    run = client.get_run(run_id)
    return {
        "kind": run.data.tags.get(Tag.KIND),
        "status": run.info.status,
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
        "params": dict(run.data.params),
        "artifacts": sorted(a.path for a in client.list_artifacts(run_id)),
        "parent": run.data.tags.get(MlflowTag.PARENT_RUN_ID),
    }
