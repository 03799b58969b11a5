"""The tune recipe: a Keras Tuner search with one MLflow child run per trial, resumable.

The run `mlflow run` opened (or a new one) is the search's parent; trials nest under it from
this process or, in distributed mode, from worker processes that get its id. The search
chooses on validation; the TEST split is read once, after it, to score the winner — which is
the model its trial was scored with (kept in the trial folder) or, where that folder is on
another machine, retrained with its hyperparameters — with the same `evaluate_model` and
`log_evaluation` as a train run, then registered through the champion gate.

Resume: `resume=<parent run id>` reopens that parent, reloads the tuner state kept in
`<tuner dir>/<parent run id>/` (each search has its own folder, so a new search never reloads
an old one), closes the runs the crash left RUNNING and lets the oracle run the interrupted
trial again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from histomlf.config import check_data_location
from histomlf.paths import cache_root
from histomlf.recipes import notes
from histomlf.recipes.explain import explain_run
from histomlf.schema import Tag
from histomlf.tracking import artifacts, runs, search
from histomlf.tracking.probe import probe_tracking
from histomlf.tracking.tune_trial import MlflowTrialTracker, SearchRun, end_stale_trial_runs
from histomlf.tuning import distributed, hyperband
from histomlf.tuning.settings import SearchError, SearchSpec
from histomlf.tuning.trials import TrialExecutions

SPEC_FILE = "histomlf_search.json"
RESUMABLE_SETTINGS = ("max_trials",)


def tuner_root(given: str | Path = "") -> Path:
    """Where tuner state lives: `given`, `$HISTOMLF_TUNER_DIR`, else `<cache>/tuning`."""
    chosen = given or os.environ.get("HISTOMLF_TUNER_DIR", "")
    return Path(chosen).expanduser().resolve() if chosen else cache_root() / "tuning"


def load_spec(parent_run_id: str, root: Path) -> SearchSpec:
    """The saved spec of a search: from its tuner folder, else from its parent run."""
    local = root / parent_run_id / SPEC_FILE
    if local.is_file():
        return SearchSpec.from_dict(json.loads(local.read_text()))
    return search.load_spec_artifact(parent_run_id)


def resumed_spec(
    parent_run_id: str,
    root: Path,
    overrides: dict[str, Any],
    *,
    run_options: dict[str, Any] | None = None,
) -> SearchSpec:
    """The saved spec of `parent_run_id`, with the few settings a resume may change.

    `run_options` (`data_dir`, `register_as`, `explain`, ...: how this run is run, not what is
    searched) apply to the resumed run; the parent's params keep the values it started with.
    """
    spec = load_spec(parent_run_id, root)
    if run_options:
        spec = SearchSpec(spec.config.replace(**run_options), spec.settings)
    changed = sorted(k for k in overrides if k not in RESUMABLE_SETTINGS)
    if changed:
        raise SearchError(
            f"--resume continues the saved search; it cannot change "
            f"{', '.join(changed)} (only {', '.join(RESUMABLE_SETTINGS)})"
        )
    if overrides:
        spec = SearchSpec(
            spec.config, spec.settings.replace(**{k: int(v) for k, v in overrides.items()})
        )
    return spec


def build_tracked_tuner(spec: SearchSpec, data: Any, directory: Path, search_run: SearchRun):
    """The named tuner over an `IdcHyperModel`, tracking each trial under `search_run`."""
    from histomlf.tuning.hypermodel import IdcHyperModel
    from histomlf.tuning.space import SearchSpace
    from histomlf.tuning.tuners import create_tuner

    space = SearchSpace.from_mapping(spec.settings.space, spec.config)
    hypermodel = IdcHyperModel(
        spec.config, spec.settings, space, data=lambda: data, work_root=directory / "work"
    )
    return create_tuner(
        hypermodel, spec.settings, spec.config, directory, tracker=MlflowTrialTracker(search_run)
    )


def tune(
    spec: SearchSpec, *, resume: str = "", workers: int = 0, tuner_dir: str = "", threads: int = 0
) -> dict[str, Any]:
    """Run (or resume) a search in the parent run and log its outcome; see the module doc."""
    from histomlf.training.workflow import prepare_data

    check_data_location(spec.config.data_dir)  # before the parent run opens
    root = tuner_root(tuner_dir)
    name = f"tune-{spec.settings.tuner}-{Path(spec.config.experiment).stem}"
    with search.open_parent(name, resume) as (run, resumed):
        parent_id = run.info.run_id
        directory = root / parent_id
        if resumed and not (directory / SPEC_FILE).is_file():
            raise SearchError(
                f"no tuner state for search {parent_id} under {root}: resume where "
                "it ran, or point --tuner-dir at its folder"
            )
        directory.mkdir(parents=True, exist_ok=True)
        if not resumed:
            (directory / SPEC_FILE).write_text(json.dumps(spec.to_dict(), default=str))
            search.log_search_start(spec, directory)
        data = prepare_data(spec.config)
        if not resumed:
            artifacts.log_data(data)
        elif run.data.tags.get(Tag.SPLIT_DIGEST, data.split_digest) != data.split_digest:
            raise SearchError(
                f"this data's patient split ({data.split_digest}) differs from the search's "
                f"({run.data.tags[Tag.SPLIT_DIGEST]}): resume on the same data"
            )
        search_run = SearchRun(
            parent_id,
            run.info.experiment_id,
            spec.settings.tuner,
            spec.settings.log_models,
            spec.config.experiment,
        )
        chief = workers > 0 or distributed.role() == "chief"
        if workers > 0:
            distributed.become_chief()
        tuner = build_tracked_tuner(spec, data, directory, search_run)
        if resumed:
            end_stale_trial_runs(search_run, tuner.oracle)
        if chief:
            run_chief(tuner, parent_id, root, directory, workers, threads)
        else:
            tuner.search()
        return summarise_search(tuner, spec, data, search_run)


def run_chief(
    tuner: Any, parent_id: str, root: Path, directory: Path, workers: int, threads: int
) -> None:
    """Serve the oracle; with `workers`, run and babysit that many local workers."""
    pool = None
    if workers:
        per_worker = threads or distributed.threads_per_worker(workers)
        env = distributed.worker_env(parent_id, per_worker)
        env["MLFLOW_TRACKING_URI"] = search.tracking_uri()
        pool = distributed.WorkerPool(
            distributed.worker_command(parent_id, root, per_worker),
            env,
            directory / "workers",
            workers,
        )
        pool.start()
    else:
        port = os.environ[distributed.ORACLE_PORT]
        print(
            f"chief of search {parent_id} serving on {os.environ[distributed.ORACLE_IP]}:{port}; "
            f"start each worker with KERASTUNER_TUNER_ID=tuner<k> KERASTUNER_ORACLE_IP=<this "
            f"host> KERASTUNER_ORACLE_PORT={port} histomlf tune --parent-run-id {parent_id}",
            flush=True,
        )
    try:
        distributed.serve_oracle(tuner, pool)
    finally:
        if pool is not None:
            pool.stop()


def run_worker(parent_run_id: str, *, tuner_dir: str = "", data_dir: str = "") -> None:
    """Run trials for the chief of search `parent_run_id` until it says stop."""
    from histomlf.training.workflow import prepare_data

    if distributed.role() != "worker":
        raise SearchError(
            "a worker needs KERASTUNER_TUNER_ID (not chief), KERASTUNER_ORACLE_IP "
            "and KERASTUNER_ORACLE_PORT in its environment"
        )
    probe_tracking()
    parent = search.search_parent(parent_run_id)
    root = tuner_root(tuner_dir)
    spec = load_spec(parent_run_id, root)
    if data_dir:
        spec = SearchSpec(spec.config.replace(data_dir=data_dir), spec.settings)
    data = prepare_data(spec.config)
    expected = parent.data.tags.get(Tag.SPLIT_DIGEST)
    if expected and expected != data.split_digest:
        raise SearchError(
            f"this worker's patient split ({data.split_digest}) differs from the "
            f"search's ({expected}): same data and settings needed"
        )
    search_run = SearchRun(
        parent_run_id,
        parent.info.experiment_id,
        spec.settings.tuner,
        spec.settings.log_models,
        spec.config.experiment,
    )
    directory = root / parent_run_id
    directory.mkdir(parents=True, exist_ok=True)
    build_tracked_tuner(spec, data, directory, search_run).search()


def summarise_search(tuner: Any, spec: SearchSpec, data: Any, search_run: SearchRun) -> dict:
    """Log the leaderboard, best trial and the winner's test evaluation; returns a summary."""
    from histomlf.recipes.train import register
    from histomlf.training.workflow import evaluate_model, inference_model

    settings = spec.settings
    trials = list(tuner.oracle.trials.values())
    children, counts = search.log_trials(
        trials, search_run, settings.objective, settings.objective_direction
    )
    best_trials = [t for t in tuner.oracle.get_best_trials(1) if t.status == "COMPLETED"]
    if not best_trials:
        raise SearchError(
            f"no trial of search {search_run.parent_run_id} completed; see the "
            f"FAILED trial runs' {Tag.ERROR} tags"
        )
    best = best_trials[0]
    best_run = children.get(best.trial_id)
    best_run_id = search.record_best_trial(best, best_run, settings.objective)
    model, source, config = best_model(tuner, best)
    model = inference_model(model, config)
    evaluation = evaluate_model(config, data, model)
    artifacts.log_evaluation(evaluation)
    if config.explain:
        artifacts.log_seconds({"explain": explain_run(model, evaluation, seed=config.seed)})
    model_uri = search.log_best_model(
        best_run, model, evaluation.threshold, config, settings.log_models, source
    )
    result: dict[str, Any] = {
        "run_id": search_run.parent_run_id,
        "best_trial_id": best.trial_id,
        "best_run_id": best_run_id,
        "best_score": float(best.score),
        "objective": settings.objective,
        "model_uri": model_uri,
        "trials": {k: int(v) for k, v in counts.items()},
        "metrics": evaluation.metrics(),
    }
    if spec.config.register_as:
        result["gate"] = register(
            config, evaluation, data, model_uri, search_run.parent_run_id
        )
    runs.set_note(notes.search_note(spec, result, data, result.get("gate")))
    return result


def best_model(tuner: Any, best: Any) -> tuple[Any, str, Any]:
    """(model, "reloaded" | "retrained", its config) for the best trial.

    A retrain runs the trial's whole schedule from scratch (a Hyperband trial's full budget,
    not just its last round), outside the tuner: nothing is tracked or kept.
    """
    hypermodel = tuner.hypermodel
    hp = best.hyperparameters
    epochs, _ = hyperband.budget(hp.values)
    config = hyperband.schedule(hypermodel.trial_config(hp), epochs)
    saved = tuner.saved_model(best)
    if saved is not None:
        return saved[0], "reloaded", config
    hypermodel.seed(hp)
    model = hypermodel.build(hp)
    hypermodel.fit(hp, model, epochs=epochs, executions=TrialExecutions(f"{best.trial_id}-retrain"))
    return model, "retrained", config
