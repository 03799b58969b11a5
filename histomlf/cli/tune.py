"""`histomlf tune`: a Keras Tuner search tracked in MLflow (the `tune` entry point).

The same command runs a whole search in one process, a chief with `--workers N` local workers,
a chief for workers on other machines (`KERASTUNER_TUNER_ID=chief`, `KERASTUNER_ORACLE_IP`,
`KERASTUNER_ORACLE_PORT` set), or one of those workers (`--parent-run-id P` plus the same
variables with `KERASTUNER_TUNER_ID=tuner<k>`). `--resume P` continues search P.
"""

from __future__ import annotations

import json

import click

from histomlf.cli.errors import check_tracking_server, user_errors
from histomlf.cli.options import overrides_from, train_config_options
from histomlf.config import ConfigError
from histomlf.evaluation.metrics import HEADLINE, headline_keys

SEARCH_OPTIONS = (
    ("tuner", str, "random | bayesian | hyperband | grid"),
    ("max_trials", int, "most trials to run (failed ones count)"),
    ("executions_per_trial", int, "fits from scratch per trial; the objective is their mean"),
    ("objective", str, "val_<metric> to optimise: val_roc_auc (default), val_pr_auc, val_loss"),
    ("direction", str, "max | min (default: min for loss, brier, ece; else max)"),
    ("max_epochs", int, "hyperband: most epochs of one trial, both phases (0: epochs + "
                        "fine_tune_epochs)"),
    ("factor", int, "hyperband: reduction factor between rounds"),
    ("hyperband_iterations", int, "hyperband: how many times to run all brackets"),
    ("max_retries_per_trial", int, "rerun a crashed trial this many times"),
    ("max_consecutive_failed_trials", int, "stop the search after this many failures in a row"),
    ("log_models", str, "best (only the winner's model, in its trial run) | all"),
)


def search_options(command):
    """One kebab-case option (plus snake_case twin for `mlflow run -P`) per search setting."""
    for name, kind, text in reversed(SEARCH_OPTIONS):
        kebab = "--" + name.replace("_", "-")
        names = [kebab] if "_" not in name else [kebab, f"--{name}"]
        command = click.option(*names, name, type=kind, default=None, help=text)(command)
    return command


@click.command()
@click.option("--experiment", "-e", default="tune_smoke", show_default=True,
              help="experiment file or name under experiments/ (with a search: section)")
@search_options
@train_config_options
@click.option("--resume", default="", help="parent run id of a search to continue")
@click.option("--workers", type=int, default=0, show_default=True,
              help="start a chief and this many local workers (distributed Keras Tuner)")
@click.option("--parent-run-id", "--parent_run_id", "parent_run_id", default="",
              envvar="HISTOMLF_TUNE_PARENT_RUN_ID",
              help="run as a worker of the search with this parent run (needs KERASTUNER_* env)")
@click.option("--tuner-dir", "--tuner_dir", "tuner_dir", default="",
              help="root folder of tuner state (default $HISTOMLF_TUNER_DIR or the cache)")
@click.option("--threads", type=int, default=0,
              help="TensorFlow threads of this process (0: all cores; workers: cores / N)")
@click.option("--json", "as_json", is_flag=True, help="print the search result as JSON")
def tune(experiment: str, resume: str, workers: int, parent_run_id: str, tuner_dir: str,
         threads: int, as_json: bool, **options) -> None:
    """Search hyperparameters with Keras Tuner; every trial is a nested MLflow run."""
    check_tracking_server()
    from histomlf.tuning.distributed import configure_threads

    if workers < 0:
        raise click.ClickException("--workers must be >= 0")
    configure_threads(threads)
    search_keys = {name for name, _, _ in SEARCH_OPTIONS}
    given = {k: v for k, v in options.items() if k in search_keys and v not in (None, "")}
    train_given = overrides_from(options)

    from histomlf.recipes import tune as tune_recipe
    from histomlf.tuning.settings import SearchSpec

    try:
        if parent_run_id:
            tune_recipe.run_worker(parent_run_id, tuner_dir=tuner_dir,
                                data_dir=train_given.get("data_dir", ""))
            return
        if resume:
            if train_given.keys() - {"data_dir"}:
                raise ConfigError("--resume continues the saved search; it cannot change "
                                  f"{', '.join(sorted(train_given.keys() - {'data_dir'}))}")
            spec = tune_recipe.resumed_spec(resume, tune_recipe.tuner_root(tuner_dir), given)
        else:
            from histomlf.tuning.settings import load_search

            spec = SearchSpec(*load_search(experiment, {**train_given, **given}))
        result = tune_recipe.tune(spec, resume=resume, workers=workers,
                                       tuner_dir=tuner_dir, threads=threads)
    except (ConfigError, RuntimeError, *user_errors()) as error:
        raise click.ClickException(str(error).strip().splitlines()[-1]) from error
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    click.echo(f"search {result['run_id']}: best trial {result['best_trial_id']} "
               f"{result['objective']}={result['best_score']:.4f}  model {result['model_uri']}")
    for name in headline_keys("test_", HEADLINE):
        click.echo(f"  {name:24s} {result['metrics'][name]:.4f}")
    if result.get("gate") is not None:
        click.echo(f"  registry: {result['gate']}")
