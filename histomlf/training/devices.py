"""Which devices of one machine a fit runs on: `devices=cpu|all|N` -> a `tf.distribute` strategy.

* `cpu` (the default): one replica on the CPU, as before this setting existed (no strategy on
  a machine without GPU; `OneDeviceStrategy("/cpu:0")` where TensorFlow sees GPUs).
* `all`: every visible GPU, one replica each under `MirroredStrategy` (the global batch is
  split across them, gradients are all-reduced); with one GPU, that GPU; without any, the CPU.
* `N`: the first N GPUs under `MirroredStrategy` (N must not exceed the visible GPUs). On a
  machine without GPU, N > 1 splits the CPU into N *logical* devices
  (`tf.config.set_logical_device_configuration`) and mirrors over them: the same cores, so no
  speed-up, but the exact code path of a multi-GPU run, which is how tests exercise it. The
  split is only possible before TensorFlow initialises its runtime (its first op), so
  `workflow.prepare_data` makes it first (building the packed cache runs tf.data); a process
  that already ran TensorFlow ops gets a `DevicesError` saying so.

Multi-host training is not offered: `MultiWorkerMirroredStrategy` is broken under Keras 3
(keras-team/keras#20585); scale beyond one machine with Keras Tuner workers or CV folds.
"""

from __future__ import annotations

from typing import Any

from histomlf.errors import UserError

DEVICE_FORMS = "cpu, all, or a positive number of devices (e.g. 2)"


class DevicesError(UserError, ValueError):
    """The `devices` setting cannot be honoured on this machine or in this process."""


def parse_devices(value: str) -> str | int:
    """`"cpu"`, `"all"` or a positive int from a `devices` setting; anything else raises."""
    text = str(value)
    if text in ("cpu", "all"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise DevicesError(f"devices must be {DEVICE_FORMS}; got {value!r}")


_STRATEGIES: dict[str, Any] = {}


def training_strategy(devices: str) -> Any | None:
    """The strategy a fit runs under for `devices`, or None for TensorFlow's default device.

    Cached per setting: the first call (before any TensorFlow op, for a CPU split) creates it,
    later calls in the same process return the same object.
    """
    key = str(devices)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = _make_strategy(parse_devices(key))
    return _STRATEGIES[key]


def replicas(strategy: Any | None) -> int:
    """How many replicas a fit under `strategy` runs (1 without a strategy)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def check_replica_batches(batch_size: int, split_rows: dict[str, int], count: int) -> None:
    """Refuse batches that cannot split evenly over `count` replicas, in one line.

    Keras 3 builds a distributed model by reducing the first batch of each dataset across the
    replicas, which fails unless that batch splits evenly (23 patches as 12 + 11: an `AddN`
    shape error deep in `fit`). So the batch size must be a multiple of the replicas and every
    split must fill at least one batch.
    """
    if count <= 1:
        return
    if batch_size % count:
        raise DevicesError(
            f"batch_size {batch_size} must be a multiple of the {count} replicas of devices"
        )
    for name, rows in split_rows.items():
        if rows < batch_size:
            raise DevicesError(
                f"the {name} split has {rows} patches, fewer than one batch of {batch_size}: "
                f"{count} replicas need at least one full batch (lower batch_size)"
            )


def _make_strategy(choice: str | int) -> Any | None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")  # reads the machine, does not initialise TF
    if choice == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0") if gpus else None
    if choice == "all":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else None
    count = int(choice)
    if gpus:
        if count > len(gpus):
            raise DevicesError(f"devices={count}, but TensorFlow sees only {len(gpus)} GPU(s)")
        if count == 1:
            return None
        return tf.distribute.MirroredStrategy([f"/gpu:{index}" for index in range(count)])
    if count == 1:
        return None
    split_cpu(count)
    return tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(count)])


def split_cpu(count: int) -> None:
    """Make the CPU appear as `count` logical devices (before TensorFlow initialises)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu) or []
    if len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        raise DevicesError(
            f"devices={count} splits the CPU into {count} logical devices, which TensorFlow "
            "allows only before its first op, and this process already ran one: start training "
            "in a fresh process"
        ) from error
