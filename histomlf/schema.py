"""The run record: every run kind, ``histomlf.*`` tag key and artifact path in one place.

Writers (``recipes/``, ``tracking/``, ``tuning/``) and readers (``report/``, ``web/``) import
these names instead of typing the strings, so a rename is one edit here and a test
(``tests/test_schema.py``) ties every writer to its reader. Plain constants: importing this
module costs nothing (no Keras, no MLflow).

Values are kept verbatim from the stores written before this module existed, so old runs
still read.
"""

from __future__ import annotations

from enum import Enum


class RunKind(str, Enum):
    """The value of the ``histomlf.kind`` tag: what a run is."""

    TRAIN = "train"
    TUNE = "tune"
    TUNE_TRIAL = "tune-trial"
    TUNE_RESUME = "tune-resume"
    CV = "cv"
    CV_FOLD = "cv-fold"
    CV_FINAL = "cv-final"
    EVALUATE = "evaluate"
    REPORT = "report"
    SLIDE = "slide"
    SLIDE_BATCH = "slide-batch"
    SPARK_PREDICT = "spark-predict"

    def __str__(self) -> str:  # so f"{kind}" and MLflow tags write the bare value
        return self.value


PREFIX = "histomlf."


class Tag:
    """Every ``histomlf.*`` run tag key."""

    KIND = "histomlf.kind"
    DEMO = "histomlf.demo"
    MODEL_URI = "histomlf.model_uri"
    MODEL_NAME = "histomlf.model_name"
    MODEL_VERSION = "histomlf.model_version"
    DATA_DIGEST = "histomlf.data_digest"
    SPLIT_DIGEST = "histomlf.split_digest"
    DATA_SOURCE = "histomlf.data_source"
    DATA_DIR = "histomlf.data_dir"
    SPLIT = "histomlf.split"
    FOLD = "histomlf.fold"
    WORK_ID = "histomlf.work_id"
    RESUMED = "histomlf.resumed"
    RESUMED_BY = "histomlf.resumed_by"
    DEVICES = "histomlf.devices"
    GIT_COMMIT = "histomlf.git_commit"
    GIT_DIRTY = "histomlf.git_dirty"
    # slides (issue 22)
    SLIDE_SHA256 = "histomlf.slide_sha256"
    SLIDE_NAME = "histomlf.slide_name"
    SLIDE_ERROR = "histomlf.slide_error"


class SlideArtifact:
    """File names of one slide's outputs, in its output folder and under its run's artifacts."""

    HEATMAP = "heatmap.png"
    TISSUE = "tissue.png"
    TILES_CSV = "tiles.csv"
    TILES_GEOJSON = "tiles.geojson"
    IDC_REGIONS_GEOJSON = "idc_regions.geojson"
    SUMMARY = "summary.json"
    FOLDER_SUMMARY = "slides.csv"
    FOLDER_PARQUET = "slides.parquet"  # the same table from `--engine spark`


# The probability column of tile tables: WSInfer's ``prob_<class>`` convention.
PROB_COLUMN = "prob_idc"


class ModelMetadata:
    """Keys of a logged model's `metadata` (and of its registered version's tags) that say what
    its input is: `patch_px` pixels a side at `patch_mpp` µm/px (issue 22)."""

    PATCH_PX = "patch_px"
    PATCH_MPP = "patch_mpp"


# The metrics of a slide run (issue 22): the summary figures the MLflow UI compares slides by.
SLIDE_METRICS = ("idc_area_mm2", "idc_share", "tissue_area_mm2", "tiles")
