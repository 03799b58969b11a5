"""A tracked Keras Tuner search: one parent run, one nested run per trial, resumable.

The run `mlflow run` opened (or a new one) is the search's parent. It holds the search's
configuration, the data, a leaderboard, the best trial and the winner's TEST evaluation; the
test split is read here only, after the search chose on validation. Trials nest under it from
this process or, in distributed mode, from worker processes that get its id.

Resume: `resume=<parent run id>` reopens that parent instead of starting a new search, reloads
the tuner state kept in `<tuner dir>/<parent run id>/` (each search has its own folder, so a
new search never reloads an old one), closes the runs the crash left RUNNING and lets the
oracle run the interrupted trial again. Under `mlflow run`, the run it opened for the resuming
invocation is tagged `histomlf.kind=tune-resume` and `histomlf.resumes=<parent>` with a note
pointing there, and ends FINISHED with nothing else in it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from histomlf.config import TrainConfig, build_config
from histomlf.paths import cache_root
from histomlf.tracking import distributed, runs
from histomlf.tracking.probe import probe_tracking
from histomlf.tracking.train_run import log_data
from histomlf.tracking.tune_trial import (
    KIND_PARENT,
    SEARCH_ID_TAG,
    TRIAL_ID_TAG,
    SearchRun,
    TrialTrackingMixin,
    end_stale_trial_runs,
    log_trial_model,
    trial_runs,
)
from histomlf.tuning.settings import SearchSettings, settings_from_dict

SPEC_FILE = "histomlf_search.json"
SPEC_ARTIFACT = "search/spec.json"
KIND_RESUME = "tune-resume"
RESUMABLE_SETTINGS = ("max_trials",)


class SearchError(ValueError):
    """A search that cannot start or continue as asked; the message says why, in one line."""


@dataclass(frozen=True)
class SearchSpec:
    """What defines a search: the base training config and the search settings (with space)."""

    config: TrainConfig
    settings: SearchSettings

    def to_dict(self) -> dict[str, Any]:
        settings = {k: v for k, v in self.settings.as_params().items() if k != "direction"}
        settings["direction"] = self.settings.direction
        return {"config": self.config.as_params(), "settings": {**settings,
                                                                 "space": self.settings.space}}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> SearchSpec:
        config = build_config(TrainConfig, payload["config"], source="saved search config")
        return cls(config, settings_from_dict(payload["settings"]))


def tuner_root(given: str | Path = "") -> Path:
    """Where tuner state lives: `given`, `$HISTOMLF_TUNER_DIR`, else `<cache>/tuning`."""
    chosen = given or os.environ.get("HISTOMLF_TUNER_DIR", "")
    return Path(chosen).expanduser().resolve() if chosen else cache_root() / "tuning"


def load_spec(parent_run_id: str, root: Path) -> SearchSpec:
    """The saved spec of a search: from its tuner folder, else from its parent run."""
    local = root / parent_run_id / SPEC_FILE
    if local.is_file():
        return SearchSpec.from_dict(json.loads(local.read_text()))
    try:
        return SearchSpec.from_dict(mlflow.artifacts.load_dict(
            f"runs:/{parent_run_id}/{SPEC_ARTIFACT}"))
    except MlflowException as error:
        raise SearchError(f"run {parent_run_id} has no saved search ({SPEC_ARTIFACT}): "
                          f"{str(error).splitlines()[0]}") from None


def resumed_spec(parent_run_id: str, root: Path, overrides: dict[str, Any]) -> SearchSpec:
    """The saved spec of `parent_run_id`, with the few settings a resume may change."""
    spec = load_spec(parent_run_id, root)
    changed = sorted(k for k in overrides if k not in RESUMABLE_SETTINGS)
    if changed:
        raise SearchError(f"--resume continues the saved search; it cannot change "
                          f"{', '.join(changed)} (only {', '.join(RESUMABLE_SETTINGS)})")
    if overrides:
        spec = SearchSpec(spec.config, spec.settings.replace(
            **{k: int(v) for k, v in overrides.items()}))
    return spec


def parent_run(client: MlflowClient, run_id: str) -> Any:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise SearchError(f"no run {run_id} in the tracking store {mlflow.get_tracking_uri()}") \
            from None
    if run.data.tags.get("histomlf.kind") != KIND_PARENT:
        raise SearchError(f"run {run_id} is not a histomlf search (tag histomlf.kind != tune)")
    return run


@contextlib.contextmanager
def open_parent(spec: SearchSpec, resume: str) -> Iterator[tuple[Any, bool]]:
    """The parent run, active: a new one (or the one `mlflow run` opened), or the resumed one."""
    name = f"tune-{spec.settings.tuner}-{Path(spec.config.experiment).stem}"
    if not resume:
        with runs.active_run(run_name=name, tags={"histomlf.kind": KIND_PARENT}) as run:
            MlflowClient().update_run(run.info.run_id, name=name)
            mlflow.set_tag(SEARCH_ID_TAG, run.info.run_id)
            yield run, False
        return
    probe_tracking()
    client = MlflowClient()
    original = parent_run(client, resume)
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    if launcher and launcher != resume:
        link_resume_run(client, launcher, original)
    with mlflow.start_run(run_id=resume, log_system_metrics=True) as run:
        yield run, True


def link_resume_run(client: MlflowClient, launcher: str, original: Any) -> None:
    """Tag the run `mlflow run` opened for a resume, and link it from the resumed parent."""
    parent_id = original.info.run_id
    client.set_tag(launcher, "histomlf.kind", KIND_RESUME)
    client.set_tag(launcher, "histomlf.resumes", parent_id)
    client.set_tag(launcher, SEARCH_ID_TAG, parent_id)
    client.set_tag(launcher, "mlflow.note.content",
                   f"Resumed search {parent_id} ({original.info.run_name}): its trials, "
                   "leaderboard and best model are under that run; this run holds nothing else.")
    before = original.data.tags.get("histomlf.resumed_by", "")
    client.set_tag(parent_id, "histomlf.resumed_by", ",".join(filter(None, [before, launcher])))


def log_search_start(spec: SearchSpec, directory: Path) -> None:
    """Search config (params + spec/space artifacts), environment, and the tuner folder."""
    runs.log_config(spec.config, extra={"search": spec.to_dict()["settings"]})
    runs.log_resolved_params(spec.settings.as_params())
    mlflow.log_dict(spec.to_dict(), SPEC_ARTIFACT)
    mlflow.log_text(yaml.safe_dump(spec.settings.space, sort_keys=False), "search/space.yaml")
    runs.log_environment()
    mlflow.set_tags({"histomlf.tuner": spec.settings.tuner,
                     "histomlf.objective": spec.settings.objective,
                     "histomlf.tuner_dir": str(directory)})


def build_tracked_tuner(spec: SearchSpec, data: Any, directory: Path, search_run: SearchRun):
    """The named tuner over an `IdcHyperModel`, tracking each trial under `search_run`."""
    from histomlf.tuning.hypermodel import IdcHyperModel
    from histomlf.tuning.space import SearchSpace
    from histomlf.tuning.tuners import create_tuner

    space = SearchSpace.from_mapping(spec.settings.space, spec.config)
    hypermodel = IdcHyperModel(spec.config, spec.settings, space, data=lambda: data,
                               work_root=directory / "work")
    return create_tuner(hypermodel, spec.settings, spec.config, directory,
                        mixins=(TrialTrackingMixin,), search_run=search_run)


def tune_and_log(spec: SearchSpec, *, resume: str = "", workers: int = 0, tuner_dir: str = "",
                 threads: int = 0) -> dict[str, Any]:
    """Run (or resume) a search in the parent run and log its outcome; see the module doc."""
    from histomlf.training.workflow import prepare_data

    root = tuner_root(tuner_dir)
    with open_parent(spec, resume) as (run, resumed):
        parent_id = run.info.run_id
        directory = root / parent_id
        if resumed and not (directory / SPEC_FILE).is_file():
            raise SearchError(f"no tuner state for search {parent_id} under {root}: resume where "
                              "it ran, or point --tuner-dir at its folder")
        directory.mkdir(parents=True, exist_ok=True)
        if not resumed:
            (directory / SPEC_FILE).write_text(json.dumps(spec.to_dict(), default=str))
            log_search_start(spec, directory)
        data = prepare_data(spec.config)
        if not resumed:
            log_data(data)
        search_run = SearchRun(parent_id, run.info.experiment_id, spec.settings.tuner,
                               spec.settings.log_models, spec.config.experiment)
        chief = workers > 0 or distributed.role() == "chief"
        if workers > 0:
            distributed.become_chief()
        tuner = build_tracked_tuner(spec, data, directory, search_run)
        if resumed:
            end_stale_trial_runs(MlflowClient(), search_run, tuner.oracle)
        if chief:
            run_chief(tuner, parent_id, root, directory, workers, threads)
        else:
            tuner.search()
        from histomlf.tracking.tune_summary import summarise_search

        return summarise_search(tuner, spec, data, search_run)


def run_chief(tuner: Any, parent_id: str, root: Path, directory: Path, workers: int,
              threads: int) -> None:
    """Serve the oracle; with `workers`, run and babysit that many local workers."""
    pool = None
    if workers:
        per_worker = threads or distributed.threads_per_worker(workers)
        env = distributed.worker_env(parent_id, per_worker)
        env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        pool = distributed.WorkerPool(distributed.worker_command(parent_id, root, per_worker),
                                      env, directory / "workers", workers)
        pool.start()
    else:
        print(f"chief of search {parent_id} serving on {os.environ[distributed.ORACLE_IP]}:"
              f"{os.environ[distributed.ORACLE_PORT]}; start each worker with "
              f"KERASTUNER_TUNER_ID=tuner<k> KERASTUNER_ORACLE_IP=<this host> "
              f"KERASTUNER_ORACLE_PORT={os.environ[distributed.ORACLE_PORT]} "
              f"histomlf tune --parent-run-id {parent_id}", flush=True)
    try:
        distributed.serve_oracle(tuner, pool)
    finally:
        if pool is not None:
            pool.stop()


def run_worker(parent_run_id: str, *, tuner_dir: str = "", data_dir: str = "") -> None:
    """Run trials for the chief of search `parent_run_id` until it says stop."""
    from histomlf.training.workflow import prepare_data

    if distributed.role() != "worker":
        raise SearchError("a worker needs KERASTUNER_TUNER_ID (not chief), KERASTUNER_ORACLE_IP "
                          "and KERASTUNER_ORACLE_PORT in its environment")
    probe_tracking()
    client = MlflowClient()
    parent = parent_run(client, parent_run_id)
    root = tuner_root(tuner_dir)
    spec = load_spec(parent_run_id, root)
    if data_dir:
        spec = SearchSpec(spec.config.replace(data_dir=data_dir), spec.settings)
    data = prepare_data(spec.config)
    expected = parent.data.tags.get("histomlf.split_digest")
    if expected and expected != data.split_digest:
        raise SearchError(f"this worker's patient split ({data.split_digest}) differs from the "
                          f"search's ({expected}): same data and settings needed")
    search_run = SearchRun(parent_run_id, parent.info.experiment_id, spec.settings.tuner,
                           spec.settings.log_models, spec.config.experiment)
    directory = root / parent_run_id
    directory.mkdir(parents=True, exist_ok=True)
    tuner = build_tracked_tuner(spec, data, directory, search_run)
    tuner.search()


def children_by_trial(client: MlflowClient, search_run: SearchRun) -> dict[str, Any]:
    """Each trial's run: its FINISHED one if any, else its latest attempt."""
    chosen: dict[str, Any] = {}
    for run in trial_runs(client, search_run):
        trial_id = run.data.tags.get(TRIAL_ID_TAG)
        if trial_id is None:
            continue
        current = chosen.get(trial_id)
        if current is None or current.info.status != "FINISHED":
            chosen[trial_id] = run
    return chosen


def leaderboard(trials: list[Any], children: dict[str, Any], objective: str,
                direction: str = "max") -> pd.DataFrame:
    """One row per trial: id, run, status, objective, duration and hyperparameters."""
    rows = []
    for trial in trials:
        run = children.get(trial.trial_id)
        duration = None
        if run is not None and run.info.end_time and run.info.start_time:
            duration = (run.info.end_time - run.info.start_time) / 1000.0
        score = trial.score if trial.score is not None else float("nan")
        rows.append({
            "trial": trial.trial_id,
            "run_id": run.info.run_id if run is not None else "",
            "status": trial.status,
            objective: float(score),
            "duration_s": duration,
            **{k.replace("tuner/", "hyperband_"): v
               for k, v in trial.hyperparameters.values.items()},
        })  # fmt: skip
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(objective, ascending=direction == "min", na_position="last")
    return frame.reset_index(drop=True)


__all__ = ["SearchError", "SearchSpec", "children_by_trial", "leaderboard", "load_spec",
           "log_trial_model", "resumed_spec", "run_worker", "tune_and_log", "tuner_root"]
