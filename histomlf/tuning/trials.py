"""A trial's record in plain Python: what the tuner, the hypermodel and a tracker pass around.

`IdcHyperModel.fit` appends an `ExecutionResult` per execution to the trial's
`TrialExecutions`; `IdcTuner` tells its `TrialTracker` a `TrialStart` when a trial begins and a
`TrialOutcome` once it is scored. No Keras Tuner, no MLflow: `tracking/` implements the tracker
from these types without importing TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from histomlf.config import TrainConfig


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


@dataclass
class TrialExecutions:
    """The executions of one trial so far; the next one's index is how many there are.

    The tuner passes one to every `fit` of a trial (Keras Tuner hands `fit` the same keyword
    arguments for each execution), and each `fit` appends its result.
    """

    trial_id: str
    results: list[ExecutionResult] = field(default_factory=list)

    @property
    def next(self) -> int:
        return len(self.results)

    def best(self, objective: str, direction: str) -> ExecutionResult | None:
        """The best execution by `objective` (NaN never wins)."""
        sign = 1 if direction == "max" else -1

        def key(result: ExecutionResult) -> float:
            value = result.metrics.get(objective, math.nan)
            return -math.inf if math.isnan(value) else sign * value

        return max(self.results, key=key, default=None)

    def mean_metrics(self) -> dict[str, float]:
        """Metrics averaged over executions: what the oracle scores the trial on."""
        if not self.results:
            return {}
        count = len(self.results)
        return {k: sum(r.metrics[k] for r in self.results) / count for k in self.results[0].metrics}



@dataclass(frozen=True)
class TrialStart:
    """What a trial is, as it begins: its values, the config it trains with, Hyperband's facts."""

    trial_id: str
    tuner_id: str
    values: dict[str, Any]
    tuned: tuple[str, ...]
    params: dict[str, Any]
    hyperband: dict[str, str]


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial produced: its best execution and the trial's metrics at `step`."""

    best: ExecutionResult
    metrics: dict[str, float]
    step: int
    executions: int
    early_stopped: bool


class TrialTracker(Protocol):
    """What records a search's trials (`tracking.tune_trial.MlflowTrialTracker`)."""

    def trial_began(self, start: TrialStart) -> None: ...

    def epoch_ended(self, step: int, logs: dict[str, Any]) -> None: ...

    def trial_scored(self, outcome: TrialOutcome) -> None: ...

    def trial_ended(self, trial_id: str, status: str, message: str | None) -> None: ...


class NoTracking:
    """A `TrialTracker` that records nothing (a search without MLflow: tests, benchmarks)."""

    def trial_began(self, start: TrialStart) -> None:
        pass

    def epoch_ended(self, step: int, logs: dict[str, Any]) -> None:
        pass

    def trial_scored(self, outcome: TrialOutcome) -> None:
        pass

    def trial_ended(self, trial_id: str, status: str, message: str | None) -> None:
        pass
