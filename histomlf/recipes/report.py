"""The report recipe: MLflow runs (an experiment or a list of run ids) as one readable study.

`write_report` selects the runs through the tracking store, renders the self-contained HTML
(and, with `pdf`, prints it with headless Chromium), and logs the files as an artifact of a
run tagged `histomlf.kind=report`. `histomlf report` only parses options and prints.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReportOutcome:
    """What `write_report` wrote and where it logged it."""

    files: tuple[Path, ...]
    runs: int
    run_id: str | None = None
    experiment: str | None = None


def write_report(
    experiment_names: tuple[str, ...] | list[str],
    run_ids: list[str],
    out: Path,
    *,
    pdf: Path | None = None,
    title: str = "",
    mlflow_url: str = "",
    log_run: bool = True,
    log_experiment: str = "",
) -> ReportOutcome:
    """Write the study report of the selected runs to `out` (and `pdf`), then log it.

    The report run goes to `log_experiment`, else the first reported run's experiment.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line of output
    from histomlf.report.model import Study
    from histomlf.report.pdf import find_chromium, print_pdf
    from histomlf.report.render import write_html
    from histomlf.report.store import ReportStore

    if pdf is not None:
        find_chromium()  # before reading anything: a missing browser is a one-line error
    store = ReportStore()
    runs, selection = store.select(experiment_names, run_ids)
    study = Study(
        title=title or f"histomlf study report: {selection}",
        selection=selection,
        runs=tuple(runs),
        generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        mlflow_url=mlflow_url,
    )
    write_html(study, out)
    files = [out]
    if pdf is not None:
        files.append(print_pdf(out, pdf))
    if not log_run:
        return ReportOutcome(tuple(files), len(runs))
    experiment = log_experiment or runs[0].experiment_name
    run_id = store.log_report(experiment_name=experiment, runs=runs, files=files,
                              title=study.title)
    return ReportOutcome(tuple(files), len(runs), run_id, experiment)
