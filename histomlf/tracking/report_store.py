"""MLflow access for `histomlf report`: read the selected runs, log the report run.

The only module of the report that talks to MLflow. It turns runs into plain `RunRecord`s
(params, tags, metrics and the few artifacts the report shows) and logs the finished report as
the artifact of a run tagged `histomlf.kind=report` that names the runs it covers. Report runs
are skipped when reading, so a report never reports on reports.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from histomlf.report.model import DOCUMENTS, EXPLAIN_FOLDERS, IMAGES, PREDICTIONS, RunRecord
from histomlf.schema import PARENT_KINDS, Artifact, MlflowTag, RunKind, Tag, run_kind

MAX_RESULTS = 5000
TAG_VALUE_LIMIT = 5000


class ReportSelectionError(ValueError):
    """The selection names nothing that exists, or nothing that can be reported."""


class ReportStore:
    """Reads runs for a report from one tracking store (the current one when `uri` is None)."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.client = MlflowClient(tracking_uri)
        self._experiment_names: dict[str, str] = {}

    # ---- selection ----------------------------------------------------------------------
    def select(
        self, experiment_names: Sequence[str] = (), run_ids: Sequence[str] = ()
    ) -> tuple[list[RunRecord], str]:
        """The runs of the named experiments or the given runs (plus their trials and folds),
        report runs left out, and the selection in words. An empty selection is an error."""
        if bool(experiment_names) == bool(run_ids):
            raise ReportSelectionError("give --experiment-name NAME (repeatable) or --runs ID,...")
        if experiment_names:
            runs = self._experiment_runs(experiment_names)
            words = "experiment " + ", ".join(f'"{n}"' for n in experiment_names)
        else:
            runs = self._given_runs(run_ids)
            words = "runs " + ", ".join(run_ids)
        runs = [r for r in runs if run_kind(r.data.tags) != RunKind.REPORT]
        if not runs:
            raise ReportSelectionError(f"nothing to report: {words} holds no runs")
        runs.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
        return [self._record(r) for r in runs], words

    def _experiment_runs(self, names: Sequence[str]) -> list[Any]:
        ids = []
        for name in names:
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise ReportSelectionError(f"no experiment named {name!r} in this tracking store")
            ids.append(experiment.experiment_id)
        found = self.client.search_runs(
            ids, run_view_type=ViewType.ACTIVE_ONLY, max_results=MAX_RESULTS
        )
        return list(found)

    def _given_runs(self, run_ids: Sequence[str]) -> list[Any]:
        found: dict[str, Any] = {}
        for run_id in run_ids:
            try:
                run = self.client.get_run(run_id)
            except MlflowException as error:
                raise ReportSelectionError(f"no run {run_id!r} in this tracking store") from error
            found[run_id] = run
            if run_kind(run.data.tags) in PARENT_KINDS:
                for child in self.client.search_runs(
                    [run.info.experiment_id],
                    filter_string=f"tags.`{MlflowTag.PARENT_RUN_ID}` = '{run_id}'",
                    max_results=MAX_RESULTS,
                ):
                    found.setdefault(child.info.run_id, child)
        return list(found.values())

    # ---- one run ------------------------------------------------------------------------
    def _experiment_name(self, experiment_id: str) -> str:
        if experiment_id not in self._experiment_names:
            self._experiment_names[experiment_id] = self.client.get_experiment(experiment_id).name
        return self._experiment_names[experiment_id]

    def _record(self, run: Any) -> RunRecord:
        tags = dict(run.data.tags)
        run_id = run.info.run_id
        files = self._files(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            documents = {
                path: _parse(self._download(run_id, path, tmp))
                for path in DOCUMENTS
                if path in files
            }
            images = {
                path: self._download(run_id, path, tmp).read_bytes()
                for path in [*IMAGES, *self._explain_images(files)]
                if path in files
            }
            predictions = None
            if PREDICTIONS in files:
                predictions = pd.read_csv(
                    self._download(run_id, PREDICTIONS, tmp),
                    usecols=lambda c: c in ("patient_id", "label", "probability"),
                    dtype={"patient_id": str},
                )
        return RunRecord(
            run_id=run_id,
            name=run.info.run_name or run_id[:8],
            experiment_id=run.info.experiment_id,
            experiment_name=self._experiment_name(run.info.experiment_id),
            status=run.info.status,
            kind=run_kind(tags),
            parent_id=tags.get(MlflowTag.PARENT_RUN_ID),
            start_time_ms=run.info.start_time,
            end_time_ms=run.info.end_time,
            params=dict(run.data.params),
            tags=tags,
            metrics=dict(run.data.metrics),
            documents=documents,
            images=images,
            predictions=predictions,
        )

    def _files(self, run_id: str) -> set[str]:
        """Artifact paths under the folders the report reads (one listing per folder)."""
        folders = {p.rsplit("/", 1)[0] for p in (*DOCUMENTS, *IMAGES, PREDICTIONS)}
        folders |= set(EXPLAIN_FOLDERS)
        found: set[str] = set()
        for folder in sorted(folders):
            try:
                listing = self.client.list_artifacts(run_id, folder)
            except (MlflowException, OSError):
                continue
            found |= {item.path for item in listing if not item.is_dir}
        return found

    @staticmethod
    def _explain_images(files: Iterable[str]) -> list[str]:
        chosen = []
        for folder, limit in EXPLAIN_FOLDERS.items():
            pngs = sorted(p for p in files if p.startswith(folder + "/") and p.endswith(".png"))
            chosen += pngs[:limit]
        return chosen

    def _download(self, run_id: str, path: str, tmp: str) -> Path:
        return Path(self.client.download_artifacts(run_id, path, tmp))

    # ---- the report run -----------------------------------------------------------------
    def log_report(
        self,
        *,
        experiment_name: str,
        runs: Sequence[RunRecord],
        files: Sequence[Path],
        title: str,
    ) -> str:
        """Log the report files in a new run tagged `histomlf.kind=report`; returns its id.

        The covered run ids go in `report/runs.json` (all of them) and in the tag
        `histomlf.report.runs` (comma-separated, cut at 5,000 characters), and the run's
        description lists them, so the report can be found from its data and vice versa.
        """
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(experiment_name)
        )
        covered = ",".join(r.run_id for r in runs)
        if len(covered) > TAG_VALUE_LIMIT:
            covered = covered[: covered.rfind(",", 0, TAG_VALUE_LIMIT)] + ",..."
        note = "\n".join(
            [f"Study report **{title}** covering {len(runs)} runs:", ""]
            + [f"- `{r.run_id}` {r.name} ({r.kind}, {r.status})" for r in runs]
        )
        run = self.client.create_run(
            experiment_id,
            run_name=f"report-{title}"[:250],
            tags={
                Tag.KIND: RunKind.REPORT.value,
                Tag.REPORT_RUNS: covered,
                MlflowTag.NOTE: note,
            },
        )
        run_id = run.info.run_id
        try:
            with tempfile.TemporaryDirectory() as tmp:
                listing = Path(tmp) / Path(Artifact.REPORT_RUNS).name
                listing.write_text(
                    json.dumps(
                        [
                            {"run_id": r.run_id, "name": r.name, "kind": r.kind,
                             "status": r.status, "experiment_id": r.experiment_id}
                            for r in runs
                        ],
                        indent=2,
                    )
                )
                self.client.log_artifact(run_id, str(listing), Artifact.REPORT_FOLDER)
            for path in files:
                self.client.log_artifact(run_id, str(path), Artifact.REPORT_FOLDER)
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


def _parse(path: Path) -> Any:
    text = path.read_text()
    return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
