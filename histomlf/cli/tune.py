"""`histomlf tune`: a Keras Tuner search tracked in MLflow (the `tune` entry point).

The same command runs a whole search in one process, a chief with `--workers N` local workers,
a chief for workers on other machines (`KERASTUNER_TUNER_ID=chief`, `KERASTUNER_ORACLE_IP`,
`KERASTUNER_ORACLE_PORT` set), or one of those workers (`--parent-run-id P` plus the same
variables with `KERASTUNER_TUNER_ID=tuner<k>`). `--resume P` continues search P.

Every check — options, experiment file, search settings, the ones that need both (devices,
snapshots, Hyperband's budget) and where the data is — runs before MLflow, Keras Tuner or
TensorFlow is imported.
"""

from __future__ import annotations

import json

import click

from histomlf.cli.errors import check_tracking_server, shown_as_one_line
from histomlf.cli.options import (
    config_options,
    dataclass_options,
    experiment_name_option,
    overrides_from,
    use_experiment_name,
)
from histomlf.config import ConfigError, check_data_location, run_fields
from histomlf.evaluation.metrics import HEADLINE, headline_keys
from histomlf.tuning.settings import SearchSettings, SearchSpec, load_search, setting_names


@click.command()
@click.option("--experiment", "-e", default="tune_smoke", show_default=True,
              help="experiment file or name under experiments/ (with a search: section)")
@experiment_name_option
@dataclass_options(SearchSettings, setting_names())
@config_options("tune")
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
def tune(experiment: str, experiment_name: str, resume: str, workers: int, parent_run_id: str,
         tuner_dir: str, threads: int, as_json: bool, **options) -> None:
    """Search hyperparameters with Keras Tuner; every trial is a nested MLflow run."""
    search_keys = set(setting_names())
    given = {k: v for k, v in options.items() if k in search_keys and v not in (None, "")}
    train_given = overrides_from(options)
    run_given = {k: v for k, v in train_given.items() if k in run_fields()}
    spec = None
    with shown_as_one_line():  # every check before MLflow, Keras Tuner or TensorFlow loads
        if workers < 0:
            raise ConfigError("--workers must be >= 0")
        check_data_location(train_given.get("data_dir", ""))
        if parent_run_id or resume:
            use_experiment_name(experiment_name, fixed_by=f"the search's parent run "
                                                          f"{parent_run_id or resume}")
            recipe_keys = sorted(train_given.keys() - run_given.keys())
            if resume and recipe_keys:
                raise ConfigError("--resume continues the saved search; it cannot change "
                                  f"{', '.join(recipe_keys)}")
        else:
            use_experiment_name(experiment_name)
            spec = SearchSpec(*load_search(experiment, {**train_given, **given}))
    check_tracking_server()
    from histomlf.recipes import tune as tune_recipe
    from histomlf.tuning.distributed import configure_threads

    configure_threads(threads)
    with shown_as_one_line():
        if parent_run_id:
            tune_recipe.run_worker(parent_run_id, tuner_dir=tuner_dir,
                                   data_dir=train_given.get("data_dir", ""))
            return
        if resume:
            spec = tune_recipe.resumed_spec(resume, tune_recipe.tuner_root(tuner_dir), given,
                                            run_options=run_given)
        result = tune_recipe.tune(spec, resume=resume, workers=workers,
                                  tuner_dir=tuner_dir, threads=threads)
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    click.echo(f"search {result['run_id']}: best trial {result['best_trial_id']} "
               f"{result['objective']}={result['best_score']:.4f}  model {result['model_uri']}")
    for name in headline_keys("test_", HEADLINE):
        click.echo(f"  {name:24s} {result['metrics'][name]:.4f}")
    if result.get("gate") is not None:
        click.echo(f"  registry: {result['gate']}")
