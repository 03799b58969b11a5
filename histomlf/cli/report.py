"""`histomlf report`: an experiment (or a list of runs) as one readable study, HTML and PDF.

The work is the report recipe's (`histomlf.recipes.report`); this parses options and prints.
"""

from __future__ import annotations

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
    from histomlf.recipes.report import write_report
    from histomlf.report.pdf import PdfError
    from histomlf.report.store import ReportSelectionError

    try:
        outcome = write_report(experiment_names, run_ids, out, pdf=pdf, title=title,
                               mlflow_url=mlflow_url, log_run=log_run,
                               log_experiment=log_experiment)
    except (ReportSelectionError, PdfError, OSError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"wrote {' and '.join(str(f) for f in outcome.files)} ({outcome.runs} runs)")
    if outcome.run_id is not None:
        click.echo(f"logged as run {outcome.run_id} ({Tag.KIND}={RunKind.REPORT}) in experiment "
                   f"{outcome.experiment!r}")
