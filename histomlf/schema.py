"""The run record: every run kind, ``histomlf.*`` tag key and artifact path in one place.

Writers (``recipes/``, ``tracking/``, ``explain/``) and readers (``report/``, ``web/``, the
report's template through Jinja globals) import these names instead of typing the strings, so a
rename is one edit here. ``tests/test_schema.py`` refuses a tag key or artifact path typed
anywhere else in the package; ``tests/test_schema_roundtrip.py`` writes each run kind through
the recipes and reads it back through the report and the web page's model card; and
``tests/data/run_record_keys.json`` lists every key a user sees. Plain constants: importing this
module costs nothing (no Keras, no MLflow).

Values are kept verbatim from the stores written before this module existed, so old runs
still read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar


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
ROW_KINDS = (RunKind.TRAIN, RunKind.TUNE, RunKind.CV)
"""Kinds that are a result of their own (a row of the report's results table); trials and
folds belong to their parent."""
PARENT_KINDS = (RunKind.TUNE, RunKind.CV)
"""Kinds whose nested runs come with them when a report names the parent."""


def run_kind(tags: dict[str, str]) -> str:
    """A run's kind from its tags: `histomlf.kind`, else `train` for a top-level run (runs of
    the first stores carried no kind) and `nested` for an untagged child."""
    kind = tags.get(Tag.KIND)
    if kind:
        return kind
    return RunKind.TRAIN.value if MlflowTag.PARENT_RUN_ID not in tags else "nested"


class MlflowTag:
    """MLflow's own tags that histomlf writes or reads (not ours, named once all the same)."""

    PARENT_RUN_ID = "mlflow.parentRunId"
    NOTE = "mlflow.note.content"
    EXPERIMENT_KIND = "mlflow.experimentKind"
    GIT_COMMIT = "mlflow.source.git.commit"


class Tag:
    """Every ``histomlf.*`` run tag key (families with a variable part are functions below)."""

    KIND = "histomlf.kind"
    DEMO = "histomlf.demo"
    MODEL_URI = "histomlf.model_uri"
    MODEL_NAME = "histomlf.model_name"
    MODEL_VERSION = "histomlf.model_version"
    # data (every run that read data; `histomlf evaluate` only the digest and split)
    DATA_DIGEST = "histomlf.data_digest"
    SPLIT_DIGEST = "histomlf.split_digest"
    DATA_SOURCE = "histomlf.data_source"
    DATA_DIR = "histomlf.data_dir"
    SPLIT = "histomlf.split"
    FOLD = "histomlf.fold"
    # resumable fits
    WORK_ID = "histomlf.work_id"
    RESUMED = "histomlf.resumed"
    RESUMED_BY = "histomlf.resumed_by"
    # environment
    DEVICES = "histomlf.devices"
    GIT_COMMIT = "histomlf.git_commit"
    GIT_DIRTY = "histomlf.git_dirty"
    # a search's parent run (and the run `mlflow run` opened to resume it)
    SEARCH_ID = "histomlf.search_id"
    TUNER = "histomlf.tuner"
    OBJECTIVE = "histomlf.objective"
    TUNER_DIR = "histomlf.tuner_dir"
    RESUMES = "histomlf.resumes"
    BEST_TRIAL_ID = "histomlf.best_trial_id"
    BEST_RUN_ID = "histomlf.best_run_id"
    BEST_MODEL_SOURCE = "histomlf.best_model_source"
    BEST_MODEL_URI = "histomlf.best_model_uri"
    # a trial's run
    TRIAL_ID = "histomlf.trial_id"
    TUNER_ID = "histomlf.tuner_id"
    WORKER_PID = "histomlf.worker_pid"
    HOST = "histomlf.host"
    ATTEMPT = "histomlf.attempt"
    TUNED = "histomlf.tuned"
    HPARAMS = "histomlf.hparams"
    RETRY_OF = "histomlf.retry_of"
    RETRIED_BY = "histomlf.retried_by"
    EARLY_STOPPED = "histomlf.early_stopped"
    BEST_EXECUTION = "histomlf.best_execution"
    EXECUTIONS = "histomlf.executions"
    BEST_TRIAL = "histomlf.best_trial"
    ERROR = "histomlf.error"
    TRIAL_STATUS = "histomlf.trial_status"
    CLOSED_ON_RESUME = "histomlf.closed_on_resume"
    HYPERBAND_OUTCOME = "histomlf.hyperband.outcome"
    HYPERBAND_DISCARDED = "histomlf.hyperband.discarded"
    # a report run
    REPORT_RUNS = "histomlf.report.runs"
    # slides (issue 22)
    SLIDE_SHA256 = "histomlf.slide_sha256"
    SLIDE_NAME = "histomlf.slide_name"
    SLIDE_ERROR = "histomlf.slide_error"

    @staticmethod
    def resolved(key: str) -> str:
        """`histomlf.resolved.<key>`: the value that ran, where `mlflow run` logged another
        value for the param `key` (a declared default the experiment file overrode)."""
        return f"{PREFIX}resolved.{key}"

    @staticmethod
    def best(hyperparameter: str) -> str:
        """`histomlf.best.<name>` on a search's parent: the winner's hyperparameter value
        (Keras Tuner's `tuner/epochs` becomes `histomlf.best.tuner.epochs`)."""
        return f"{PREFIX}best.{hyperparameter.replace('/', '.')}"

    @staticmethod
    def hyperband(name: str) -> str:
        """`histomlf.hyperband.<name>` on a Hyperband trial's run (bracket, round, ...)."""
        return f"{PREFIX}hyperband.{name}"


class Folder:
    """The top-level artifact folders of a run (named in run notes and help texts)."""

    CONFIG = "config"
    ENVIRONMENT = "environment"
    DATA = "data"
    EVALUATION = "evaluation"
    PREDICTIONS = "predictions"
    EXPLAIN = "explain"
    SEARCH = "search"
    CV = "cv"
    REPORT = "report"
    MODEL = "model"


class Artifact:
    """Artifact paths of a run, relative to its artifact root (fixed names; patterns below)."""

    CONFIG = "config/resolved.yaml"
    ENVIRONMENT = "environment/facts.json"
    PIP_FREEZE = "environment/pip-freeze.txt"
    SPLIT = "data/split.csv"
    SCAN = "data/scan.json"
    TRAINING_CURVES = "evaluation/training_curves.png"
    SEARCH_SPEC = "search/spec.json"
    SEARCH_SPACE = "search/space.yaml"
    LEADERBOARD_TABLE = "search/leaderboard.json"
    LEADERBOARD_CSV = "search/leaderboard.csv"
    BEST_TRIAL = "search/best.json"
    CV_FOLDS = "cv/folds.json"
    CALIBRATION = "evaluation/calibration.json"
    """A calibrated train run's Platt map, how it was fitted and its validation ECE before and
    after (`calibrate: platt`)."""
    TRIAL_ERROR = "error.txt"
    REPORT_FOLDER = "report"
    REPORT_RUNS = "report/runs.json"
    PROBE = "probe/ok.txt"
    MODEL = "model"
    """The `name` a run's served pyfunc is logged under (`runs:/<run>/model`)."""

    @staticmethod
    def evaluation(split: str, what: str, suffix: str = "png") -> str:
        """`evaluation/<split>_<what>.<suffix>`: one figure or table of an evaluated split
        (`what` one of `EVALUATION_FIGURES`, `confusion_matrix` or `bootstrap_ci` as JSON)."""
        return f"evaluation/{split}_{what}.{suffix}"

    @staticmethod
    def predictions(split: str) -> str:
        """`predictions/<split>_predictions.csv`: one row per patch of the split."""
        return f"predictions/{split}_predictions.csv"

    @staticmethod
    def patients(split: str) -> str:
        """`predictions/<split>_patients.csv`: one row per patient of the split."""
        return f"predictions/{split}_patients.csv"


EVALUATION_FIGURES = ("confusion_matrix", "roc", "pr", "reliability")
"""The figures `log_evaluation` draws for its main split, in `Artifact.evaluation` names."""


class Explain:
    """The `explain/` folder a run logs (written by `histomlf.explain.artifacts`):

        explain/gradcam/<kind>_<rank>_<pid>_x<X>_y<Y>.png   kind in tp, tn, fp, fn; rank from 1
        explain/patients/<pid>.png                          four-panel patient map
        explain/patients/<pid>.npz                          its grids
        explain/index.json                                  everything above, with its numbers
    """

    ROOT = "explain"
    INDEX = "explain/index.json"
    GRADCAM = "explain/gradcam"
    PATIENTS = "explain/patients"
    KINDS = ("tp", "tn", "fp", "fn")
    IMAGE_KEY = "gradcam"
    """`mlflow.log_image` key prefix of each overlay (`gradcam/<kind>_<rank>`)."""

    @staticmethod
    def image_key(kind: str, rank: int) -> str:
        return f"{Explain.IMAGE_KEY}/{kind}_{rank}"

    @staticmethod
    def patient_map(patient_id: str, suffix: str = "png") -> str:
        return f"{Explain.PATIENTS}/{patient_id}.{suffix}"


@dataclass(frozen=True)
class GradcamName:
    """One Grad-CAM overlay's file name, built by `str()` and parsed back by `parse`."""

    kind: str
    rank: int
    patient_id: str
    x: int
    y: int

    _PATTERN: ClassVar[re.Pattern[str]] = re.compile(
        r"(?P<kind>[a-z]+)_(?P<rank>\d+)_(?P<pid>[^_]+)_x(?P<x>\d+)_y(?P<y>\d+)\.png"
    )

    def __str__(self) -> str:
        return f"{self.kind}_{self.rank}_{self.patient_id}_x{self.x}_y{self.y}.png"

    @property
    def path(self) -> str:
        """The overlay's artifact path, `explain/gradcam/<name>`."""
        return f"{Explain.GRADCAM}/{self}"

    @classmethod
    def parse(cls, name: str) -> GradcamName | None:
        """The fields of a file name (or artifact path) `str()` built; None for another name."""
        match = cls._PATTERN.fullmatch(name.rsplit("/", 1)[-1])
        if match is None:
            return None
        return cls(match["kind"], int(match["rank"]), match["pid"], int(match["x"]),
                   int(match["y"]))


class ModelMeta:
    """Keys of a logged model's `metadata` (the pyfunc's MLmodel file); the registered version
    carries the same keys as tags (`register_and_gate`), which the page's model card reads."""

    MODEL = "model"
    EXPERIMENT = "experiment"
    DATA_DIGEST = "data_digest"
    SPLIT_DIGEST = "split_digest"
    # what its input is: `patch_px` pixels a side at `patch_mpp` µm/px (issue 22); also run params
    PATCH_PX = "patch_px"
    PATCH_MPP = "patch_mpp"
    # a CV-final model (`recipes/cv_final.py`): FINAL is `CV_ENSEMBLE` or `CV_REFIT`, FOLDS the K
    FINAL = "final"
    FOLDS = "folds"
    CV_ENSEMBLE = "cv-ensemble"
    """The value of `FINAL` on a fold ensemble (no unseen split of its own)."""
    CV_REFIT = "cv-refit"
    """The value of `FINAL` on a model refitted on every patient of its cross-validation."""


class VersionTag:
    """Tags of a registered model version beyond `ModelMeta`'s: the gate's verdict and the
    human decisions after it (`histomlf registry list` shows them)."""

    RUN_ID = "run_id"
    GIT_COMMIT = "git_commit"
    KIND = "kind"
    """The run kind of a version that is not a train run's (`cv-final`): its gate compares it
    only with champions of its own kind, by their stored `GATE_SCORE`."""
    SCORES = "scores"
    FOLD_RUNS = "fold_runs"
    GATE_METRIC = "gate_metric"
    GATE_SCORE = "gate_score"
    GATE_DECISION = "gate_decision"
    GATE_REASON = "gate_reason"
    GATED_AT = "gated_at"
    GATE_CHAMPION_VERSION = "gate_champion_version"
    GATE_CHAMPION_SCORE = "gate_champion_score"
    PROMOTED_BY = "promoted_by"
    PROMOTED_AT = "promoted_at"
    PROMOTION_REASON = "promotion_reason"
    REPLACED_BY = "replaced_by"
    REPLACED_AT = "replaced_at"
    DEMOTED_FROM = "demoted_from"
    DEMOTED_BY = "demoted_by"
    DEMOTED_AT = "demoted_at"


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


# The metrics of a slide run (issue 22): the summary figures the MLflow UI compares slides by.
SLIDE_METRICS = ("idc_area_mm2", "idc_share", "tissue_area_mm2", "tiles")
