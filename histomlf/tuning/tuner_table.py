"""The tuners by name, without Keras Tuner: what settings validation and `--tuner` need.

Each `TunerSpec` names a tuner, the oracle arguments it takes from the search settings (plain
values: `tuning.tuners` adds the objective and builds the Keras Tuner class registered under
the same name) and a check of the settings only that tuner has. `histomlf tune --help` and
`SearchSettings` read this table, so neither imports keras_tuner (seconds of TensorFlow).
Adding a tuner: one `TunerSpec` here plus its Keras Tuner class in `tuning/tuners.py`.

The `settings` and `config` arguments are a `SearchSettings` and a `TrainConfig`; this module
does not import them (settings imports this table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from histomlf.errors import ConfigError

OracleArgs = Callable[[Any, Any], dict[str, Any]]
Validate = Callable[[Any, Any], None]


def _no_check(settings: Any, config: Any) -> None:
    """Most tuners take any valid settings."""


@dataclass(frozen=True)
class TunerSpec:
    """One tuner: its name, its oracle's own arguments, and its own check of the settings."""

    name: str
    oracle_args: OracleArgs
    validate: Validate = _no_check


def _with_max_trials(settings: Any, config: Any) -> dict[str, Any]:
    return {"max_trials": settings.max_trials}


def _hyperband_args(settings: Any, config: Any) -> dict[str, Any]:
    return {
        "max_epochs": settings.epoch_budget(config),
        "factor": settings.factor,
        "hyperband_iterations": settings.hyperband_iterations,
    }


def _check_hyperband(settings: Any, config: Any) -> None:
    tuned = sorted({"epochs", "fine_tune_epochs"} & set(settings.space))
    if tuned:
        raise ConfigError(
            f"hyperband sets each trial's epochs itself; remove {', '.join(tuned)} "
            "from search.space"
        )
    if settings.epoch_budget(config) < 1:
        raise ConfigError("hyperband needs max_epochs >= 1")


TUNERS: dict[str, TunerSpec] = {
    spec.name: spec
    for spec in (
        TunerSpec("random", _with_max_trials),
        TunerSpec("bayesian", _with_max_trials),
        TunerSpec("hyperband", _hyperband_args, _check_hyperband),
        TunerSpec("grid", _with_max_trials),
    )
}


def tuner_names() -> list[str]:
    """The known tuner names, sorted: `--tuner`'s choices."""
    return sorted(TUNERS)


def tuner_spec(name: str) -> TunerSpec:
    """The table entry of `name`; an unknown name is a one-line `ConfigError`."""
    if name not in TUNERS:
        raise ConfigError(f"unknown tuner {name!r}; known: {', '.join(tuner_names())}")
    return TUNERS[name]
