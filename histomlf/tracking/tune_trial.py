"""One nested MLflow run per Keras Tuner trial: the MLflow side of `tuning.tuners.IdcTuner`.

The tuner runs the trial's lifecycle in Keras Tuner's hooks and tells its `TrialTracker` what
happened; `MlflowTrialTracker` writes it down. `trial_began` opens the child run under the
search's parent (`parent_run_id` passed explicitly, so a worker process with no active run nests
its trials the same way) and logs its params, `epoch_ended` logs each epoch's metrics,
`trial_scored` the trial's final validation metrics, confusion matrix and (with
`log_models=all`) its model, and `trial_ended` closes the run as FINISHED or FAILED with the
error, after the oracle recorded the trial.

An earlier attempt of the same trial (a crash, a killed worker, a resumed search) that is
still RUNNING is closed as KILLED and linked both ways with `histomlf.retried_by` /
`histomlf.retry_of`, so every trial has exactly one FINISHED run and nothing stays RUNNING.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from histomlf.data.patches import patch_scale
from histomlf.schema import Artifact, ModelMeta, RunKind, Tag
from histomlf.tracking import runs
from histomlf.tracking.callbacks import log_epoch
from histomlf.tuning.trials import TrialOutcome, TrialStart

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


class MlflowTrialTracker:
    """A `tuning.tuners.TrialTracker` writing each trial to its own nested run under `search`.

    `IdcTuner` calls it from Keras Tuner's hooks; it makes the MLflow calls and decides
    nothing about the trial. One trial runs at a time per tuner, so one open run id is kept.
    """

    def __init__(self, search: SearchRun) -> None:
        self.search_run = search
        self._client = MlflowClient()
        self._run_id: str | None = None

    def trial_began(self, start: TrialStart) -> None:
        """Open the trial's run (closing a stale attempt of it as KILLED) and log its params."""
        previous = [r for r in trial_runs(self._client, self.search_run, start.trial_id)
                    if r.info.status != "FINISHED"]
        values = start.values
        tags = {
            Tag.KIND: RunKind.TUNE_TRIAL.value,
            Tag.SEARCH_ID: self.search_run.parent_run_id,
            Tag.TRIAL_ID: start.trial_id,
            Tag.TUNER: self.search_run.tuner,
            Tag.TUNER_ID: start.tuner_id,
            Tag.WORKER_PID: str(os.getpid()),
            Tag.HOST: socket.gethostname(),
            Tag.ATTEMPT: str(len(previous) + 1),
            Tag.TUNED: ",".join(start.tuned),
            Tag.HPARAMS: " ".join(f"{k}={_short(values[k])}" for k in start.tuned if k in values),
            **{Tag.hyperband(name): value for name, value in start.hyperband.items()},
        }  # fmt: skip
        if previous:
            tags[Tag.RETRY_OF] = previous[-1].info.run_id
        run = mlflow.start_run(
            experiment_id=self.search_run.experiment_id,
            run_name=trial_run_name(start.trial_id, values, list(start.tuned)),
            nested=True,
            parent_run_id=self.search_run.parent_run_id,
            tags=tags,
            log_system_metrics=False,
        )
        self._run_id = run.info.run_id
        for old in previous:
            if old.info.status == "RUNNING":
                self._client.set_terminated(old.info.run_id, "KILLED")
            self._client.set_tag(old.info.run_id, Tag.RETRIED_BY, run.info.run_id)
        mlflow.log_params({k: "" if v is None else str(v) for k, v in start.params.items()})

    def epoch_ended(self, step: int, logs: dict[str, Any]) -> None:
        if self._run_id:
            log_epoch(logs, step, self._run_id)

    def trial_scored(self, outcome: TrialOutcome) -> None:
        """The trial's metrics, validation confusion matrix, execution tags and (`all`) model."""
        from histomlf.evaluation import plots
        from histomlf.evaluation.metrics import confusion

        best = outcome.best
        mlflow.log_metrics(outcome.metrics, step=outcome.step)
        labels = best.val.rows["label"].to_numpy()
        runs.log_json(confusion(labels, best.val.probabilities, best.threshold),
                      Artifact.evaluation("val", "confusion_matrix", "json"))
        runs.log_figure(plots.plot_confusion_matrix(labels, best.val.probabilities,
                                                      best.threshold),
                        Artifact.evaluation("val", "confusion_matrix"))
        mlflow.set_tags({
            Tag.EARLY_STOPPED: str(outcome.early_stopped).lower(),
            Tag.BEST_EXECUTION: str(best.execution),
            Tag.EXECUTIONS: str(outcome.executions),
        })  # fmt: skip
        if self.search_run.log_models == "all":
            info = log_trial_model(best.model, best.threshold, best.config)
            mlflow.set_tag(Tag.MODEL_URI, info.model_uri)

    def trial_ended(self, trial_id: str, status: str, message: str | None) -> None:
        """Close the run FINISHED, or FAILED with the error's last line as a tag."""
        run_id, self._run_id = self._run_id, None
        if not run_id:
            return
        run_status = "FINISHED" if status == "COMPLETED" else "FAILED"
        if run_status == "FAILED":
            self._client.set_tag(run_id, Tag.ERROR, error_line(message))
            self._client.set_tag(run_id, Tag.TRIAL_STATUS, status)
            self._client.log_text(run_id, message or "", Artifact.TRIAL_ERROR)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(run_status)
        else:
            self._client.set_terminated(run_id, run_status)


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
