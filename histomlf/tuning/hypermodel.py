"""`IdcHyperModel`: a Keras Tuner hypermodel that trains a trial exactly like `histomlf train`.

`build(hp)` is the train recipe's `build_model` with the trial's values applied to the base
`TrainConfig`; `fit(hp, model, ...)` is the recipe's `fit_model` on the shared patient split
followed by its `choose_threshold_on_val`, and returns the full `val_*` metric set (the oracle
reads the objective from it). Nothing here touches MLflow: a tracker plugs in through
`observer` (per-execution Keras callbacks) and reads `results` after each trial.

Hyperband hands `fit` an epoch budget (`epochs`, the trial's last epoch) and, for a trial that
continues an earlier one, `initial_epoch` (its weights are already loaded). The budget counts
both phases: phase 1 takes the first `config.epochs` epochs and, when fine-tuning is on
(`fine_tune_epochs > 0`), phase 2 the rest; without fine-tuning all of it is phase 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import keras_tuner as kt

from histomlf.config import TrainConfig
from histomlf.tuning.settings import SearchSettings
from histomlf.tuning.space import SearchSpace


class ExecutionObserver(Protocol):
    """What a tracker supplies: extra Keras callbacks for one execution of one trial."""

    def execution_callbacks(self, trial_id: str, execution: int, initial_epoch: int) -> list[Any]:
        ...


@dataclass
class ExecutionResult:
    """One execution (one fit from scratch) of a trial, scored on the validation split."""

    trial_id: str
    execution: int
    config: TrainConfig
    fit: Any
    val: Any
    threshold: float
    metrics: dict[str, float]
    model: Any
    initial_epoch: int
    last_epoch: int

    @property
    def early_stopped(self) -> bool:
        """Fewer epochs ran than the schedule allowed (early stopping cut a phase)."""
        return self.fit.epochs_run < self.last_epoch - self.initial_epoch


def schedule(config: TrainConfig, epochs: int | None, initial_epoch: int = 0) -> TrainConfig:
    """The config one trial trains with, given Hyperband's epoch budget (None: as configured)."""
    if epochs is None:
        return config
    if config.fine_tune_epochs <= 0:
        return config.replace(epochs=epochs, fine_tune_epochs=0)
    head = max(1, min(config.epochs, epochs))
    return config.replace(epochs=head, fine_tune_epochs=max(0, epochs - max(head, initial_epoch)))


class IdcHyperModel(kt.HyperModel):
    """Builds and trains histomlf models for Keras Tuner; see the module docstring."""

    def __init__(
        self,
        base: TrainConfig,
        settings: SearchSettings,
        space: SearchSpace,
        data: Callable[[], Any],
        work_root: Path,
        observer: ExecutionObserver | None = None,
    ) -> None:
        super().__init__(name="idc", tunable=True)
        self.base = base
        self.settings = settings
        self.space = space
        self._data_provider = data
        self._data: Any = None
        self.work_root = Path(work_root)
        self.observer = observer
        self.trial_id = ""
        self.results: list[ExecutionResult] = []

    @property
    def data(self) -> Any:
        """The prepared split, built once per process on first use."""
        if self._data is None:
            self._data = self._data_provider()
        return self._data

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        self.space.declare(hp)

    def trial_config(self, hp: kt.HyperParameters) -> TrainConfig:
        """The base config with this trial's active values applied."""
        return self.space.apply(self.base, self.space.active_values(hp))

    def start_trial(self, trial_id: str) -> None:
        """Forget the previous trial; executions of `trial_id` follow."""
        self.trial_id = trial_id
        self.results = []

    @property
    def execution(self) -> int:
        return len(self.results)

    def build(self, hp: kt.HyperParameters) -> Any:
        from histomlf.training.fit import make_deterministic
        from histomlf.training.workflow import build_model

        config = self.trial_config(hp)
        make_deterministic(config.seed + self.execution)
        return build_model(config)

    def fit(
        self,
        hp: kt.HyperParameters,
        model: Any,
        *args: Any,
        callbacks: Sequence[Any] = (),
        epochs: int | None = None,
        initial_epoch: int = 0,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Train `model` with the train recipe's own fit and return its `val_*` metrics."""
        from histomlf.training.workflow import choose_threshold_on_val, fit_model

        execution = self.execution
        config = schedule(self.trial_config(hp), epochs, initial_epoch)
        run_config = config.replace(seed=config.seed + execution)
        extra = (self.observer.execution_callbacks(self.trial_id, execution, initial_epoch)
                 if self.observer is not None else [])
        result = fit_model(
            model, run_config, self.data, callbacks=[*callbacks, *extra],
            work_dir=self.work_root / f"trial_{self.trial_id}" / f"execution_{execution}",
            initial_epoch=initial_epoch,
        )  # fmt: skip
        threshold, val = choose_threshold_on_val(model, config, self.data)
        metrics = {f"val_{name}": float(value) for name, value in val.metrics.items()}
        last_epoch = initial_epoch + max(config.epochs - initial_epoch, 0) + config.fine_tune_epochs
        self.results.append(ExecutionResult(
            trial_id=self.trial_id, execution=execution, config=config, fit=result, val=val,
            threshold=threshold, metrics=metrics, model=model, initial_epoch=initial_epoch,
            last_epoch=last_epoch,
        ))  # fmt: skip
        return metrics

    def best_result(self) -> ExecutionResult | None:
        """This trial's best execution by the objective (NaN never wins)."""
        name = self.settings.objective
        sign = 1 if self.settings.objective_direction == "max" else -1

        def key(result: ExecutionResult) -> float:
            value = result.metrics.get(name, math.nan)
            return -math.inf if math.isnan(value) else sign * value

        return max(self.results, key=key, default=None)

    def mean_metrics(self) -> dict[str, float]:
        """Metrics averaged over executions: what the oracle scores the trial on."""
        if not self.results:
            return {}
        count = len(self.results)
        return {k: sum(r.metrics[k] for r in self.results) / count for k in self.results[0].metrics}
