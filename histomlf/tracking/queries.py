"""Thin MLflow queries that return plain data: runs, artifact listings and downloads, a
registered version, and the report run's creation.

No report or page logic here: `histomlf.report.store` decides what a report reads and builds its
records, `histomlf.web.model_card` builds the page's model card, both from what these return.
Credentials (`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`) stay with MLflow's
client: nothing here returns them, nor the tracking URI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from histomlf.schema import MlflowTag

MAX_RESULTS = 5000


class RunNotFound(LookupError):
    """A run id, experiment name or model the tracking store does not hold; one line."""


@dataclass(frozen=True)
class StoredRun:
    """One run as the tracking store holds it, in plain types."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    start_time_ms: int | None
    end_time_ms: int | None
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)


def _stored(run) -> StoredRun:
    return StoredRun(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        start_time_ms=run.info.start_time,
        end_time_ms=run.info.end_time,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
    )


class RunQueries:
    """Reads runs and artifacts from one tracking store (the current one when `uri` is None)
    and creates runs there."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.client = MlflowClient(tracking_uri)
        self._experiment_names: dict[str, str] = {}

    def experiment_runs(self, names: Sequence[str]) -> list[StoredRun]:
        """Every active run of the named experiments; an unknown name is `RunNotFound`."""
        ids = []
        for name in names:
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise RunNotFound(f"no experiment named {name!r} in this tracking store")
            ids.append(experiment.experiment_id)
        found = self.client.search_runs(
            ids, run_view_type=ViewType.ACTIVE_ONLY, max_results=MAX_RESULTS
        )
        return [_stored(r) for r in found]

    def run(self, run_id: str) -> StoredRun:
        try:
            return _stored(self.client.get_run(run_id))
        except MlflowException as error:
            raise RunNotFound(f"no run {run_id!r} in this tracking store") from error

    def children(self, run: StoredRun) -> list[StoredRun]:
        """The runs nested directly under `run`."""
        found = self.client.search_runs(
            [run.experiment_id],
            filter_string=f"tags.`{MlflowTag.PARENT_RUN_ID}` = '{run.run_id}'",
            max_results=MAX_RESULTS,
        )
        return [_stored(r) for r in found]

    def experiment_name(self, experiment_id: str) -> str:
        if experiment_id not in self._experiment_names:
            self._experiment_names[experiment_id] = self.client.get_experiment(experiment_id).name
        return self._experiment_names[experiment_id]

    def files(self, run_id: str, folders: Iterable[str]) -> set[str]:
        """Artifact file paths directly under each of `folders` (one listing per folder; a
        folder the run lacks lists nothing)."""
        found: set[str] = set()
        for folder in sorted(set(folders)):
            try:
                listing = self.client.list_artifacts(run_id, folder)
            except (MlflowException, OSError):
                continue
            found |= {item.path for item in listing if not item.is_dir}
        return found

    def download(self, run_id: str, path: str, dst: str) -> Path:
        return Path(self.client.download_artifacts(run_id, path, dst))

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created when missing."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(name)

    def log_finished_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str],
                         files: Sequence[Path], folder: str) -> str:
        """A run with `tags` holding `files` under `folder`, ended FINISHED (FAILED when a file
        cannot be logged); returns its id."""
        run_id = self.client.create_run(experiment_id, run_name=run_name,
                                        tags=dict(tags)).info.run_id
        try:
            for path in files:
                self.client.log_artifact(run_id, str(path), folder)
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version: its number, aliases, tags and the run that logged it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    tags: Mapping[str, str]
    run_id: str | None


def registered_version(name: str, *, alias: str | None = None,
                       version: str | None = None) -> RegisteredVersion:
    """Version `version` of `name`, or the one `alias` points at; else `RunNotFound`."""
    client = MlflowClient()
    try:
        found = (client.get_model_version_by_alias(name, alias) if alias
                 else client.get_model_version(name, str(version)))
    except MlflowException as error:
        raise RunNotFound(_first_line(error)) from None
    return RegisteredVersion(name, str(found.version), tuple(sorted(found.aliases or ())),
                             dict(found.tags), found.run_id)


def model_run_id(model_uri: str) -> str | None:
    """The run that logged `model_uri` (`runs:/`, `models:/m-...`); else `RunNotFound`."""
    try:
        return mlflow.models.get_model_info(model_uri).run_id
    except (MlflowException, OSError) as error:
        raise RunNotFound(_first_line(error)) from None


def find_run(run_id: str) -> StoredRun | None:
    """The run `run_id`, or None when it was deleted (a registry may still serve its model)."""
    try:
        return _stored(MlflowClient().get_run(run_id))
    except MlflowException:
        return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
