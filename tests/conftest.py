"""Shared fixtures: the real IDC sample, temporary stores, a fixed seed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Session fixtures shared by end-to-end tests: the small tracked study, headless Chromium.
pytest_plugins = ["study_store", "slide_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = Path(os.environ.get("HISTOMLF_SAMPLE_DIR", REPO_ROOT.parent / "shared" / "idc-sample"))

SAMPLE_PATCHES = 1900
SAMPLE_PATIENTS = 52
SAMPLE_NEGATIVES = 1417
SAMPLE_POSITIVES = 483


def pytest_sessionstart(session: pytest.Session) -> None:
    if not SAMPLE_DIR.is_dir():
        raise pytest.UsageError(
            f"the real IDC sample is missing at {SAMPLE_DIR}: set HISTOMLF_SAMPLE_DIR or place "
            "shared/idc-sample beside the repository (tests never skip it)"
        )


@pytest.fixture(scope="session")
def idc_sample() -> Path:
    """The read-only real sample (1,900 patches of 52 patients, Kaggle layout)."""
    return SAMPLE_DIR


@pytest.fixture
def idc_sample_copy(tmp_path: Path) -> Path:
    """A writable copy of the real sample, for tests that add bad files to it."""
    target = tmp_path / "idc-sample"
    shutil.copytree(SAMPLE_DIR, target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture(autouse=True)
def _restore_mlflow_environment():
    """Undo MLFLOW_* variables a test's in-process MLflow calls exported.

    `mlflow.set_tracking_uri` / `set_experiment` write MLFLOW_TRACKING_URI and
    MLFLOW_EXPERIMENT_ID into os.environ; left there, a later test's `mlflow run` subprocess
    inherits an experiment id from another store and fails.
    """
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    for key in [k for k in os.environ if k.startswith("MLFLOW_") and k not in saved]:
        del os.environ[key]
    os.environ.update(saved)
