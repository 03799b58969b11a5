"""`devices`: the setting is checked up front, and `devices=2` on a machine without GPU trains
under MirroredStrategy on two logical CPU devices about as well as one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from histomlf.config import ConfigError, TrainConfig
from histomlf.training.devices import DevicesError, check_replica_batches, parse_devices
from histomlf.tuning.settings import SearchSettings
from histomlf.tuning.tuners import create_tuner

# A fresh process: the CPU can only be split into logical devices before TensorFlow's first op.
# It lists the physical devices first, as the tracked run's environment logging does.
TWO_REPLICAS_SCRIPT = """
import json, sys
from pathlib import Path

import tensorflow as tf

from histomlf.config import TrainConfig
from histomlf.training.devices import replicas, training_strategy
from histomlf.training.workflow import prepare_data, train_and_score

tf.config.list_physical_devices()
sample, work = sys.argv[1], Path(sys.argv[2])
max_samples, epochs = int(sys.argv[3]), int(sys.argv[4])
base = TrainConfig(data_dir=sample, max_samples=max_samples, epochs=epochs, batch_size=64,
                   early_stopping_patience=0, seed=42)
data = prepare_data(base.replace(devices="2"))  # as `histomlf train --devices 2` does
result = {}
for devices in ("2", "cpu"):
    outcome = train_and_score(base.replace(devices=devices), work_dir=work / devices, data=data)
    variable = outcome.model.trainable_variables[0].value
    result[devices] = {
        "replicas": replicas(training_strategy(devices)),
        "variable_copies": len(getattr(variable, "values", (variable,))),
        "epochs_run": outcome.fit.epochs_run,
        "test_roc_auc": outcome.evaluation.splits["test"].metrics["roc_auc"],
        "seconds_fit": outcome.seconds["fit"],
    }
result["logical_cpus"] = len(tf.config.list_logical_devices("CPU"))
print(json.dumps(result))
"""
MAX_SAMPLES = 600
EPOCHS = 2
AUC_TOLERANCE = 0.03


@pytest.mark.parametrize("value", ["cpu", "all", "1", "2", "16"])
def test_device_forms_are_accepted(value: str) -> None:
    assert TrainConfig(devices=value).devices == value
    assert parse_devices(value) in ("cpu", "all", int(value) if value.isdigit() else None)


@pytest.mark.parametrize("value", ["gpu", "0", "-1", "2.5", "", "CPU", "all "])
def test_bad_devices_is_one_line_naming_key_value_and_forms(value: str) -> None:
    with pytest.raises(ConfigError) as error:
        TrainConfig(devices=value)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("devices must be cpu, all or a positive count")
    assert repr(value) in message
    with pytest.raises(DevicesError, match="devices must be"):
        parse_devices(value)


def test_batches_must_split_evenly_over_replicas() -> None:
    check_replica_batches(64, {"train": 420, "val": 64}, 2)
    check_replica_batches(63, {"train": 10, "val": 1}, 1)  # one device: anything goes
    with pytest.raises(DevicesError, match="batch_size 63 must be a multiple of the 2 replicas"):
        check_replica_batches(63, {"train": 420, "val": 90}, 2)
    with pytest.raises(DevicesError, match="the val split has 23 patches, fewer than one batch"):
        check_replica_batches(32, {"train": 420, "val": 23}, 2)


def test_tuning_refuses_devices_instead_of_ignoring_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="devices=2 applies to train and cv"):
        create_tuner(None, SearchSettings(), TrainConfig(devices="2"), tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_logical_cpus_train_like_one(tmp_path: Path, idc_sample: Path) -> None:
    env = {**os.environ, "HISTOMLF_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS_SCRIPT, str(idc_sample), str(tmp_path / "work"),
         str(MAX_SAMPLES), str(EPOCHS)],
        capture_output=True, text=True, timeout=560, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    two, one = result["2"], result["cpu"]
    print(f"\ndevices=2 vs cpu: {json.dumps(result)}")
    assert result["logical_cpus"] == 2
    assert (two["replicas"], two["variable_copies"]) == (2, 2)
    assert (one["replicas"], one["variable_copies"]) == (1, 1)
    assert two["epochs_run"] == one["epochs_run"] == EPOCHS
    assert abs(two["test_roc_auc"] - one["test_roc_auc"]) <= AUC_TOLERANCE
