"""Session fixtures shared by end-to-end tests: one small tracked study, and headless Chromium.

`study_store` builds ONE sqlite tracking store per test session through the real CLI
(`histomlf train`, `tune`, `cv` run in-process with click's CliRunner): two train runs with
different backbones, one Keras Tuner search and one cross-validation, all at smoke budgets on
the real IDC sample. Tests that need "an experiment with a bit of everything in it" (the study
report, the web page, the UI checks) read from it instead of training anew. Treat it as
read-only: a test that needs to add runs puts them in an experiment of its own.

Registered for every test module from conftest.py (`pytest_plugins`). `invoke_cli` and
`tracking_env` are reusable: run `histomlf ...` in-process against a store, then restore the
environment and MLflow's process-wide state.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers_mlflow import isolated_tracking

from histomlf.environment import environ_set

STUDY_EXPERIMENT = "study"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# The CLI verbs that build the study, at smoke budgets (`experiments/smoke.yaml`,
# `experiments/tune_smoke.yaml`): the arguments after each verb.
# Explanations on and registered: the report shows Grad-CAM panels, the UI a champion.
SIMPLECNN_ARGS = ("--experiment", "smoke", "--explain", "true", "--register-as", "idc-study")
# A keras.applications backbone, random weights (no download), smallest budget that trains.
MOBILENET_ARGS = ("--experiment", "smoke", "--model", "mobilenetv2", "--weights", "none",
                  "--image-size", "32", "--max-samples", "192")
TUNE_ARGS = ("--experiment", "tune_smoke")
# The CV makes the final model too (its fold models averaged and calibrated), registered.
CV_FINAL_NAME = "idc-study-cv"
CV_ARGS = ("--experiment", "smoke", "--folds", "2", "--max-samples", "160", "--log-models", "true",
           "--final", "ensemble", "--calibrate", "platt", "--register-as", CV_FINAL_NAME)

_ENV_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID",
             "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "HISTOMLF_CACHE", "HISTOMLF_TUNER_DIR")


@dataclass(frozen=True)
class StudyStore:
    """Where the shared study lives and which run plays which role."""

    root: Path
    tracking_uri: str
    experiment_name: str
    experiment_id: str
    train_run_ids: tuple[str, ...]
    """Top-level train runs, in build order: simplecnn, then mobilenetv2."""
    tune_parent_id: str
    cv_parent_id: str
    build_seconds: float

    @property
    def top_level_run_ids(self) -> tuple[str, ...]:
        return (*self.train_run_ids, self.tune_parent_id, self.cv_parent_id)


@dataclass(frozen=True)
class Chromium:
    """Debian's headless browser and its WebDriver."""

    browser: Path
    driver: Path


@contextlib.contextmanager
def tracking_env(**values: str) -> Iterator[None]:
    """Set MLflow/histomlf environment variables for a block (MLFLOW_RUN_ID cleared), then
    restore them and MLflow's process-wide state (`isolated_tracking`: tracking URI, active
    experiment)."""
    with isolated_tracking(), environ_set(values, also_restore=_ENV_KEYS):
        if "MLFLOW_RUN_ID" not in values:
            os.environ.pop("MLFLOW_RUN_ID", None)
        yield


def invoke_cli(*args: str, expect_exit: int = 0) -> Any:
    """`histomlf ARGS` in-process (click's CliRunner); fails with its output and traceback
    unless it exits with `expect_exit`. Returns click's `Result`."""
    from click.testing import CliRunner

    from histomlf.cli import main

    result = CliRunner().invoke(main, list(args))
    if result.exit_code != expect_exit:
        detail = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        raise RuntimeError(
            f"histomlf {' '.join(args)} exited {result.exit_code}:\n"
            f"{result.output[-4000:]}\n{detail[-4000:]}"
        )
    return result


def build_study(root: Path, data_dir: Path) -> StudyStore:
    """Run the four CLI commands against a fresh sqlite store under `root`."""
    from mlflow.tracking import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(
        STUDY_EXPERIMENT, artifact_location=(root / "artifacts").as_uri()
    )
    started = time.monotonic()
    with tracking_env(
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_EXPERIMENT_NAME=STUDY_EXPERIMENT,
        MLFLOW_EXPERIMENT_ID=experiment_id,
        HISTOMLF_CACHE=str(root / "cache"),
        HISTOMLF_TUNER_DIR=str(root / "tuner"),
    ):
        for verb, args in (("train", SIMPLECNN_ARGS), ("train", MOBILENET_ARGS),
                           ("tune", TUNE_ARGS), ("cv", CV_ARGS)):
            invoke_cli(verb, *args, "--data-dir", str(data_dir))
    seconds = time.monotonic() - started

    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    by_kind: dict[str, list[str]] = {}
    for run in top:
        by_kind.setdefault(run.data.tags.get("histomlf.kind", "train"), []).append(run.info.run_id)
    train_ids = [r.info.run_id for r in top if r.data.tags.get("histomlf.kind") in (None, "train")]
    tune_ids = by_kind.get("tune", [])
    cv_ids = by_kind.get("cv", [])
    if len(train_ids) != 2 or len(tune_ids) != 1 or len(cv_ids) != 1:
        raise RuntimeError(f"unexpected top-level runs in the study store: {by_kind}")
    return StudyStore(
        root=root,
        tracking_uri=uri,
        experiment_name=STUDY_EXPERIMENT,
        experiment_id=experiment_id,
        train_run_ids=tuple(train_ids),
        tune_parent_id=tune_ids[0],
        cv_parent_id=cv_ids[0],
        build_seconds=seconds,
    )


@pytest.fixture(scope="session")
def study_store(tmp_path_factory: pytest.TempPathFactory, idc_sample: Path) -> StudyStore:
    """One tracked study per session (two train runs, a tuning search, a CV); read-only."""
    return build_study(tmp_path_factory.mktemp("study-store"), idc_sample)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """Debian's `chromium` and `chromedriver`; missing is a failure (`.ci/run` installs them)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"headless Chromium is missing ({', '.join(missing)}): "
            "apt-get install -y chromium chromium-driver (.ci/run does this)",
            pytrace=False,
        )
    yield Chromium(CHROMIUM, CHROMEDRIVER)
