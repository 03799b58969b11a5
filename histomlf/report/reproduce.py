"""The exact `mlflow run` command that reruns a run, rebuilt from the settings it logged.

Every training setting goes on the command line as `-P key=value` (the value that ran: the
`histomlf.resolved.<key>` tag where `mlflow run` had logged another value first, else the
param), so the command does not depend on today's experiment files — except a search's
space, which only the experiment file holds (the run logged it as `search/space.yaml`).
"""

from __future__ import annotations

import dataclasses
import shlex

from histomlf.config import verb_fields
from histomlf.report.model import RunRecord
from histomlf.schema import RunKind, Tag
from histomlf.tuning.settings import SearchSettings

SEARCH_KEYS = tuple(
    f.name for f in dataclasses.fields(SearchSettings) if f.name not in ("space", "extra")
)
ENTRY_POINTS = {RunKind.TUNE: "tune", RunKind.CV: "cv"}
FIRST = ("experiment", "data_dir")


def settings(run: RunRecord) -> dict[str, str]:
    """The settings a rerun needs, in command order; empty values are left out (unset)."""
    verb = ENTRY_POINTS.get(run.kind, "train")
    keys = [*FIRST, *(k for k in verb_fields(verb) if k not in FIRST)]
    if run.kind == RunKind.TUNE:
        keys += SEARCH_KEYS
    if run.kind == RunKind.CV:
        keys.append("folds")
    values = {key: run.setting(key) for key in keys}
    return {key: value for key, value in values.items() if value != ""}


def mlflow_run_command(run: RunRecord) -> str:
    """`mlflow run . -e <entry> --env-manager local -P k=v ...` for this run."""
    entry = ENTRY_POINTS.get(run.kind, "train")
    parts = ["mlflow", "run", ".", "-e", entry, "--env-manager", "local"]
    for key, value in settings(run).items():
        parts += ["-P", f"{key}={value}"]
    return shlex.join(parts)


def checkout_command(run: RunRecord) -> str:
    commit = run.tags.get(Tag.GIT_COMMIT, "")
    return f"git checkout {commit}" if commit else ""
