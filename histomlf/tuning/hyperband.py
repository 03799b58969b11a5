"""Hyperband's facts in one place, without Keras Tuner.

Keras Tuner's `HyperbandOracle` writes its bookkeeping into each trial's hyperparameters: the
epoch budget (`tuner/epochs`, the trial's last epoch), where a continued trial starts
(`tuner/initial_epoch`), the trial it continues (`tuner/trial_id`, whose best checkpoint it
starts from), its bracket and its round. A tuner using that oracle must act on them itself
(the oracle's docstring says so): `tuning.tuners.IdcTuner` passes the budget to `fit` and
loads the continued trial's weights. Here are those keys, what they are called in histomlf's
run record (`histomlf.hyperband.<name>`), how a budget maps onto histomlf's two training phases,
what a trial's fate was, and the oracle's arguments and checks for the tuner table.

The `settings` arguments are `SearchSettings` (not imported: settings imports the tuner table,
which imports this module).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from histomlf.config import TrainConfig
from histomlf.errors import ConfigError

PREFIX = "tuner/"
EPOCHS = "tuner/epochs"
INITIAL_EPOCH = "tuner/initial_epoch"
CONTINUES = "tuner/trial_id"
BRACKET = "tuner/bracket"
ROUND = "tuner/round"
NAMES = {BRACKET: "bracket", ROUND: "round", EPOCHS: "epochs", INITIAL_EPOCH: "initial_epoch",
         CONTINUES: "continues"}  # fmt: skip
"""Each key's name in the run record: `histomlf.hyperband.<name>` on a trial's run."""
OUTCOMES = ("promoted", "discarded", "final")


def oracle_args(settings: Any, config: TrainConfig) -> dict[str, Any]:
    """`HyperbandOracle`'s own arguments (it takes no `max_trials`; the tuner sets the cap)."""
    return {
        "max_epochs": settings.epoch_budget(config),
        "factor": settings.factor,
        "hyperband_iterations": settings.hyperband_iterations,
    }


def check(settings: Any, config: TrainConfig) -> None:
    """Hyperband sets each trial's epochs, so the space may not tune them."""
    tuned = sorted({"epochs", "fine_tune_epochs"} & set(settings.space))
    if tuned:
        raise ConfigError(
            f"hyperband sets each trial's epochs itself; remove {', '.join(tuned)} "
            "from search.space"
        )
    if settings.epoch_budget(config) < 1:
        raise ConfigError("hyperband needs max_epochs >= 1")


def budget(values: Mapping[str, Any]) -> tuple[int | None, int]:
    """(last epoch, first epoch) a trial's values give; (None, 0) outside Hyperband."""
    epochs = values.get(EPOCHS)
    return (None if epochs is None else int(epochs)), int(values.get(INITIAL_EPOCH, 0))


def continues(values: Mapping[str, Any]) -> str | None:
    """The id of the trial this one continues (its weights are the start), if any."""
    parent = values.get(CONTINUES)
    return None if parent is None else str(parent)


def facts(values: Mapping[str, Any]) -> dict[str, str]:
    """The Hyperband values a trial has, by their run-record name."""
    return {name: str(values[key]) for key, name in NAMES.items() if key in values}


def column(key: str) -> str:
    """A hyperparameter's leaderboard column: `tuner/epochs` -> `hyperband_epochs`."""
    return key.replace(PREFIX, "hyperband_")


def schedule(config: TrainConfig, epochs: int | None, initial_epoch: int = 0) -> TrainConfig:
    """The config one trial trains with, given its epoch budget (None: as configured).

    The budget counts both phases: phase 1 takes the first `config.epochs` epochs and, when
    fine-tuning is on (`fine_tune_epochs > 0`), phase 2 the rest; without fine-tuning all of it
    is phase 1. A continued trial (`initial_epoch` > 0) resumes the schedule there.
    """
    if epochs is None:
        return config
    if config.fine_tune_epochs <= 0:
        return config.replace(epochs=epochs, fine_tune_epochs=0)
    head = max(1, min(config.epochs, epochs))
    return config.replace(epochs=head, fine_tune_epochs=max(0, epochs - max(head, initial_epoch)))


def trial_schedule(config: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """`schedule` with the budget a trial's values give."""
    return schedule(config, *budget(values))


def outcomes(trials: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """Each Hyperband trial's fate, by trial id, from (trial id, values) pairs.

    `promoted`: a later trial continues it; `discarded`: not continued before its bracket's
    last round; `final`: it trained in the last round. Trials without a round are left out.
    """
    trials = list(trials)
    promoted = {continues(values) for _, values in trials} - {None}
    fates = {}
    for trial_id, values in trials:
        if ROUND not in values:
            continue
        if trial_id in promoted:
            fates[trial_id] = "promoted"
        elif int(values[ROUND]) < int(values[BRACKET]):
            fates[trial_id] = "discarded"
        else:
            fates[trial_id] = "final"
    return fates
