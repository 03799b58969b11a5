"""How a search runs: tuner, trial budget, objective, model logging (the `search:` section).

The experiment YAML holds the base `TrainConfig` at top level and the search under `search:`
(these settings plus a `space:` mapping, see `histomlf.tuning.space`). Command-line options
override both. Values are checked here so a typo is one line before any data is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histomlf.choices import DIRECTION_CHOICES, LOG_MODELS_CHOICES
from histomlf.config import ConfigError, TrainConfig, build_config, load_experiment, setting
from histomlf.errors import UserError
from histomlf.evaluation.metrics import METRICS
from histomlf.tuning.tuner_table import tuner_names, tuner_spec

# Metrics Keras itself reports per epoch (histomlf compiles them under these names), so Keras
# Tuner can checkpoint the best epoch of a trial on them; the others exist after the fit only.
KERAS_EPOCH_METRICS = ("loss", "accuracy", "roc_auc", "pr_auc", "precision", "recall")


def _objectives() -> list[str]:
    return [f"val_{name}" for name in METRICS]


@dataclass(frozen=True)
class SearchSettings:
    """Everything about a search except the base training config and the space itself."""

    tuner: str = setting("random", "Keras Tuner search", choices=tuner_names)
    max_trials: int = setting(10, "most trials to run (failed ones count)")
    executions_per_trial: int = setting(
        1, "fits from scratch per trial; the objective is their mean"
    )
    objective: str = setting("val_roc_auc", "validation metric to optimise", choices=_objectives)
    direction: str = setting(
        "", "default: min for loss, brier, ece; else max", choices=DIRECTION_CHOICES
    )
    max_epochs: int = setting(
        0, "hyperband: most epochs of one trial, both phases (0: epochs + fine_tune_epochs)"
    )
    factor: int = setting(3, "hyperband: reduction factor between rounds")
    hyperband_iterations: int = setting(1, "hyperband: how many times to run all brackets")
    max_retries_per_trial: int = setting(0, "rerun a crashed trial this many times")
    max_consecutive_failed_trials: int = setting(
        3, "stop the search after this many failures in a row"
    )
    log_models: str = setting(
        "best", "best: only the winner's model, in its trial run", choices=LOG_MODELS_CHOICES
    )
    space: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.tuner not in tuner_names():
            raise ConfigError(
                f"tuner must be one of {', '.join(tuner_names())}; got {self.tuner!r}"
            )
        if self.log_models not in LOG_MODELS_CHOICES:
            raise ConfigError(f"log_models must be best or all; got {self.log_models!r}")
        for name in ("max_trials", "executions_per_trial", "hyperband_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.factor < 2:
            raise ConfigError(f"factor must be >= 2, got {self.factor}")
        if self.max_epochs < 0 or self.max_retries_per_trial < 0:
            raise ConfigError("max_epochs and max_retries_per_trial must be >= 0")
        if self.max_consecutive_failed_trials < 1:
            raise ConfigError("max_consecutive_failed_trials must be >= 1")
        if not self.objective.startswith("val_") or self.objective[4:] not in METRICS:
            known = ", ".join(f"val_{name}" for name in METRICS)
            raise ConfigError(f"objective must be one of {known}; got {self.objective!r}")
        if self.direction not in ("", *DIRECTION_CHOICES):
            raise ConfigError(f"direction must be max or min; got {self.direction!r}")
        if not isinstance(self.space, dict):
            raise ConfigError("search.space must be a mapping of parameter: spec")

    @property
    def objective_direction(self) -> str:
        """`max`, or `min` for loss-like metrics, unless `direction` says otherwise."""
        if self.direction:
            return self.direction
        return "max" if METRICS[self.objective.removeprefix("val_")].higher_is_better else "min"

    def epoch_budget(self, config: TrainConfig) -> int:
        """The most epochs one trial trains (both phases): Hyperband's `max_epochs`."""
        return self.max_epochs or config.epochs + config.fine_tune_epochs

    def as_params(self) -> dict[str, Any]:
        """The settings as flat run params (the space goes to an artifact instead)."""
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "space"}
        params["direction"] = self.objective_direction
        return params

    def replace(self, **changes: Any) -> SearchSettings:
        return dataclasses.replace(self, **changes)


def setting_names() -> list[str]:
    return [f.name for f in dataclasses.fields(SearchSettings) if f.name != "space"]


def check_search(config: TrainConfig, settings: SearchSettings) -> None:
    """The checks that need both the base config and the settings, run when a `SearchSpec` is
    built (before a run opens, data is read or Keras Tuner is imported)."""
    if config.devices != "cpu":
        raise ConfigError(
            f"devices={config.devices} applies to train and cv; tuning trials run on one "
            "device each: scale a search with --workers (Keras Tuner chief and workers)"
        )
    if config.snapshots != 1:
        raise ConfigError(
            f"snapshots={config.snapshots} applies to train and cv; a tuning trial scores one "
            "model (Hyperband resumes trials mid-schedule, which would split a cycle)"
        )
    tuner_spec(settings.tuner).validate(settings, config)


def load_search(
    experiment: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[TrainConfig, SearchSettings]:
    """The base config and search settings of an experiment file, overrides applied.

    `overrides` may hold `TrainConfig` keys and `SearchSettings` keys; each goes to its own
    dataclass. An experiment without a `search:` section is refused: there is nothing to tune.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v not in (None, "")}
    names = set(setting_names())
    train_overrides = {k: v for k, v in overrides.items() if k not in names}
    config, sections = load_experiment(experiment, train_overrides, sections=("search",))
    search = sections.get("search")
    if not isinstance(search, dict) or not search.get("space"):
        raise ConfigError(f"experiment {experiment}: no search.space section to tune")
    values = {**search, **{k: v for k, v in overrides.items() if k in names}}
    settings = build_config(SearchSettings, values, source=f"experiment {experiment} search")
    check_search(config, settings)
    return config, settings


def settings_from_dict(values: dict[str, Any]) -> SearchSettings:
    """Rebuild settings saved with a search (resume, workers)."""
    return build_config(SearchSettings, values, source="saved search settings")


class SearchError(UserError, ValueError):
    """A search that cannot start or continue as asked; the message says why, in one line."""


@dataclass(frozen=True)
class SearchSpec:
    """What defines a search: the base training config and the search settings (with space)."""

    config: TrainConfig
    settings: SearchSettings

    def __post_init__(self) -> None:
        check_search(self.config, self.settings)

    def to_dict(self) -> dict[str, Any]:
        settings = {k: v for k, v in self.settings.as_params().items() if k != "direction"}
        settings["direction"] = self.settings.direction
        return {
            "config": self.config.as_params(),
            "settings": {**settings, "space": self.settings.space},
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> SearchSpec:
        config = build_config(TrainConfig, payload["config"], source="saved search config")
        return cls(config, settings_from_dict(payload["settings"]))
