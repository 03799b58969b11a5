"""The report's side of the tracking store: which runs a report covers, what it reads of each
(`RunRecord`), and the run that logs the finished report.

The MLflow calls are `histomlf.tracking.queries`'s thin queries; this module only decides
and assembles. Report runs are skipped when reading, so a report never reports on reports.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from histomlf.report.model import DOCUMENTS, EXPLAIN_FOLDERS, IMAGES, PREDICTIONS, RunRecord
from histomlf.schema import PARENT_KINDS, Artifact, MlflowTag, RunKind, Tag, run_kind
from histomlf.tracking.queries import RunNotFound, RunQueries, StoredRun

TAG_VALUE_LIMIT = 5000


class ReportSelectionError(ValueError):
    """The selection names nothing that exists, or nothing that can be reported."""


class ReportStore:
    """Reads runs for a report from one tracking store (the current one when `uri` is None)."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.queries = RunQueries(tracking_uri)

    # ---- selection ----------------------------------------------------------------------
    def select(
        self, experiment_names: Sequence[str] = (), run_ids: Sequence[str] = ()
    ) -> tuple[list[RunRecord], str]:
        """The runs of the named experiments or the given runs (plus their trials and folds),
        report runs left out, and the selection in words. An empty selection is an error."""
        if bool(experiment_names) == bool(run_ids):
            raise ReportSelectionError("give --experiment-name NAME (repeatable) or --runs ID,...")
        try:
            if experiment_names:
                runs = self.queries.experiment_runs(experiment_names)
                words = "experiment " + ", ".join(f'"{n}"' for n in experiment_names)
            else:
                runs = self._given_runs(run_ids)
                words = "runs " + ", ".join(run_ids)
        except RunNotFound as error:
            raise ReportSelectionError(str(error)) from error
        runs = [r for r in runs if run_kind(r.tags) != RunKind.REPORT]
        if not runs:
            raise ReportSelectionError(f"nothing to report: {words} holds no runs")
        runs.sort(key=lambda r: (r.start_time_ms or 0, r.run_id))
        return [self._record(r) for r in runs], words

    def _given_runs(self, run_ids: Sequence[str]) -> list[StoredRun]:
        found: dict[str, StoredRun] = {}
        for run_id in run_ids:
            run = found[run_id] = self.queries.run(run_id)
            if run_kind(run.tags) in PARENT_KINDS:
                for child in self.queries.children(run):
                    found.setdefault(child.run_id, child)
        return list(found.values())

    # ---- one run ------------------------------------------------------------------------
    def _record(self, run: StoredRun) -> RunRecord:
        run_id = run.run_id
        folders = {p.rsplit("/", 1)[0] for p in (*DOCUMENTS, *IMAGES, PREDICTIONS)}
        files = self.queries.files(run_id, folders | set(EXPLAIN_FOLDERS))
        with tempfile.TemporaryDirectory() as tmp:
            documents = {
                path: _parse(self.queries.download(run_id, path, tmp))
                for path in DOCUMENTS
                if path in files
            }
            images = {
                path: self.queries.download(run_id, path, tmp).read_bytes()
                for path in [*IMAGES, *_explain_images(files)]
                if path in files
            }
            predictions = None
            if PREDICTIONS in files:
                predictions = pd.read_csv(
                    self.queries.download(run_id, PREDICTIONS, tmp),
                    usecols=lambda c: c in ("patient_id", "label", "probability"),
                    dtype={"patient_id": str},
                )
        return RunRecord(
            run_id=run_id,
            name=run.name,
            experiment_id=run.experiment_id,
            experiment_name=self.queries.experiment_name(run.experiment_id),
            status=run.status,
            kind=run_kind(run.tags),
            parent_id=run.tags.get(MlflowTag.PARENT_RUN_ID),
            start_time_ms=run.start_time_ms,
            end_time_ms=run.end_time_ms,
            params=dict(run.params),
            tags=dict(run.tags),
            metrics=dict(run.metrics),
            documents=documents,
            images=images,
            predictions=predictions,
        )

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
        covered = ",".join(r.run_id for r in runs)
        if len(covered) > TAG_VALUE_LIMIT:
            covered = covered[: covered.rfind(",", 0, TAG_VALUE_LIMIT)] + ",..."
        note = "\n".join(
            [f"Study report **{title}** covering {len(runs)} runs:", ""]
            + [f"- `{r.run_id}` {r.name} ({r.kind}, {r.status})" for r in runs]
        )
        tags = {Tag.KIND: RunKind.REPORT.value, Tag.REPORT_RUNS: covered, MlflowTag.NOTE: note}
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
            return self.queries.log_finished_run(
                self.queries.experiment_id(experiment_name), f"report-{title}"[:250], tags,
                [listing, *files], Artifact.REPORT_FOLDER,
            )


def _explain_images(files: Iterable[str]) -> list[str]:
    """The explanation figures shown per run: the first few of each folder, by name."""
    chosen = []
    for folder, limit in EXPLAIN_FOLDERS.items():
        pngs = sorted(p for p in files if p.startswith(folder + "/") and p.endswith(".png"))
        chosen += pngs[:limit]
    return chosen


def _parse(path: Path) -> Any:
    text = path.read_text()
    return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
