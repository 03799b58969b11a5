"""Keras Tuner tuners by name (`random`, `bayesian`, `hyperband`, `grid`) with histomlf's mixin.

A registry maps each name to a Keras Tuner class and a function turning `SearchSettings` into
its oracle arguments; it refuses duplicate and unknown names. `SearchTunerMixin` adds the few
things every histomlf search needs to the stock tuner without touching its trial loop: the
space is declared without building models, and the model each trial was scored with (its best
execution) is kept as weights in the trial folder, so the search's winner can be reloaded
exactly instead of retrained.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras_tuner as kt

from histomlf.config import TrainConfig
from histomlf.tuning.settings import SearchSettings, check_search
from histomlf.tuning.tuner_table import TUNERS, tuner_spec

PROJECT_NAME = "search"
MODEL_WEIGHTS = "histomlf_model.weights.h5"
MODEL_INFO = "histomlf_model.json"

OracleArgs = Callable[["SearchSettings", TrainConfig], dict[str, Any]]
_TUNERS: dict[str, tuple[type, OracleArgs]] = {}


def register_tuner(name: str, tuner_class: type, oracle_args: OracleArgs) -> None:
    """Register a Keras Tuner class under `name`; a taken name is a `ValueError`."""
    if name in _TUNERS:
        raise ValueError(f"a tuner named {name!r} is already registered")
    _TUNERS[name] = (tuner_class, oracle_args)


def list_tuners() -> list[str]:
    return sorted(_TUNERS)


def _common(settings: SearchSettings, config: TrainConfig) -> dict[str, Any]:
    return {
        "objective": kt.Objective(settings.objective, settings.objective_direction),
        "seed": config.seed,
        "max_retries_per_trial": settings.max_retries_per_trial,
        "max_consecutive_failed_trials": settings.max_consecutive_failed_trials,
    }


def _oracle_args(name: str) -> OracleArgs:
    """The objective and failure budget every tuner takes, plus its own args from the table."""
    own = tuner_spec(name).oracle_args
    return lambda settings, config: {**_common(settings, config), **own(settings, config)}


# One Keras Tuner class per name of the Keras-free table (`tuning/tuner_table.py`).
_KERAS_TUNERS = {
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
    "grid": kt.GridSearch,
}
for _name in TUNERS:
    register_tuner(_name, _KERAS_TUNERS[_name], _oracle_args(_name))


class SearchTunerMixin:
    """Mixed in before a Keras Tuner class; `self.hypermodel` is an `IdcHyperModel`."""

    def _populate_initial_space(self) -> None:
        # Every parameter, conditional ones included, is registered in one declaration pass;
        # the stock version builds models until all conditions were seen (slow for VGG/ResNet).
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        self.hypermodel.start_trial(trial.trial_id)
        results = super().run_trial(trial, *args, **kwargs)
        best = self.hypermodel.best_result()
        if best is not None:
            folder = Path(self.get_trial_dir(trial.trial_id))
            best.model.save_weights(folder / MODEL_WEIGHTS)
            (folder / MODEL_INFO).write_text(json.dumps(
                {"threshold": best.threshold, "execution": best.execution,
                 "config": best.config.as_params()}, default=str))
        return results

    def saved_model(self, trial: Any) -> tuple[Any, float] | None:
        """The model `trial` was scored with and its threshold, if its folder is on this machine."""
        folder = Path(self.project_dir) / f"trial_{trial.trial_id}"
        if not (folder / MODEL_WEIGHTS).is_file():
            return None
        info = json.loads((folder / MODEL_INFO).read_text())
        model = self.hypermodel.build(trial.hyperparameters)
        model.load_weights(folder / MODEL_WEIGHTS)
        return model, float(info["threshold"])


def tuner_class(name: str, mixins: tuple[type, ...] = ()) -> type:
    """The Keras Tuner class for `name` with `mixins` and `SearchTunerMixin` in front."""
    tuner_spec(name)  # an unknown name is a one-line ConfigError
    base, _ = _TUNERS[name]
    prefix = "".join(m.__name__.removesuffix("Mixin") for m in mixins)
    return type(f"{prefix}{base.__name__}", (*mixins, SearchTunerMixin, base), {})


def create_tuner(
    hypermodel: Any,
    settings: SearchSettings,
    config: TrainConfig,
    directory: Path,
    *,
    mixins: tuple[type, ...] = (),
    **kwargs: Any,
) -> Any:
    """Build the named tuner over `hypermodel` in `directory/search` (reloaded if present).

    The settings were checked when the `SearchSpec` was built, before any run opened; the
    check runs again here for callers that build a tuner from loose settings.
    """
    check_search(config, settings)
    cls = tuner_class(settings.tuner, mixins)
    _, oracle_args = _TUNERS[settings.tuner]
    tuner = cls(
        hypermodel=hypermodel,
        directory=str(directory),
        project_name=PROJECT_NAME,
        overwrite=False,
        executions_per_trial=settings.executions_per_trial,
        **oracle_args(settings, config),
        **kwargs,
    )
    if settings.tuner == "hyperband":
        # Hyperband takes no max_trials; the oracle still honours one (a cap on trials).
        tuner.oracle.max_trials = settings.max_trials
    return tuner
