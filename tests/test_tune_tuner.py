"""`IdcTuner`: Hyperband's weight carry-over, per-execution seeds, the trial lifecycle it reports.

The carry-over is histomlf's own (`IdcTuner._build_hypermodel`, since it wires
`HyperbandOracle` to the base `Tuner`): a trial with `tuner/trial_id` must start from that
trial's best checkpoint (`trial_<id>/checkpoint.weights.h5`, the name Keras Tuner's
`SaveBestEpoch` writes), a trial without one from a fresh, seeded initialisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histomlf.config import TrainConfig
from histomlf.tuning.hypermodel import IdcHyperModel
from histomlf.tuning.settings import SearchSettings
from histomlf.tuning.space import SearchSpace
from histomlf.tuning.trials import TrialExecutions
from histomlf.tuning.tuners import IdcTuner, TrialState, create_tuner

BASE = TrainConfig(model="simplecnn", weights="none", epochs=1, batch_size=32, dense_units=8,
                   augment="none", early_stopping_patience=0, max_samples=100, explain=False)
SPACE = {"dropout": {"min": 0.0, "max": 0.5, "step": 0.1}}


def tuner_over(tmp_path: Path, settings: SearchSettings, data=None, tracker=None) -> IdcTuner:
    space = SearchSpace.from_mapping(settings.space, BASE)
    hypermodel = IdcHyperModel(BASE, settings, space, data=lambda: data,
                               work_root=tmp_path / "work")  # fmt: skip
    return create_tuner(hypermodel, settings, BASE, tmp_path, tracker=tracker)


def weights_of(model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_continued_hyperband_trial_starts_from_its_parents_checkpoint(tmp_path: Path) -> None:
    settings = SearchSettings(tuner="hyperband", max_epochs=2, factor=2, space=SPACE)
    tuner = tuner_over(tmp_path, settings)
    hp = tuner.oracle.get_space()
    parent = tuner._try_build(hp)
    rng = np.random.default_rng(0)
    parent.set_weights([rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in weights_of(parent)])
    saved = weights_of(parent)
    parent.save_weights(Path(tuner.get_trial_dir("0")) / "checkpoint.weights.h5")

    continued = hp.copy()
    continued.values.update({"tuner/trial_id": "0", "tuner/initial_epoch": 1, "tuner/epochs": 2,
                             "tuner/bracket": 1, "tuner/round": 1})  # fmt: skip
    assert same(weights_of(tuner._try_build(continued)), saved)
    fresh = weights_of(tuner._try_build(hp))
    assert not same(fresh, saved)
    assert same(weights_of(tuner._try_build(hp)), fresh)  # seeded: the same start each time


def test_each_execution_of_a_trial_starts_from_its_own_seed(tmp_path: Path) -> None:
    tuner = tuner_over(tmp_path, SearchSettings(space=SPACE))
    hp = tuner.oracle.get_space()
    tuner.trial = TrialState(BASE, TrialExecutions("0"))
    first = weights_of(tuner._try_build(hp))
    tuner.trial.executions.results.append(None)  # as if execution 0 had finished
    second = weights_of(tuner._try_build(hp))
    assert not same(first, second)
    tuner.trial = None
    assert same(weights_of(tuner._try_build(hp)), first)


class Recorder:
    """A `TrialTracker` that writes down what the tuner tells it."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def trial_began(self, start) -> None:
        self.events.append(("began", start.trial_id, start.params["dropout"] is not None))

    def epoch_ended(self, step: int, logs: dict) -> None:
        self.events.append(("epoch", step, "val_roc_auc" in logs))

    def trial_scored(self, outcome) -> None:
        self.events.append(("scored", outcome.step, outcome.executions,
                            sorted(outcome.metrics)[:2]))  # fmt: skip

    def trial_ended(self, trial_id: str, status: str, message: str | None) -> None:
        self.events.append(("ended", trial_id, status))


@pytest.mark.slow
def test_the_tuner_reports_a_trials_lifecycle_and_keeps_its_best_execution(
    tmp_path: Path, idc_sample: Path
) -> None:
    from histomlf.training.workflow import prepare_data

    config = BASE.replace(data_dir=str(idc_sample))
    data = prepare_data(config)
    recorder = Recorder()
    settings = SearchSettings(max_trials=1, executions_per_trial=2, space=SPACE)
    tuner = tuner_over(tmp_path, settings, data=data, tracker=recorder)
    before = set(vars(tuner.hypermodel))
    tuner.search()
    assert recorder.events == [
        ("began", "0", True),
        ("epoch", 0, True),  # execution 0, epoch 0
        ("epoch", 1, True),  # execution 1, epoch 0: stride 1
        ("scored", 2, 2, ["decision_threshold", "epochs_run"]),
        ("ended", "0", "COMPLETED"),
    ]
    assert tuner.trial is None
    assert set(vars(tuner.hypermodel)) == before  # the hypermodel keeps no trial state
    (trial,) = tuner.oracle.trials.values()
    model, threshold = tuner.saved_model(trial)
    assert 0.0 <= threshold <= 1.0 and model.count_params() > 0
    for execution in (0, 1):
        assert (tmp_path / "work" / "trial_0" / f"execution_{execution}").is_dir()
