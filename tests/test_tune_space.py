"""The search space and settings: parsing, conditions, refusals, Hyperband's epoch mapping."""

from __future__ import annotations

from pathlib import Path

import keras_tuner as kt
import pytest

from histomlf.config import ConfigError, TrainConfig
from histomlf.training.fit import HISTORY_KEYS
from histomlf.tuning.hyperband import outcomes, schedule
from histomlf.tuning.settings import KERAS_EPOCH_METRICS, SearchSettings, load_search
from histomlf.tuning.space import SearchSpace

BASE = TrainConfig()
STUDY_SPACE = {
    "model": ["simplecnn", "vgg16", "resnet50"],
    "learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
    "dropout": {"min": 0.1, "max": 0.5, "step": 0.1},
    "dense_units": [64, 128],
    "fine_tune_layers": {"min": 4, "max": 16, "step": 4},
    "optimizer": ["adam", "sgd"],
    "augment": ["none", "light"],
    "balance": ["class_weight", "undersample"],
}


def declared(space: SearchSpace, **values) -> kt.HyperParameters:
    hp = kt.HyperParameters()
    hp.values.update(values)
    space.declare(hp)
    return hp


def test_study_space_declares_every_kind() -> None:
    space = SearchSpace.from_mapping(STUDY_SPACE, BASE)
    hp = declared(space)
    kinds = {p.name: type(p).__name__ for p in hp.space}
    assert kinds["model"] == "Choice" and kinds["learning_rate"] == "Float"
    assert kinds["dense_units"] == "Choice" and kinds["fine_tune_layers"] == "Int"
    assert hp.space[[p.name for p in hp.space].index("learning_rate")].sampling == "log"


def test_fine_tune_layers_is_conditional_on_a_pretrainable_model() -> None:
    space = SearchSpace.from_mapping(STUDY_SPACE, BASE)
    simple = declared(space, model="simplecnn")
    assert "fine_tune_layers" not in space.active_values(simple)
    assert space.inactive(simple) == ["fine_tune_layers"]
    vgg = declared(space, model="vgg16")
    assert space.active_values(vgg)["fine_tune_layers"] == 4
    config = space.apply(BASE, space.active_values(vgg))
    assert config.model == "vgg16" and config.fine_tune_layers == 4


def test_explicit_condition_and_parent_order() -> None:
    space = SearchSpace.from_mapping({
        "dropout": {"min": 0.1, "max": 0.3, "when": {"optimizer": ["sgd"]}},
        "optimizer": ["adam", "sgd"],
    }, BASE)
    assert space.names == ("optimizer", "dropout")  # parent first, whatever the YAML order
    assert "dropout" not in space.active_values(declared(space, optimizer="adam"))
    assert "dropout" in space.active_values(declared(space, optimizer="sgd"))


def test_a_fixed_scratch_model_cannot_tune_fine_tuning() -> None:
    with pytest.raises(ConfigError, match="nothing to fine-tune"):
        SearchSpace.from_mapping({"fine_tune_layers": [2, 4]}, BASE)
    space = SearchSpace.from_mapping({"fine_tune_layers": [2, 4]}, BASE.replace(model="vgg16"))
    assert space.params[0].when is None


@pytest.mark.parametrize(("space", "message"), [
    ({"seed": [1, 2]}, "cannot tune seed"),
    ({"data_dir": ["a"]}, "cannot tune data_dir"),
    ({"model": ["simplecnn", "alexnet"]}, "unknown model 'alexnet'"),
    ({"augment": ["light", "heavy"]}, "not one of none, light, strong"),
    ({"dropout": {"min": 0.2, "max": 1.5}}, "dropout must be in"),
    ({"learning_rate": {"min": 0.0, "max": 0.1, "sampling": "log"}}, "needs min > 0"),
    ({"learning_rate": {"min": 0.1, "max": 0.01}}, "min must be below max"),
    ({"optimizer": {"min": 1, "max": 2}}, "not numeric"),
    ({"dense_units": {"choices": [1]}}, "unknown spec key"),
    ({"dropout": {"min": 0.1, "max": 0.3, "when": {"optimizer": ["sgd"]}}}, "must itself be tuned"),
    ({}, "empty"),
])  # fmt: skip
def test_bad_spaces_are_one_line_errors(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        SearchSpace.from_mapping(space, BASE)
    assert "\n" not in str(error.value)


def test_settings_check_names_and_infer_direction() -> None:
    assert SearchSettings().objective_direction == "max"
    assert SearchSettings(objective="val_loss").objective_direction == "min"
    assert SearchSettings(objective="val_ece").objective_direction == "min"
    for bad in ({"tuner": "optuna"}, {"objective": "roc_auc"}, {"log_models": "some"},
                {"max_trials": 0}, {"factor": 1}, {"direction": "up"}):
        with pytest.raises(ConfigError):
            SearchSettings(**bad)


def test_default_objective_is_a_keras_history_key() -> None:
    """Keras Tuner checkpoints the best epoch on the objective: histomlf's compiled names."""
    assert set(KERAS_EPOCH_METRICS) == set(HISTORY_KEYS)
    assert SearchSettings().objective.removeprefix("val_") in HISTORY_KEYS


def test_load_search_splits_train_and_search_overrides(tmp_path: Path) -> None:
    config, settings = load_search("tune_smoke", {"tuner": "hyperband", "max_trials": "5",
                                                  "epochs": 2, "dropout": None})
    assert (settings.tuner, settings.max_trials, config.epochs) == ("hyperband", 5, 2)
    assert set(settings.space) == {"learning_rate", "dropout", "dense_units"}
    study_config, study = load_search("tuner_study")
    SearchSpace.from_mapping(study.space, study_config)
    assert study.tuner == "bayesian" and "fine_tune_layers" in study.space
    plain = tmp_path / "plain.yaml"
    plain.write_text("model: simplecnn\n")
    with pytest.raises(ConfigError, match="no search.space"):
        load_search(str(plain))
    epochs = tmp_path / "hb.yaml"
    epochs.write_text("search:\n  tuner: hyperband\n  space:\n    epochs: [1, 2]\n")
    with pytest.raises(ConfigError, match="hyperband sets each trial's epochs"):
        load_search(str(epochs))


@pytest.mark.parametrize(("epochs", "fine_tune", "budget", "initial", "expected"), [
    (3, 0, 5, 0, (5, 0)),      # no fine-tuning: the whole budget is phase 1
    (3, 0, 5, 2, (5, 0)),      # continued: phase 1 resumes at epoch 2
    (3, 6, 2, 0, (2, 0)),      # budget inside phase 1
    (3, 6, 9, 0, (3, 6)),      # 3 head epochs, 6 fine-tuning
    (3, 6, 9, 2, (3, 6)),      # continued inside phase 1: finish it, then fine-tune
    (3, 6, 9, 5, (3, 4)),      # continued inside phase 2: 4 more fine-tuning epochs
])  # fmt: skip
def test_hyperband_budget_maps_onto_the_two_phases(epochs, fine_tune, budget, initial,
                                                   expected) -> None:
    config = schedule(BASE.replace(epochs=epochs, fine_tune_epochs=fine_tune), budget, initial)
    assert (config.epochs, config.fine_tune_epochs) == expected
    assert schedule(BASE, None) == BASE


def test_hyperband_outcomes_follow_the_brackets() -> None:
    """Bracket 1 of max_epochs 2, factor 2: trials 0 and 1 in round 0, trial 2 continues 0."""
    first = {"tuner/bracket": 1, "tuner/round": 0, "tuner/epochs": 1, "tuner/initial_epoch": 0}
    trials = [("0", first), ("1", first), ("2", {**first, "tuner/round": 1, "tuner/epochs": 2,
                                                 "tuner/initial_epoch": 1, "tuner/trial_id": "0"}),
              ("3", {"dropout": 0.1})]  # fmt: skip
    assert outcomes(trials) == {"0": "promoted", "1": "discarded", "2": "final"}
