"""The tuners by name, without Keras Tuner: the one table a new tuner goes in.

Each `TunerSpec` names a tuner, the Keras Tuner oracle that picks its trials (a class name in
`keras_tuner.oracles`), that oracle's own arguments from the search settings (plain values:
`tuning.tuners` adds the objective, seed, failure budget and trial cap every oracle takes) and a
check of the settings only that tuner has. Keras Tuner's tuners are each an oracle wired to its
base `Tuner`; histomlf wires every oracle to one `Tuner` subclass (`tuning.tuners.IdcTuner`), so
a name here is all a tuner needs. `histomlf tune --help` and `SearchSettings` read this table,
so neither imports keras_tuner (seconds of TensorFlow).

The `settings` and `config` arguments are a `SearchSettings` and a `TrainConfig`; this module
does not import them (settings imports this table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from histomlf.errors import ConfigError
from histomlf.tuning import hyperband

OracleArgs = Callable[[Any, Any], dict[str, Any]]
Validate = Callable[[Any, Any], None]


def _no_args(settings: Any, config: Any) -> dict[str, Any]:
    """Most oracles take only the arguments every oracle takes."""
    return {}


def _no_check(settings: Any, config: Any) -> None:
    """Most tuners take any valid settings."""


@dataclass(frozen=True)
class TunerSpec:
    """One tuner: its name, its Keras Tuner oracle, the oracle's own arguments, its check."""

    name: str
    oracle: str
    oracle_args: OracleArgs = _no_args
    validate: Validate = _no_check


def _table(*specs: TunerSpec) -> dict[str, TunerSpec]:
    table: dict[str, TunerSpec] = {}
    for spec in specs:
        if spec.name in table:
            raise ValueError(f"two tuners are named {spec.name!r}")
        table[spec.name] = spec
    return table


TUNERS: dict[str, TunerSpec] = _table(
    TunerSpec("random", "RandomSearchOracle"),
    TunerSpec("bayesian", "BayesianOptimizationOracle"),
    TunerSpec("hyperband", "HyperbandOracle", hyperband.oracle_args, hyperband.check),
    TunerSpec("grid", "GridSearchOracle"),
)


def tuner_names() -> list[str]:
    """The known tuner names, sorted: `--tuner`'s choices."""
    return sorted(TUNERS)


def tuner_spec(name: str) -> TunerSpec:
    """The table entry of `name`; an unknown name is a one-line `ConfigError`."""
    if name not in TUNERS:
        raise ConfigError(f"unknown tuner {name!r}; known: {', '.join(tuner_names())}")
    return TUNERS[name]
