"""`IdcHyperModel`: a stateless Keras Tuner hypermodel that trains a trial like `histomlf train`.

`build(hp)` is the train recipe's `build_model` with the trial's values applied to the base
`TrainConfig`; `fit(hp, model, ...)` is the recipe's `fit_model` on the shared patient split
followed by its `choose_threshold_on_val`, and returns the full `val_*` metric set (the oracle
reads the objective from it). Both work from `hp`, the recipe and their arguments only: the
trial's state (which execution this is, what earlier executions produced) belongs to the tuner
(`tuning.tuners.IdcTuner`), which hands each `fit` of a trial the same `TrialExecutions` to add
its `ExecutionResult` to. Nothing here touches MLflow.

Hyperband hands `fit` an epoch budget (`epochs`, the trial's last epoch) and, for a trial that
continues an earlier one, `initial_epoch` (its weights are already loaded); see
`tuning.hyperband.schedule` for how the budget maps onto the two training phases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras_tuner as kt

from histomlf.config import TrainConfig
from histomlf.tuning.hyperband import schedule
from histomlf.tuning.settings import SearchSettings
from histomlf.tuning.space import SearchSpace
from histomlf.tuning.trials import ExecutionResult, TrialExecutions


class IdcHyperModel(kt.HyperModel):
    """Builds and trains histomlf models for Keras Tuner; see the module docstring."""

    def __init__(
        self,
        base: TrainConfig,
        settings: SearchSettings,
        space: SearchSpace,
        data: Callable[[], Any],
        work_root: Path,
    ) -> None:
        super().__init__(name="idc", tunable=True)
        self.base = base
        self.settings = settings
        self.space = space
        self._data_provider = data
        self._data: Any = None
        self.work_root = Path(work_root)

    @property
    def data(self) -> Any:
        """The prepared split, built once per process on first use (a cache, not trial state)."""
        if self._data is None:
            self._data = self._data_provider()
        return self._data

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        self.space.declare(hp)

    def trial_config(self, hp: kt.HyperParameters) -> TrainConfig:
        """The base config with this trial's active values applied."""
        return self.space.apply(self.base, self.space.active_values(hp))

    def seed(self, hp: kt.HyperParameters, execution: int = 0) -> None:
        """Seed everything for execution `execution` of `hp` (call it right before `build`).

        Executions of one trial start from different, reproducible initialisations
        (`seed + execution`). `build` itself does not seed: Keras Tuner calls it with `hp` only.
        """
        from histomlf.training.fit import make_deterministic

        make_deterministic(self.trial_config(hp).seed + execution)

    def build(self, hp: kt.HyperParameters) -> Any:
        from histomlf.training.workflow import build_model

        return build_model(self.trial_config(hp))

    def fit(
        self,
        hp: kt.HyperParameters,
        model: Any,
        *args: Any,
        callbacks: Sequence[Any] = (),
        epochs: int | None = None,
        initial_epoch: int = 0,
        executions: TrialExecutions | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Train `model` with the train recipe's own fit and return its `val_*` metrics.

        The result (model, threshold, validation scores) is appended to `executions`, the
        trial's executions so far; its length is this execution's index (seed offset and work
        folder `<work_root>/trial_<id>/execution_<k>`, where an interrupted fit resumes).
        """
        from histomlf.training.workflow import choose_threshold_on_val, fit_model

        executions = executions if executions is not None else TrialExecutions("fit")
        execution = executions.next
        config = schedule(self.trial_config(hp), epochs, initial_epoch)
        run_config = config.replace(seed=config.seed + execution)
        result = fit_model(
            model, run_config, self.data, callbacks=callbacks,
            work_dir=self.work_root / f"trial_{executions.trial_id}" / f"execution_{execution}",
            initial_epoch=initial_epoch,
        )  # fmt: skip
        threshold, val = choose_threshold_on_val(model, config, self.data)
        metrics = {f"val_{name}": float(value) for name, value in val.metrics.items()}
        last_epoch = initial_epoch + max(config.epochs - initial_epoch, 0) + config.fine_tune_epochs
        executions.results.append(ExecutionResult(
            trial_id=executions.trial_id, execution=execution, config=config, fit=result,
            val=val, threshold=threshold, metrics=metrics, model=model,
            initial_epoch=initial_epoch, last_epoch=last_epoch,
        ))  # fmt: skip
        return metrics
