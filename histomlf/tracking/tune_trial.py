"""One nested MLflow run per Keras Tuner trial, opened and closed in the tuner's own hooks.

`TrialTrackingMixin` goes in front of a Keras Tuner class (see `histomlf.tuning.tuners`):
`on_trial_begin` opens the child run under the search's parent (`parent_run_id` passed
explicitly, so a worker process with no active run nests its trials the same way),
`run_trial` adds the per-execution epoch logger and logs the trial's final validation
metrics, confusion matrix and (with `log_models=all`) its model, and `on_trial_end` lets the
oracle record the trial before closing the run as FINISHED or FAILED with the error.

An earlier attempt of the same trial (a crash, a killed worker, a resumed search) that is
still RUNNING is closed as KILLED and linked both ways with `histomlf.retried_by` /
`histomlf.retry_of`, so every trial has exactly one FINISHED run and nothing stays RUNNING.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from histomlf.data.patches import patch_scale
from histomlf.schema import Artifact, ModelMeta, RunKind, Tag
from histomlf.tracking import runs
from histomlf.tracking.callbacks import MlflowEpochLogger

HYPERBAND_KEYS = {"tuner/bracket": "bracket", "tuner/round": "round", "tuner/epochs": "epochs",
                  "tuner/initial_epoch": "initial_epoch", "tuner/trial_id": "continues"}
ERROR_TAG_CHARS = 500


@dataclass(frozen=True)
class SearchRun:
    """Where a search's trials go: its parent run, experiment and the settings to tag."""

    parent_run_id: str
    experiment_id: str
    tuner: str
    log_models: str
    experiment: str


def trial_runs(client: MlflowClient, search: SearchRun, trial_id: str | None = None) -> list[Any]:
    """Child runs of the search (of one trial when `trial_id` is given), oldest first."""
    query = f"tags.mlflow.parentRunId = '{search.parent_run_id}'"
    if trial_id is not None:
        query += f" and tags.`{Tag.TRIAL_ID}` = '{trial_id}'"
    found = client.search_runs([search.experiment_id], query, max_results=5000,
                               order_by=["attributes.start_time ASC"])
    return list(found)


def error_line(message: str | None) -> str:
    """The last non-empty line of a traceback, cut to fit a tag."""
    lines = [line for line in (message or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "trial failed")[:ERROR_TAG_CHARS]


NAMED_HYPERPARAMETERS = 3


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_run_name(trial_id: str, values: dict[str, Any], tuned: list[str]) -> str:
    """`trial-<n> name=value ...` for the first few tuned hyperparameters the trial has."""
    shown = [f"{name}={_short(values[name])}" for name in tuned if name in values]
    return " ".join([f"trial-{trial_id}", *shown[:NAMED_HYPERPARAMETERS]])


class TrialTrackingMixin:
    """Tracks each trial in its own nested run; needs `search_run=SearchRun(...)`."""

    def __init__(self, *args: Any, search_run: SearchRun, **kwargs: Any) -> None:
        self.search_run = search_run
        self._client = MlflowClient()
        self._trial_run_id: str | None = None
        self._trial_stride = 1
        super().__init__(*args, **kwargs)
        self.hypermodel.observer = self

    def on_trial_begin(self, trial: Any) -> None:
        super().on_trial_begin(trial)
        from histomlf.tuning.hypermodel import schedule

        hp = trial.hyperparameters
        values = hp.values
        config = schedule(self.hypermodel.trial_config(hp), values.get("tuner/epochs"),
                          int(values.get("tuner/initial_epoch", 0)))
        self._trial_stride = max(config.epochs + config.fine_tune_epochs, 1)
        previous = [r for r in trial_runs(self._client, self.search_run, trial.trial_id)
                    if r.info.status != "FINISHED"]
        tags = {
            Tag.KIND: RunKind.TUNE_TRIAL.value,
            Tag.SEARCH_ID: self.search_run.parent_run_id,
            Tag.TRIAL_ID: trial.trial_id,
            Tag.TUNER: self.search_run.tuner,
            Tag.TUNER_ID: str(getattr(self, "tuner_id", "")),
            Tag.WORKER_PID: str(os.getpid()),
            Tag.HOST: socket.gethostname(),
            Tag.ATTEMPT: str(len(previous) + 1),
            Tag.TUNED: ",".join(self.hypermodel.space.names),
            Tag.HPARAMS: " ".join(
                f"{k}={_short(values[k])}" for k in self.hypermodel.space.names if k in values
            ),
            **{Tag.hyperband(name): str(values[key])
               for key, name in HYPERBAND_KEYS.items() if key in values},
        }  # fmt: skip
        if previous:
            tags[Tag.RETRY_OF] = previous[-1].info.run_id
        run = mlflow.start_run(
            experiment_id=self.search_run.experiment_id,
            run_name=trial_run_name(trial.trial_id, values, list(self.hypermodel.space.names)),
            nested=True,
            parent_run_id=self.search_run.parent_run_id,
            tags=tags,
            log_system_metrics=False,
        )
        self._trial_run_id = run.info.run_id
        for old in previous:
            if old.info.status == "RUNNING":
                self._client.set_terminated(old.info.run_id, "KILLED")
            self._client.set_tag(old.info.run_id, Tag.RETRIED_BY, run.info.run_id)
        inactive = set(self.hypermodel.space.inactive(hp))
        params = {k: v for k, v in config.as_params().items() if k not in inactive}
        mlflow.log_params({k: "" if v is None else str(v) for k, v in params.items()})
        self._trial_started = time.time()

    def execution_callbacks(self, trial_id: str, execution: int, initial_epoch: int) -> list[Any]:
        """Epoch metrics of execution k land on steps k*stride + epoch: no collisions."""
        return [MlflowEpochLogger(step_offset=execution * self._trial_stride,
                                  run_id=self._trial_run_id)]

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        results = super().run_trial(trial, *args, **kwargs)
        self._log_trial_results()
        return results

    def _log_trial_results(self) -> None:
        from histomlf.evaluation import plots
        from histomlf.evaluation.metrics import confusion

        hypermodel = self.hypermodel
        best = hypermodel.best_result()
        if best is None:
            return
        final_step = len(hypermodel.results) * self._trial_stride
        metrics = dict(hypermodel.mean_metrics())
        metrics["decision_threshold"] = best.threshold
        metrics["epochs_run"] = float(sum(r.fit.epochs_run for r in hypermodel.results))
        metrics["trial_seconds"] = time.time() - self._trial_started
        mlflow.log_metrics(metrics, step=final_step)
        labels = best.val.rows["label"].to_numpy()
        runs.log_json(confusion(labels, best.val.probabilities, best.threshold),
                      Artifact.evaluation("val", "confusion_matrix", "json"))
        runs.log_figure(plots.plot_confusion_matrix(labels, best.val.probabilities,
                                                      best.threshold),
                        Artifact.evaluation("val", "confusion_matrix"))
        mlflow.set_tags({
            Tag.EARLY_STOPPED: str(any(r.early_stopped for r in hypermodel.results)).lower(),
            Tag.BEST_EXECUTION: str(best.execution),
            Tag.EXECUTIONS: str(len(hypermodel.results)),
        })  # fmt: skip
        if self.search_run.log_models == "all":
            info = log_trial_model(best.model, best.threshold, best.config)
            mlflow.set_tag(Tag.MODEL_URI, info.model_uri)

    def on_trial_end(self, trial: Any) -> None:
        run_id, self._trial_run_id = self._trial_run_id, None
        try:
            super().on_trial_end(trial)
        finally:
            if run_id:
                self._end_trial_run(run_id, trial)

    def _end_trial_run(self, run_id: str, trial: Any) -> None:
        status = "FINISHED" if trial.status == "COMPLETED" else "FAILED"
        if status == "FAILED":
            self._client.set_tag(run_id, Tag.ERROR, error_line(trial.message))
            self._client.set_tag(run_id, Tag.TRIAL_STATUS, str(trial.status))
            self._client.log_text(run_id, trial.message or "", Artifact.TRIAL_ERROR)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status)
        else:
            self._client.set_terminated(run_id, status)


def log_trial_model(model: Any, threshold: float, config: Any):
    """Log a trial's model as the serving pyfunc into the active run."""
    from histomlf.tracking.pyfunc import log_patch_classifier

    metadata = {ModelMeta.MODEL: config.model, ModelMeta.EXPERIMENT: config.experiment,
                **patch_scale(config.patch_mpp)}
    return log_patch_classifier(model, threshold=threshold, metadata=metadata)


def end_stale_trial_runs(search: SearchRun, oracle: Any) -> list[str]:
    """Close child runs a crash left RUNNING: as their trial ended in the oracle, else KILLED.

    A trial the oracle recorded as COMPLETED (the crash hit between the oracle's save and the
    run's end) closes FINISHED; one it did not finish closes KILLED and is run again by the
    oracle's retry queue, whose new run links back with `histomlf.retry_of`.
    """
    client = MlflowClient()
    closed = []
    for run in trial_runs(client, search):
        if run.info.status != "RUNNING":
            continue
        trial = oracle.trials.get(run.data.tags.get(Tag.TRIAL_ID, ""))
        status = {"COMPLETED": "FINISHED", "FAILED": "FAILED"}.get(getattr(trial, "status", ""),
                                                                  "KILLED")
        client.set_tag(run.info.run_id, Tag.CLOSED_ON_RESUME, status)
        client.set_terminated(run.info.run_id, status)
        closed.append(run.info.run_id)
    return closed
