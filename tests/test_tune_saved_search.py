"""A search folder saved by earlier code still resumes: `tests/data/saved_hyperband_search/`.

The fixture is a Hyperband search (max_epochs 2, factor 2) that commit 72ff698 stopped after its
first round (`make_fixture.py` there says how): Keras Tuner's `oracle.json`, `tuner0.json` and
`trial_*/trial.json` under `<dir>/search`, histomlf's `histomlf_model.json` beside them and the
search's `histomlf_search.json`. Its weight files are written here under the names that code
used, so a rename would fail this test. Resumed with one more trial, the oracle continues the
better first-round trial for its second epoch from that trial's checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from histomlf.training.workflow import prepare_data
from histomlf.tuning.hypermodel import IdcHyperModel
from histomlf.tuning.settings import SearchSpec
from histomlf.tuning.space import SearchSpace
from histomlf.tuning.tuners import create_tuner

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "data" / "saved_hyperband_search"
# The file names the fixture's code wrote; literal on purpose (renaming them breaks old searches).
CHECKPOINT = "checkpoint.weights.h5"
MODEL_WEIGHTS = "histomlf_model.weights.h5"


def saved_search(tmp_path: Path, sample: Path) -> tuple[SearchSpec, Path]:
    directory = tmp_path / "saved"
    shutil.copytree(FIXTURE, directory, ignore=shutil.ignore_patterns("*.py"))
    spec = SearchSpec.from_dict(json.loads((directory / "histomlf_search.json").read_text()))
    return SearchSpec(spec.config.replace(data_dir=str(sample)),
                      spec.settings.replace(max_trials=3)), directory  # fmt: skip


def test_a_saved_hyperband_search_resumes_from_its_checkpoints(tmp_path: Path,
                                                               idc_sample: Path) -> None:
    spec, directory = saved_search(tmp_path, idc_sample)
    data = prepare_data(spec.config)
    space = SearchSpace.from_mapping(spec.settings.space, spec.config)
    hypermodel = IdcHyperModel(spec.config, spec.settings, space, data=lambda: data,
                               work_root=directory / "work")  # fmt: skip
    tuner = create_tuner(hypermodel, spec.settings, spec.config, directory)
    assert sorted(tuner.oracle.trials) == ["0", "1"]
    written = {}
    for trial_id, trial in tuner.oracle.trials.items():
        model = hypermodel.build(trial.hyperparameters)
        rng = np.random.default_rng(int(trial_id))
        model.set_weights([rng.normal(0, 0.05, w.shape).astype(w.dtype)
                           for w in model.get_weights()])  # fmt: skip
        for name in (CHECKPOINT, MODEL_WEIGHTS):
            model.save_weights(directory / "search" / f"trial_{trial_id}" / name)
        written[trial_id] = model.get_weights()

    tuner.search()

    trials = tuner.oracle.trials
    assert sorted(trials) == ["0", "1", "2"]
    assert all(t.status == "COMPLETED" for t in trials.values())
    continued = trials["2"].hyperparameters.values
    assert (continued["tuner/trial_id"], continued["tuner/initial_epoch"],
            continued["tuner/epochs"]) == ("0", 1, 2)  # fmt: skip
    assert (directory / "search" / "trial_2" / MODEL_WEIGHTS).is_file()
    model, threshold = tuner.saved_model(trials["0"])
    assert threshold == json.loads(
        (FIXTURE / "search" / "trial_0" / "histomlf_model.json").read_text())["threshold"]
    for got, expected in zip(model.get_weights(), written["0"], strict=True):
        np.testing.assert_array_equal(got, expected)
