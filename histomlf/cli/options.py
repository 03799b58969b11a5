"""Click options generated from the dataclasses' field metadata: one table of options.

Every option of `train`, `cv` and `tune` that sets a `TrainConfig` or `SearchSettings` field is
built here from that field (`histomlf.config.setting`): its name (kebab-case plus the
snake_case twin, since `mlflow run -P fine_tune_epochs=2` passes undeclared parameters as
`--fine_tune_epochs 2`), its type, its choices and its help. Every option defaults to None,
meaning "as the experiment file says".

A verb takes every recipe field and only the run options it uses (`config_options(verb)`,
from `histomlf.config.VERB_RUN_OPTIONS`): an option a verb would ignore is not offered.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Iterable
from typing import Any

import click

from histomlf.config import (
    DEFAULT_EXPERIMENT,
    VERB_RUN_OPTIONS,
    ConfigError,
    TrainConfig,
    check_data_location,
    recipe_fields,
)

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

experiment_option = click.option(
    "--experiment",
    "-e",
    default=DEFAULT_EXPERIMENT,
    show_default=True,
    help="experiment file or name under experiments/",
)
"""The `--experiment` option of `train` and `cv` (the experiment file, not MLflow's)."""

experiment_name_option = click.option(
    "--experiment-name",
    "experiment_name",
    default="",
    help="MLflow experiment to log the run in (as `mlflow run --experiment-name`; default "
    "$MLFLOW_EXPERIMENT_NAME, else histomlf)",
)
"""MLflow's experiment (a name in the tracking store), not the experiment file `-e`."""


def _click_type(hint: Any, choices: Any) -> Any:
    if choices is not None:
        names = choices() if callable(choices) else choices
        return click.Choice(list(names))
    return {int: int, float: float, bool: click.BOOL}.get(hint, str)


def dataclass_options(cls: type, names: Iterable[str]) -> Decorator:
    """One option per field of `cls` named in `names`, from the field's metadata."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    chosen = [by_name[name] for name in names]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for field in reversed(chosen):
            kebab = "--" + field.name.replace("_", "-")
            flags = [kebab] if "_" not in field.name else [kebab, f"--{field.name}"]
            command = click.option(
                *flags,
                field.name,
                type=_click_type(hints[field.name], field.metadata.get("choices")),
                default=None,
                help=field.metadata.get("help", field.name),
            )(command)
        return command

    return decorate


def config_options(verb: str) -> Decorator:
    """Every recipe field of `TrainConfig` plus the run options `verb` uses
    (`histomlf.config.VERB_RUN_OPTIONS`)."""
    return dataclass_options(TrainConfig, (*recipe_fields(), *VERB_RUN_OPTIONS[verb]))


def overrides_from(options: dict[str, Any]) -> dict[str, Any]:
    """The config options the user gave; an empty string (an unset MLproject default) is unset."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"experiment"}
    return {k: v for k, v in options.items() if k in names and v not in (None, "")}


def load_checked_config(
    experiment: str, options: dict[str, Any]
) -> tuple[TrainConfig, dict[str, Any]]:
    """Load an experiment plus CLI overrides and check where its data is: a `ConfigError`
    before any run opens, any data is read, or TensorFlow or MLflow is imported."""
    from histomlf.config import load_experiment

    config, sections = load_experiment(experiment, overrides_from(options), sections=("search",))
    check_data_location(config.data_dir)
    return config, sections


def use_experiment_name(name: str, *, fixed_by: str = "") -> None:
    """Log this process's runs in MLflow experiment `name` (empty: leave it as configured).

    `fixed_by` names what already decides the experiment (a resumed search's parent run);
    under `mlflow run`, or with `$MLFLOW_EXPERIMENT_ID` set, the experiment is chosen there.
    """
    if not name:
        return
    if fixed_by:
        raise ConfigError(f"--experiment-name: {fixed_by} already decides the experiment")
    if os.environ.get("MLFLOW_RUN_ID"):
        raise ConfigError(
            "--experiment-name: this run was opened by `mlflow run`; name the experiment there "
            "(mlflow run --experiment-name NAME)"
        )
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        raise ConfigError(
            "--experiment-name conflicts with $MLFLOW_EXPERIMENT_ID "
            f"({os.environ['MLFLOW_EXPERIMENT_ID']}): unset one of them"
        )
    os.environ["MLFLOW_EXPERIMENT_NAME"] = name


def engine_options(engine_help: str) -> Decorator:
    """`--engine local|spark` (with `engine_help` saying what spark does for this verb) and
    `--master`, shared by the verbs that can score on Apache Spark."""
    engine = click.option("--engine", type=click.Choice(["local", "spark"]), default="local",
                          show_default=True, help=engine_help)
    master = click.option(
        "--master", default="local[*]", show_default=True,
        help="Spark master URL for --engine spark (local[N], spark://host:port, k8s://...)",
    )
    return lambda function: engine(master(function))
