"""`histomlf slide predict --engine spark` on `local[2]`: one Spark task per slide, the same
outputs, figures and MLflow record as the in-process path on a stitched real patient, and a
broken slide listed with its reason while the job completes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from study_store import invoke_cli, tracking_env

from histomlf.schema import PROB_COLUMN, SLIDE_METRICS, RunKind, SlideArtifact, Tag

pytestmark = pytest.mark.slow

BROKEN = "broken.svs"
# Summary keys that may differ between engines: wall time, and the model URI (Spark pins
# `@champion` to `models:/NAME/<version>` before the job; the in-process path keeps the alias).
ENGINE_KEYS = {"seconds", "model_uri"}


@pytest.fixture(scope="module")
def local_spark() -> Iterator[object]:
    """A `local[2]` session, as `test_spark.local_spark` (stopped at the end of the module: a
    process has one SparkContext, and test_spark's own session or cluster comes after)."""
    from histomlf.spark.session import SparkSettings, spark_session

    with spark_session(SparkSettings(master="local[2]")) as started:
        yield started


def _env(store) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": store.tracking_uri, "MLFLOW_EXPERIMENT_ID": store.experiment_id}


def test_spark_slide_predict_equals_the_in_process_run_and_lists_a_broken_slide(
    local_spark, slide_store, stitched_slides, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from histomlf.recipes.slide import predict_slides
    from histomlf.recipes.spark_slide import spark_predict_slides
    from histomlf.slides.predict import SlideOptions
    from histomlf.spark.outputs import read_model_metadata
    from histomlf.tracking.slides import run_record

    folder = tmp_path / "slides"
    folder.mkdir()
    stitched = folder / stitched_slides.plain.name
    shutil.copy(stitched_slides.plain, stitched)
    (folder / BROKEN).write_text("a text file renamed .svs\n")
    options = SlideOptions()
    with tracking_env(**_env(slide_store)):
        local = predict_slides(slide_store.registered_uri, folder, tmp_path / "local", options)
        spark = spark_predict_slides(slide_store.registered_uri, folder, tmp_path / "spark",
                                     options, session=local_spark)

    # the same per-slide outputs, the same tiles and probabilities, the same figures
    want_dir, have_dir = tmp_path / "local" / stitched.stem, tmp_path / "spark" / stitched.stem
    assert sorted(p.name for p in have_dir.iterdir()) == sorted(p.name for p in want_dir.iterdir())
    want = pd.read_csv(want_dir / SlideArtifact.TILES_CSV)
    have = pd.read_csv(have_dir / SlideArtifact.TILES_CSV)
    assert len(have) == len(want) > 0
    assert (have[["minx", "miny", "label"]] == want[["minx", "miny", "label"]]).all().all()
    assert (have[PROB_COLUMN] - want[PROB_COLUMN]).abs().max() <= 1e-5
    want_summary = json.loads((want_dir / SlideArtifact.SUMMARY).read_text())
    have_summary = json.loads((have_dir / SlideArtifact.SUMMARY).read_text())
    assert {k: v for k, v in have_summary.items() if k not in ENGINE_KEYS} == {
        k: v for k, v in want_summary.items() if k not in ENGINE_KEYS}
    assert have_summary["model_uri"] == "models:/idc-slides/1"

    # the folder's table as Parquet (and CSV): the broken slide with the in-process reason
    table = pd.read_parquet(tmp_path / "spark" / SlideArtifact.FOLDER_PARQUET).set_index("slide")
    reference = pd.read_csv(tmp_path / "local" / SlideArtifact.FOLDER_SUMMARY).set_index("slide")
    assert list(table.index) == list(reference.index) == sorted([BROKEN, stitched.name])
    assert table.loc[BROKEN, "status"] == "failed"
    assert BROKEN in table.loc[BROKEN, "error"]
    assert table.loc[BROKEN, "error"] == reference.loc[BROKEN, "error"]
    ok = table.loc[stitched.name]
    for key in ("tiles", "tiles_total", "tiles_positive", "idc_foci", *SLIDE_METRICS):
        assert ok[key] == pytest.approx(reference.loc[stitched.name, key], rel=1e-9), key
    assert pd.api.types.is_integer_dtype(table["tiles"])  # not floats beside the failed row
    assert read_model_metadata(tmp_path / "spark" / SlideArtifact.FOLDER_PARQUET)[
        "model_version"] == "1"
    assert (tmp_path / "spark" / SlideArtifact.FOLDER_SUMMARY).is_file()
    assert [r["status"] for r in spark.rows] == [r["status"] for r in local.rows]

    # the tracked record: a slide-batch parent, one slide run per slide
    client = MlflowClient(slide_store.tracking_uri)
    with tracking_env(MLFLOW_TRACKING_URI=slide_store.tracking_uri):
        batch = run_record(spark.run_id)
        children = client.search_runs([slide_store.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{spark.run_id}'")
        records = {c.data.tags[Tag.SLIDE_NAME]: run_record(c.info.run_id) for c in children}
    assert batch["kind"] == RunKind.SLIDE_BATCH and batch["params"]["engine"] == "spark"
    assert batch["params"]["master"] == "local[2]"
    assert {SlideArtifact.FOLDER_SUMMARY, SlideArtifact.FOLDER_PARQUET} <= set(batch["artifacts"])
    assert batch["tags"][Tag.MODEL_VERSION] == "1" and batch["metrics"]["slides_failed"] == 1
    assert set(records) == {BROKEN, stitched.name}
    scored = records[stitched.name]
    assert scored["kind"] == RunKind.SLIDE and scored["status"] == "FINISHED"
    assert scored["tags"][Tag.SLIDE_SHA256] == have_summary["slide_sha256"]
    for key in SLIDE_METRICS:
        assert scored["metrics"][key] == pytest.approx(have_summary[key], rel=1e-6)
    assert {SlideArtifact.HEATMAP, SlideArtifact.TILES_CSV, SlideArtifact.SUMMARY,
            "images"} <= set(scored["artifacts"])
    broken = records[BROKEN]
    assert broken["status"] == "FAILED" and BROKEN in broken["tags"][Tag.SLIDE_ERROR]


def test_the_slide_cli_passes_engine_spark_and_master_to_the_spark_recipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CLI's wiring, without a second Spark job (the recipe is tested above)."""
    import histomlf.recipes.spark_slide as recipe
    from histomlf.recipes.slide import SlideBatchResult

    calls = []

    def fake(model_uri, source, out, options, *, patch_mpp, settings):
        calls.append((model_uri, source, out, options.min_tissue, patch_mpp, settings.master))
        return SlideBatchResult(rows=[{"slide": "a.svs", "status": "ok", "tiles": 3,
                                       "tissue_area_mm2": 1.0, "idc_area_mm2": 0.5,
                                       "idc_share": 0.5, "idc_foci": 1}], run_id="r1")

    monkeypatch.setattr(recipe, "spark_predict_slides", fake)
    printed = invoke_cli("slide", "predict", "models:/idc@champion", str(tmp_path),
                         "--out", str(tmp_path / "out"), "--min-tissue", "0.3",
                         "--engine", "spark", "--master", "spark://127.0.0.1:7077")
    assert calls == [("models:/idc@champion", tmp_path, tmp_path / "out", 0.3, None,
                      "spark://127.0.0.1:7077")]
    assert "a.svs: 3 tiles" in printed.output and "(run r1)" in printed.output
