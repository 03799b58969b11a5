"""`histomlf report`: an experiment (or a list of runs) as one readable study, HTML and PDF."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import click

from histomlf.schema import RunKind, Tag


def _run_ids(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@click.command()
@click.option("--experiment-name", "experiment_names", multiple=True,
              help="MLflow experiment to report on (repeatable); every run in it")
@click.option("--runs", "runs_option", default=None, metavar="ID,...",
              help="comma-separated run ids to report on instead (a search or CV brings its "
                   "trials or folds)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the HTML file to write (self-contained)")
@click.option("--pdf", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also print it to this PDF (headless Chromium)")
@click.option("--title", default="", help="report title (default: from the selection)")
@click.option("--mlflow-url", default="",
              help="base URL of an MLflow UI; run names then link there (the only links)")
@click.option("--log/--no-log", "log_run", default=True, show_default=True,
              help=f"log the report as an artifact of a run tagged {Tag.KIND}={RunKind.REPORT}")
@click.option("--log-experiment", default="",
              help="experiment for the report run (default: the first reported run's)")
def report(experiment_names: tuple[str, ...], runs_option: str | None, out: Path,
           pdf: Path | None, title: str, mlflow_url: str, log_run: bool,
           log_experiment: str) -> None:
    """Write a study report of MLflow runs: data, methods, results with intervals, figures,
    and the commands that reproduce every run."""
    from histomlf.cli.errors import check_tracking_server

    run_ids = _run_ids(runs_option)
    if bool(experiment_names) == bool(run_ids):
        raise click.ClickException("give --experiment-name NAME (repeatable) or --runs ID,... "
                                   "(one of them, not both)")
    check_tracking_server()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line of output
    from histomlf.report.model import Study
    from histomlf.report.pdf import PdfError, find_chromium, print_pdf
    from histomlf.report.render import write_html
    from histomlf.report.store import ReportSelectionError, ReportStore

    try:
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
        click.echo(f"wrote {' and '.join(str(f) for f in files)} ({len(runs)} runs)")
        if log_run:
            experiment = log_experiment or runs[0].experiment_name
            run_id = store.log_report(experiment_name=experiment, runs=runs, files=files,
                                      title=study.title)
            click.echo(f"logged as run {run_id} ({Tag.KIND}={RunKind.REPORT}) in experiment "
                       f"{experiment!r}")
    except (ReportSelectionError, PdfError, OSError) as error:
        raise click.ClickException(str(error)) from error
