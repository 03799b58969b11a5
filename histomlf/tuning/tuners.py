"""`IdcTuner`: the one Keras Tuner `Tuner` subclass every histomlf search runs, whatever its oracle.

Keras Tuner's `RandomSearch`, `BayesianOptimization`, `GridSearch` and `Hyperband` are each an
oracle wired to its base `Tuner`; `create_tuner` wires the oracle the tuner table names
(`tuning/tuner_table.py`) to `IdcTuner` instead. The tuner holds the trial's state — its
schedule, its executions (`TrialExecutions`, which the stateless hypermodel's `fit` adds to),
when it started — and runs the trial's lifecycle in Keras Tuner's public hooks, calling
`super()` in each: `on_trial_begin` starts the trial, `run_trial` hands the executions and
Hyperband's epoch budget to `fit` and then keeps the trial's best execution as weights in its
folder (so the winner reloads exactly instead of being retrained), `on_epoch_end` forwards
epoch metrics, `on_trial_end` lets the oracle record the trial. A `TrialTracker` (plain Python;
`tracking/tune_trial.py` implements it with MLflow) is told about each step.

Two private methods are overridden, each because no public hook does the job (see their
docstrings): `_populate_initial_space` and `_build_hypermodel`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras_tuner as kt

from histomlf.config import TrainConfig
from histomlf.tuning import hyperband
from histomlf.tuning.settings import SearchSettings, check_search
from histomlf.tuning.trials import (
    ExecutionResult,
    NoTracking,
    TrialExecutions,
    TrialOutcome,
    TrialStart,
    TrialTracker,
)
from histomlf.tuning.tuner_table import tuner_spec

PROJECT_NAME = "search"
MODEL_WEIGHTS = "histomlf_model.weights.h5"
MODEL_INFO = "histomlf_model.json"


@dataclass
class TrialState:
    """The trial `IdcTuner` is running: its schedule, executions and start time."""

    config: TrainConfig
    executions: TrialExecutions
    started: float = field(default_factory=time.time)

    @property
    def stride(self) -> int:
        """Epoch steps one execution takes: execution k logs epoch e at step k*stride + e."""
        return max(self.config.epochs + self.config.fine_tune_epochs, 1)


class IdcTuner(kt.Tuner):
    """Runs trials of an `IdcHyperModel` for any oracle; see the module docstring."""

    def __init__(self, *args: Any, tracker: TrialTracker | None = None, **kwargs: Any) -> None:
        self.tracker: TrialTracker = tracker or NoTracking()
        self.trial: TrialState | None = None
        super().__init__(*args, **kwargs)

    def _populate_initial_space(self) -> None:
        """Register the whole space, conditional parameters included, in one declaration pass.

        Private, and overridden because Keras Tuner has no public hook for it: the stock
        version builds models until every condition was seen (slow for VGG/ResNet), while
        `SearchSpace.declare` knows all of them without building anything.
        """
        if self.hypermodel is None:
            return
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def on_trial_begin(self, trial: Any) -> None:
        super().on_trial_begin(trial)
        hp = trial.hyperparameters
        values = dict(hp.values)
        config = hyperband.trial_schedule(self.hypermodel.trial_config(hp), values)
        space = self.hypermodel.space
        inactive = set(space.inactive(hp))
        self.tracker.trial_began(TrialStart(
            trial_id=trial.trial_id, tuner_id=str(self.tuner_id), values=values,
            tuned=tuple(space.names),
            params={k: v for k, v in config.as_params().items() if k not in inactive},
            hyperband=hyperband.facts(values),
        ))  # fmt: skip
        self.trial = TrialState(config, TrialExecutions(trial.trial_id))

    def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
        """Keras Tuner's executions, each `fit` handed this trial's `TrialExecutions` and (for
        a Hyperband trial) its epoch budget; then the best execution is kept and reported."""
        state = self.trial
        epochs, initial_epoch = hyperband.budget(trial.hyperparameters.values)
        if epochs is not None:
            kwargs.update(epochs=epochs, initial_epoch=initial_epoch)
        histories = super().run_trial(trial, *args, executions=state.executions, **kwargs)
        settings = self.hypermodel.settings
        best = state.executions.best(settings.objective, settings.objective_direction)
        if best is not None:
            self._keep(trial.trial_id, best)
            results = state.executions.results
            self.tracker.trial_scored(TrialOutcome(
                best=best,
                metrics={**state.executions.mean_metrics(), "decision_threshold": best.threshold,
                         "epochs_run": float(sum(r.fit.epochs_run for r in results)),
                         "trial_seconds": time.time() - state.started},
                step=len(results) * state.stride, executions=len(results),
                early_stopped=any(r.early_stopped for r in results),
            ))  # fmt: skip
        return histories

    def _build_hypermodel(self, hp: Any) -> Any:
        """Build one execution's model: seeded for that execution and, for a Hyperband trial
        that continues another, starting from the other trial's best checkpoint.

        Private, and overridden because no public hook runs between Keras Tuner's
        `clear_session()` (in `_try_build`) and the fit: `HyperModel.build(hp)` sees only `hp`,
        so the execution's seed comes from this tuner's trial state here; and the weight
        carry-over Hyperband needs is what `kt.Hyperband._build_hypermodel` does (load
        `checkpoint.weights.h5` of the `tuner/trial_id` trial), which `IdcTuner` must do itself
        as it wires `HyperbandOracle` to the base `Tuner`. histomlf's models are built when
        created, so the stock version's `build_from_config` step is not needed.
        """
        self.hypermodel.seed(hp, self.trial.executions.next if self.trial else 0)
        model = super()._build_hypermodel(hp)
        parent = hyperband.continues(hp.values)
        if parent is not None:
            model.load_weights(self._get_checkpoint_fname(parent))
        return model

    def on_epoch_end(self, trial: Any, model: Any, epoch: int, logs: Any = None) -> None:
        super().on_epoch_end(trial, model, epoch, logs=logs)
        if self.trial is not None:
            step = self.trial.executions.next * self.trial.stride + epoch
            self.tracker.epoch_ended(step, dict(logs or {}))

    def on_trial_end(self, trial: Any) -> None:
        try:
            super().on_trial_end(trial)
        finally:
            self.trial = None
            self.tracker.trial_ended(trial.trial_id, str(trial.status), trial.message)

    def _keep(self, trial_id: str, best: ExecutionResult) -> None:
        """The best execution's weights and threshold, in the trial's folder."""
        folder = Path(self.get_trial_dir(trial_id))
        best.model.save_weights(folder / MODEL_WEIGHTS)
        (folder / MODEL_INFO).write_text(json.dumps(
            {"threshold": best.threshold, "execution": best.execution,
             "config": best.config.as_params()}, default=str))  # fmt: skip

    def saved_model(self, trial: Any) -> tuple[Any, float] | None:
        """The model `trial` was scored with and its threshold, if its folder is on this machine."""
        folder = Path(self.project_dir) / f"trial_{trial.trial_id}"
        if not (folder / MODEL_WEIGHTS).is_file():
            return None
        info = json.loads((folder / MODEL_INFO).read_text())
        model = self.hypermodel.build(trial.hyperparameters)
        model.load_weights(folder / MODEL_WEIGHTS)
        return model, float(info["threshold"])


def create_oracle(settings: SearchSettings, config: TrainConfig) -> Any:
    """The oracle the tuner table names for `settings.tuner`, with every oracle's arguments."""
    spec = tuner_spec(settings.tuner)
    oracle = getattr(kt.oracles, spec.oracle)(
        objective=kt.Objective(settings.objective, settings.objective_direction),
        seed=config.seed,
        max_retries_per_trial=settings.max_retries_per_trial,
        max_consecutive_failed_trials=settings.max_consecutive_failed_trials,
        **spec.oracle_args(settings, config),
    )
    # Every oracle honours a trial cap; not every one takes it as an argument (Hyperband's).
    oracle.max_trials = settings.max_trials
    return oracle


def create_tuner(
    hypermodel: Any,
    settings: SearchSettings,
    config: TrainConfig,
    directory: Path,
    *,
    tracker: TrialTracker | None = None,
    **kwargs: Any,
) -> IdcTuner:
    """An `IdcTuner` over `hypermodel` in `directory/search` (reloaded if present).

    The settings were checked when the `SearchSpec` was built, before any run opened; the
    check runs again here for callers that build a tuner from loose settings.
    """
    check_search(config, settings)
    return IdcTuner(
        oracle=create_oracle(settings, config),
        hypermodel=hypermodel,
        directory=str(directory),
        project_name=PROJECT_NAME,
        overwrite=False,
        executions_per_trial=settings.executions_per_trial,
        tracker=tracker,
        **kwargs,
    )
