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

from histomlf.config import ConfigError, TrainConfig, build_config, load_experiment
from histomlf.evaluation.metrics import METRICS
from histomlf.tuning.tuners import list_tuners

LOG_MODELS_CHOICES = ("best", "all")
# Metrics Keras itself reports per epoch (histomlf compiles them under these names), so Keras
# Tuner can checkpoint the best epoch of a trial on them; the others exist after the fit only.
KERAS_EPOCH_METRICS = ("loss", "accuracy", "roc_auc", "pr_auc", "precision", "recall")


@dataclass(frozen=True)
class SearchSettings:
    """Everything about a search except the base training config and the space itself."""

    tuner: str = "random"
    max_trials: int = 10
    executions_per_trial: int = 1
    objective: str = "val_roc_auc"
    direction: str = ""
    max_epochs: int = 0
    factor: int = 3
    hyperband_iterations: int = 1
    max_retries_per_trial: int = 0
    max_consecutive_failed_trials: int = 3
    log_models: str = "best"
    space: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tuner not in list_tuners():
            raise ConfigError(
                f"tuner must be one of {', '.join(list_tuners())}; got {self.tuner!r}"
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
        if self.direction not in ("", "max", "min"):
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
    if settings.tuner == "hyperband":
        _check_hyperband(config, settings)
    return config, settings


def _check_hyperband(config: TrainConfig, settings: SearchSettings) -> None:
    tuned = sorted({"epochs", "fine_tune_epochs"} & set(settings.space))
    if tuned:
        raise ConfigError(f"hyperband sets each trial's epochs itself; remove {', '.join(tuned)} "
                          "from search.space")
    if settings.epoch_budget(config) < 1:
        raise ConfigError("hyperband needs max_epochs >= 1")


def settings_from_dict(values: dict[str, Any]) -> SearchSettings:
    """Rebuild settings saved with a search (resume, workers)."""
    return build_config(SearchSettings, values, source="saved search settings")


class SearchError(ValueError):
    """A search that cannot start or continue as asked; the message says why, in one line."""


@dataclass(frozen=True)
class SearchSpec:
    """What defines a search: the base training config and the search settings (with space)."""

    config: TrainConfig
    settings: SearchSettings

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
