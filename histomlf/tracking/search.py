"""The MLflow side of a Keras Tuner search: its parent run, resume links, leaderboard, winner.

The parent run holds the search's configuration, the data, a leaderboard, the best trial and
the winner's TEST evaluation; trials nest under it (`histomlf.tracking.tune_trial`). On resume
the parent is reopened, and the run `mlflow run` opened for the resuming invocation is tagged
`histomlf.kind=tune-resume` and `histomlf.resumes=<parent>` with a note pointing there.
`histomlf.recipes.tune` decides what happens; this module only records it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from histomlf.schema import Artifact, MlflowTag, RunKind, Tag
from histomlf.tracking import runs
from histomlf.tracking.probe import probe_tracking
from histomlf.tracking.tune_trial import (
    SearchRun,
    log_trial_model,
    trial_runs,
)
from histomlf.tuning import hyperband
from histomlf.tuning.settings import SearchError, SearchSpec


def load_spec_artifact(parent_run_id: str) -> SearchSpec:
    """The spec a search logged on its parent run."""
    try:
        return SearchSpec.from_dict(
            mlflow.artifacts.load_dict(f"runs:/{parent_run_id}/{Artifact.SEARCH_SPEC}")
        )
    except MlflowException as error:
        raise SearchError(
            f"run {parent_run_id} has no saved search ({Artifact.SEARCH_SPEC}): "
            f"{str(error).splitlines()[0]}"
        ) from None


def search_parent(run_id: str) -> Any:
    """The parent run of search `run_id`; a missing run or another kind is a `SearchError`."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise SearchError(
            f"no run {run_id} in the tracking store {mlflow.get_tracking_uri()}"
        ) from None
    if run.data.tags.get(Tag.KIND) != RunKind.TUNE:
        raise SearchError(
            f"run {run_id} is not a histomlf search (tag {Tag.KIND} != {RunKind.TUNE})"
        )
    return run


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


@contextlib.contextmanager
def open_parent(name: str, resume: str) -> Iterator[tuple[Any, bool]]:
    """The parent run, active: a new one (or the one `mlflow run` opened), or the resumed one."""
    if not resume:
        with runs.active_run(run_name=name, tags={Tag.KIND: RunKind.TUNE.value}) as run:
            mlflow.set_tag(Tag.SEARCH_ID, run.info.run_id)
            yield run, False
        return
    probe_tracking()
    original = search_parent(resume)
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    if launcher and launcher != resume:
        link_resume_run(MlflowClient(), launcher, original)
    with mlflow.start_run(run_id=resume, log_system_metrics=True) as run:
        yield run, True


def link_resume_run(client: MlflowClient, launcher: str, original: Any) -> None:
    """Tag the run `mlflow run` opened for a resume, and link it from the resumed parent."""
    parent_id = original.info.run_id
    client.set_tag(launcher, Tag.KIND, RunKind.TUNE_RESUME.value)
    client.set_tag(launcher, Tag.RESUMES, parent_id)
    client.set_tag(launcher, Tag.SEARCH_ID, parent_id)
    client.set_tag(
        launcher,
        MlflowTag.NOTE,
        f"Resumed search {parent_id} ({original.info.run_name}): its trials, "
        "leaderboard and best model are under that run; this run holds nothing else.",
    )
    before = original.data.tags.get(Tag.RESUMED_BY, "")
    client.set_tag(parent_id, Tag.RESUMED_BY, ",".join(filter(None, [before, launcher])))


def log_search_start(spec: SearchSpec, directory: Path) -> None:
    """Search config (params + spec/space artifacts), environment, and the tuner folder."""
    runs.log_config(spec.config, extra={"search": spec.to_dict()["settings"]})
    runs.log_resolved_params(spec.settings.as_params())
    mlflow.log_dict(spec.to_dict(), Artifact.SEARCH_SPEC)
    mlflow.log_text(yaml.safe_dump(spec.settings.space, sort_keys=False), Artifact.SEARCH_SPACE)
    runs.log_environment()
    mlflow.set_tags(
        {
            Tag.TUNER: spec.settings.tuner,
            Tag.OBJECTIVE: spec.settings.objective,
            Tag.TUNER_DIR: str(directory),
        }
    )


def children_by_trial(search_run: SearchRun) -> dict[str, Any]:
    """Each trial's run: its FINISHED one if any, else its latest attempt."""
    chosen: dict[str, Any] = {}
    for run in trial_runs(MlflowClient(), search_run):
        trial_id = run.data.tags.get(Tag.TRIAL_ID)
        if trial_id is None:
            continue
        current = chosen.get(trial_id)
        if current is None or current.info.status != "FINISHED":
            chosen[trial_id] = run
    return chosen


def leaderboard(
    trials: list[Any], children: dict[str, Any], objective: str, direction: str = "max"
) -> pd.DataFrame:
    """One row per trial: id, run, status, objective, duration and hyperparameters."""
    rows = []
    for trial in trials:
        run = children.get(trial.trial_id)
        duration = None
        if run is not None and run.info.end_time and run.info.start_time:
            duration = (run.info.end_time - run.info.start_time) / 1000.0
        score = trial.score if trial.score is not None else float("nan")
        rows.append(
            {
                "trial": trial.trial_id,
                "run_id": run.info.run_id if run is not None else "",
                "status": trial.status,
                objective: float(score),
                "duration_s": duration,
                **{
                    hyperband.column(k): v for k, v in trial.hyperparameters.values.items()
                },
            }
        )
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(objective, ascending=direction == "min", na_position="last")
    return frame.reset_index(drop=True)


def log_trials(
    trials: list[Any], search_run: SearchRun, objective: str, direction: str
) -> tuple[dict[str, Any], dict[str, float]]:
    """Leaderboard artifacts, trial counts and (Hyperband) each trial's fate; returns the
    trial runs by trial id and the counts."""
    children = children_by_trial(search_run)
    board = leaderboard(trials, children, objective, direction)
    mlflow.log_table(board, Artifact.LEADERBOARD_TABLE)
    runs.log_frame(board, Artifact.LEADERBOARD_CSV)
    counts = {
        f"trials_{status.lower()}": float(sum(t.status == status for t in trials))
        for status in ("COMPLETED", "FAILED", "INVALID")
    }
    mlflow.log_metrics({**counts, "trials_total": float(len(trials))})
    tag_hyperband_outcomes(MlflowClient(), trials, children)
    return children, counts


def record_best_trial(best: Any, best_run: Any, objective: str) -> str:
    """Tag the parent (and the trial's run) with the winner; returns the winner's run id."""
    best_run_id = best_run.info.run_id if best_run is not None else ""
    values = dict(best.hyperparameters.values)
    mlflow.set_tags(
        {
            Tag.BEST_TRIAL_ID: best.trial_id,
            Tag.BEST_RUN_ID: best_run_id,
            **{Tag.best(k): str(v) for k, v in values.items()},
        }
    )
    mlflow.log_metric(f"best_{objective}", float(best.score))
    runs.log_json(
        {
            "trial_id": best.trial_id,
            "run_id": best_run_id,
            "objective": objective,
            "score": float(best.score),
            "hyperparameters": values,
        },
        Artifact.BEST_TRIAL,
    )
    if best_run_id:
        MlflowClient().set_tag(best_run_id, Tag.BEST_TRIAL, "true")
    return best_run_id


def log_best_model(
    best_run: Any, model: Any, threshold: float, config: Any, log_models: str, source: str
) -> str:
    """The winner's model URI: logged by its trial already (`all`), else logged there now."""
    mlflow.set_tag(Tag.BEST_MODEL_SOURCE, source)
    if best_run is None:
        uri = log_trial_model(model, threshold, config).model_uri
    elif log_models == "all" and best_run.data.tags.get(Tag.MODEL_URI):
        uri = best_run.data.tags[Tag.MODEL_URI]
    else:
        end_time = best_run.info.end_time
        with mlflow.start_run(run_id=best_run.info.run_id, nested=True):
            uri = log_trial_model(model, threshold, config).model_uri
            mlflow.set_tag(Tag.MODEL_URI, uri)
        MlflowClient().set_terminated(best_run.info.run_id, "FINISHED", end_time=end_time)
    mlflow.set_tag(Tag.BEST_MODEL_URI, uri)
    return uri


def tag_hyperband_outcomes(
    client: MlflowClient, trials: list[Any], children: dict[str, Any]
) -> None:
    """`histomlf.hyperband.outcome` (`tuning.hyperband.outcomes`) on each Hyperband trial's run."""
    fates = hyperband.outcomes((t.trial_id, t.hyperparameters.values) for t in trials)
    for trial_id, outcome in fates.items():
        run = children.get(trial_id)
        if run is None:
            continue
        client.set_tag(run.info.run_id, Tag.HYPERBAND_OUTCOME, outcome)
        client.set_tag(
            run.info.run_id, Tag.HYPERBAND_DISCARDED, str(outcome == "discarded").lower()
        )
