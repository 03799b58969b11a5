"""How `saved_hyperband_search/` was made: a Hyperband search stopped after its first round.

Run on commit 72ff698 (before the tuner moved to one `Tuner` subclass) with
`HISTOMLF_CACHE=/tmp/c PYTHONPATH=. python tests/data/saved_hyperband_search/make_fixture.py
OUT /work/shared/idc-sample`, then `OUT/work/histomlf_search.json` and every `*.json` under
`OUT/work/search/` were copied here. The weight files (`checkpoint.weights.h5`,
`histomlf_model.weights.h5`, 1.2 MB each) were left out; `tests/test_tune_saved_search.py`
writes them under the same names.
"""

import json
import sys
from pathlib import Path

from histomlf.training.workflow import prepare_data
from histomlf.tuning.hypermodel import IdcHyperModel
from histomlf.tuning.settings import SearchSpec, load_search
from histomlf.tuning.space import SearchSpace
from histomlf.tuning.tuners import create_tuner


def main() -> None:
    out, sample = Path(sys.argv[1]), sys.argv[2]
    config, settings = load_search("tune_smoke", {
        "data_dir": sample, "tuner": "hyperband", "max_trials": 2, "max_epochs": 2,
        "factor": 2, "dense_units": 8, "max_samples": 100,
    })  # fmt: skip
    settings = settings.replace(space={
        "learning_rate": {"min": 1e-4, "max": 1e-2, "sampling": "log"},
        "dropout": {"min": 0.0, "max": 0.5, "step": 0.1},
    })  # fmt: skip
    spec = SearchSpec(config, settings)
    directory = out / "work"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "histomlf_search.json").write_text(json.dumps(spec.to_dict(), default=str))
    data = prepare_data(config)
    space = SearchSpace.from_mapping(settings.space, config)
    hypermodel = IdcHyperModel(config, settings, space, data=lambda: data,
                               work_root=directory / "work")  # fmt: skip
    create_tuner(hypermodel, settings, config, directory).search()


if __name__ == "__main__":
    main()
