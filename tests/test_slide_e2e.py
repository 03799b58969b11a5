"""`histomlf slide predict` end to end on stitched real patients and registry slides, with a
logged model (`slide_store`): equality with `histomlf predict` on the patch files, the
resampling path, refusals, a folder with broken slides, outputs and the MLflow record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from study_store import invoke_cli, tracking_env

from histomlf.schema import PROB_COLUMN, SLIDE_METRICS, RunKind, SlideArtifact, Tag
from histomlf.slides.stitch import patient_patches

TOLERANCE = 1e-5


def _env(store) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": store.tracking_uri, "MLFLOW_EXPERIMENT_ID": store.experiment_id}


def _slide_predict(store, *args: str, expect_exit: int = 0):
    with tracking_env(**_env(store)):
        return invoke_cli("slide", "predict", *args, expect_exit=expect_exit)


@pytest.fixture(scope="module")
def patch_predictions(slide_store, stitched_slides, tmp_path_factory) -> pd.DataFrame:
    """`histomlf predict` on the stitched patients' own patch files (both patients)."""
    root = tmp_path_factory.mktemp("patients")
    for patient in (stitched_slides.patient_dir, stitched_slides.resample_dir):
        shutil.copytree(patient, root / patient.name)
    out = root / "predictions.csv"
    with tracking_env(**_env(slide_store), HISTOMLF_CACHE=str(root / "cache")):
        invoke_cli("predict", slide_store.model_uri, str(root), "--out", str(out))
    return pd.read_csv(out)


def _compare(tiles: pd.DataFrame, predictions: pd.DataFrame, patient: Path, scale: int) -> float:
    """Max |P(slide tile) - P(patch file)| over the patient's patches; every patch must be
    a tile at (x-1, y-1) x scale."""
    by_corner = tiles.set_index(["minx", "miny"])[PROB_COLUMN]
    rows = predictions[predictions["patient_id"].astype(str) == patient.name]
    assert len(rows) == len(patient_patches(patient))
    corners = list(zip((rows["x"] - 1) * scale, (rows["y"] - 1) * scale, strict=True))
    slide_probs = by_corner.loc[corners].to_numpy()
    return float(np.abs(slide_probs - rows["probability"].to_numpy()).max())


def test_stitched_patient_matches_histomlf_predict_on_its_patches(
    slide_store, stitched_slides, patch_predictions, tmp_path
) -> None:
    out = tmp_path / "plain"
    _slide_predict(slide_store, slide_store.registered_uri, str(stitched_slides.plain),
                   "--out", str(out), "--min-tissue", "0")  # fmt: skip
    tiles = pd.read_csv(out / SlideArtifact.TILES_CSV)
    summary = json.loads((out / SlideArtifact.SUMMARY).read_text())
    assert summary["tiles"] == summary["tiles_total"] == len(tiles)  # every grid cell scored
    assert (summary["level"], summary["read_downsample"]) == (0, 1.0)
    error = _compare(tiles, patch_predictions, stitched_slides.patient_dir, 1)
    count = len(patient_patches(stitched_slides.patient_dir))
    print(f"max |slide - predict| = {error:.2e} over {count} patches")
    assert error <= TOLERANCE
    assert (summary["model_name"], summary["model_version"]) == ("idc-slides", "1")

    # Default filters: blank cells are glass, not tissue; report what they drop of the patches.
    default = tmp_path / "default"
    _slide_predict(slide_store, slide_store.registered_uri, str(stitched_slides.plain),
                   "--out", str(default))  # fmt: skip
    kept = pd.read_csv(default / SlideArtifact.TILES_CSV)
    labels = {(x - 1, y - 1): c for x, y, c, _ in patient_patches(stitched_slides.patient_dir)}
    kept_corners = set(zip(kept["minx"], kept["miny"], strict=True))
    dropped = set(labels) - kept_corners
    print(f"default filters: {len(kept)} tiles scored, {len(dropped)} of {len(labels)} patches "
          f"dropped: {sorted(dropped)}")
    assert kept_corners <= set(labels)  # blank cells (glass) are never scored as tissue
    # Looked at (19 of 70 on this machine): fat, pale stroma edges, glass and slide-edge crops,
    # all of class 0.
    assert len(dropped) <= 0.3 * len(labels)
    assert all(labels[corner] == 0 for corner in dropped)


def test_x8_slide_downsamples_back_to_the_same_probabilities(
    slide_store, stitched_slides, patch_predictions, tmp_path
) -> None:
    out = tmp_path / "x8"
    _slide_predict(slide_store, slide_store.model_uri, str(stitched_slides.x8),
                   "--out", str(out), "--min-tissue", "0")  # fmt: skip
    summary = json.loads((out / SlideArtifact.SUMMARY).read_text())
    assert (summary["level"], summary["read_downsample"], summary["slide_mpp"]) == (0, 8.0, 0.5)
    tiles = pd.read_csv(out / SlideArtifact.TILES_CSV)
    assert _compare(tiles, patch_predictions, stitched_slides.resample_dir, 8) <= TOLERANCE


def test_no_resolution_slide_needs_slide_mpp_then_works(slide_store, stitched_slides, tmp_path):
    failed = _slide_predict(slide_store, slide_store.model_uri,
                            str(stitched_slides.no_resolution), "--out", str(tmp_path / "a"),
                            expect_exit=1)  # fmt: skip
    line = failed.output.strip().splitlines()[-1]
    assert line.startswith("Error:") and "--slide-mpp" in line
    _slide_predict(slide_store, slide_store.model_uri, str(stitched_slides.no_resolution),
                   "--out", str(tmp_path / "b"), "--slide-mpp", "4")  # fmt: skip
    summary = json.loads((tmp_path / "b" / SlideArtifact.SUMMARY).read_text())
    assert summary["slide_mpp_source"] == "override" and summary["tiles"] > 0


def test_boxes_tiff_coarser_than_the_model_is_refused_in_one_line(slide_store, real_slides,
                                                                 tmp_path) -> None:
    result = _slide_predict(slide_store, slide_store.model_uri, str(real_slides.boxes),
                            "--out", str(tmp_path), expect_exit=1)  # fmt: skip
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "coarser" in lines[0]


def test_old_model_without_scale_needs_patch_mpp(slide_store, stitched_slides, tmp_path) -> None:
    result = _slide_predict(slide_store, slide_store.old_model_uri, str(stitched_slides.fine),
                            "--out", str(tmp_path / "a"), expect_exit=1)  # fmt: skip
    assert "--patch-mpp" in result.output.strip().splitlines()[-1]
    # The Python API the web page and Spark tasks call: one function, a progress callback.
    from histomlf.slides.predict import SlideOptions, predict_slide
    from histomlf.tracking.slides import load_slide_model

    with tracking_env(MLFLOW_TRACKING_URI=slide_store.tracking_uri):
        model = load_slide_model(slide_store.old_model_uri, patch_mpp=4.0)
    calls: list[tuple[int, int]] = []
    result = predict_slide(stitched_slides.fine, model, SlideOptions(stride=25), tmp_path / "b",
                           progress=lambda done, total: calls.append((done, total)))
    summary = result.summary
    assert json.loads(result.files["summary"].read_text()) == summary
    # 2 µm/px slide with levels x2, x4: the x2 level is the model's 4 µm/px, read 1:1.
    assert (summary["level"], summary["read_downsample"], summary["patch_mpp"]) == (1, 1.0, 4.0)
    assert summary["stride_px_level0"] == 50.0  # half of the 100 px tile: overlapping tiles
    tiles = pd.read_csv(result.files["tiles_csv"])
    assert (tiles["minx"] % 50 == 0).all() and 50 in set(np.diff(np.unique(tiles["minx"])))
    assert calls[0] == (0, summary["tiles"]) and calls[-1] == (summary["tiles"],) * 2


@pytest.fixture(scope="module")
def folder_run(slide_store, real_slides, tmp_path_factory):
    """A folder: the CMU region, small.svs, and three broken files."""
    folder = tmp_path_factory.mktemp("slide-folder")
    for path in (real_slides.cmu, real_slides.small, real_slides.unreadable,
                 real_slides.unopenable):
        shutil.copy(path, folder / path.name)
    (folder / "notes.svs").write_text("a text file renamed .svs\n")
    out = tmp_path_factory.mktemp("slide-out")
    result = _slide_predict(slide_store, slide_store.registered_uri, str(folder), "--out", str(out))
    return out, result


def test_folder_run_goes_on_past_broken_slides_and_lists_them(folder_run) -> None:
    out, result = folder_run
    table = pd.read_csv(out / SlideArtifact.FOLDER_SUMMARY).set_index("slide")
    assert table.loc["cmu_small_region.svs", "status"] == "ok"
    assert table.loc["small.svs", "status"] == "ok"
    for name in ("unreadable.svs", "unopenable.tiff", "notes.svs"):
        assert table.loc[name, "status"] == "failed"
        assert name in table.loc[name, "error"] and "\n" not in table.loc[name, "error"]
        assert f"{name}: FAILED" in result.output
    assert "3 of 5 slides failed" in result.output


def test_cmu_outputs_skip_glass_and_are_valid_geojson(folder_run) -> None:
    import shapely
    from PIL import Image
    from shapely.geometry import box, shape

    out = folder_run[0] / "cmu_small_region"
    summary = json.loads((out / SlideArtifact.SUMMARY).read_text())
    tiles = pd.read_csv(out / SlideArtifact.TILES_CSV)
    # 1.11 x 1.48 mm = 1.64 mm² in all; the tissue strip is ~40 % of it (tissue.png).
    assert 0.5 <= summary["tissue_area_mm2"] <= 0.8
    assert 0 < summary["tiles"] < summary["tiles_total"]
    assert summary["tiles_dropped_tissue"] > 0
    assert (tiles["tissue_share"] >= 0.5).all()  # glass tiles are not scored
    assert summary["slide_sha256"] and summary["caveat"].startswith("The map's granularity")
    for name in (SlideArtifact.HEATMAP, SlideArtifact.TISSUE):
        with Image.open(out / name) as image:
            assert image.size[0] > 300
    bounds = box(0, 0, summary["width_px"], summary["height_px"])
    features = json.loads((out / SlideArtifact.TILES_GEOJSON).read_text())["features"]
    assert len(features) == summary["tiles"]
    assert all(shape(f["geometry"]).is_valid and bounds.covers(shape(f["geometry"]))
               for f in features)  # fmt: skip
    regions = json.loads((out / SlideArtifact.IDC_REGIONS_GEOJSON).read_text())["features"]
    polygons = [shape(f["geometry"]) for f in regions]
    assert len(polygons) == summary["idc_foci"]
    assert all(p.is_valid and bounds.covers(p) for p in polygons)
    positive = tiles[tiles["label"] == 1]
    positive_area = float((positive["width"] * positive["height"]).sum())
    overlap = len(positive) * (positive["width"].max() + positive["height"].max())  # 1-px seams
    assert abs(shapely.union_all(polygons).area - positive_area) <= overlap


def test_folder_run_record_reads_back_through_the_schema(slide_store, folder_run) -> None:
    from mlflow.tracking import MlflowClient

    from histomlf.tracking.slides import run_record

    client = MlflowClient(slide_store.tracking_uri)
    runs = client.search_runs([slide_store.experiment_id],
                              f"tags.`{Tag.KIND}` = '{RunKind.SLIDE_BATCH}'")  # fmt: skip
    assert len(runs) == 1
    parent = runs[0].info.run_id
    with tracking_env(MLFLOW_TRACKING_URI=slide_store.tracking_uri):
        batch = run_record(parent)
        assert batch["kind"] == RunKind.SLIDE_BATCH
        assert SlideArtifact.FOLDER_SUMMARY in batch["artifacts"]
        children = client.search_runs([slide_store.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{parent}'")  # fmt: skip
        records = {c.data.tags[Tag.SLIDE_NAME]: run_record(c.info.run_id) for c in children}
    assert set(records) == {"cmu_small_region.svs", "small.svs", "unreadable.svs",
                            "unopenable.tiff", "notes.svs"}  # fmt: skip
    cmu = records["cmu_small_region.svs"]
    summary = json.loads((folder_run[0] / "cmu_small_region" / SlideArtifact.SUMMARY).read_text())
    assert cmu["kind"] == RunKind.SLIDE and cmu["status"] == "FINISHED"
    assert cmu["tags"][Tag.MODEL_VERSION] == "1" and cmu["tags"][Tag.MODEL_NAME] == "idc-slides"
    assert cmu["tags"][Tag.SLIDE_SHA256] == summary["slide_sha256"]
    for key in SLIDE_METRICS:
        assert cmu["metrics"][key] == pytest.approx(summary[key], rel=1e-6)
    for name in (SlideArtifact.HEATMAP, SlideArtifact.TISSUE, SlideArtifact.TILES_CSV,
                 SlideArtifact.TILES_GEOJSON, SlideArtifact.IDC_REGIONS_GEOJSON,
                 SlideArtifact.SUMMARY):
        assert name in cmu["artifacts"]
    assert "images" in cmu["artifacts"]  # the heatmap as an MLflow image too
    assert not any("label" in a or "macro" in a for a in cmu["artifacts"])
    broken = records["unreadable.svs"]
    assert broken["status"] == "FAILED" and "unreadable.svs" in broken["tags"][Tag.SLIDE_ERROR]
    assert len(broken["tags"][Tag.SLIDE_SHA256]) == 64  # identified by content, failed or not
