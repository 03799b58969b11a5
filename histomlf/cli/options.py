"""Click options generated from `TrainConfig`, so the CLI, MLproject and YAML share one name list.

Each field gets a kebab-case option plus its snake_case twin (`--fine-tune-epochs` and
`--fine_tune_epochs`): `mlflow run -P fine_tune_epochs=2` passes undeclared parameters as
`--fine_tune_epochs 2`. Every option defaults to None, meaning "as the experiment file says".
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

import click

from histomlf.config import DEFAULT_EXPERIMENT, TrainConfig
from histomlf.evaluation.metrics import METRICS
from histomlf.models.backbones import backbone_names

HELP = {
    "model": "backbone: " + ", ".join(backbone_names()),
    "weights": "imagenet | none | path to a backbone weights file",
    "image_size": "input size the model resizes patches to (>= 32)",
    "epochs": "phase-1 epochs (head only when the backbone is pretrained)",
    "fine_tune_epochs": "phase-2 epochs with the top backbone layers unfrozen",
    "fine_tune_layers": "how many top backbone layers phase 2 unfreezes (0: all)",
    "learning_rate": "phase-1 learning rate",
    "fine_tune_learning_rate": "phase-2 learning rate",
    "optimizer": "adam | adamw | sgd | rmsprop",
    "lr_schedule": "constant | cosine (decay over each phase's steps to 5 %)",
    "batch_size": "patches per batch",
    "dropout": "dropout rate of the head",
    "dense_units": "units of the head's hidden layer (0: none)",
    "augment": "none | light (flips/rotations) | strong (+ HED stain jitter 0.05) | stronger "
    "(+ HED jitter 0.2); training split only",
    "mixup": "mixup alpha: Beta(alpha, alpha) mixing of training patches and labels (0: off)",
    "label_smoothing": "binary label smoothing of the training loss, in [0, 0.5) (0: off)",
    "weight_decay": "decoupled weight decay per step x learning rate (0: optimizer default, "
    "none except adamw's 0.004)",
    "tta": "none | dihedral8 (score the mean over the 8 flips/rotations; served model too)",
    "snapshots": "snapshot ensemble: N > 1 splits the epochs into N cosine cycles (warm "
    "restarts) and serves the mean of the N cycle-end models as one model (1: off)",
    "balance": "class_weight | undersample | none (training split only)",
    "early_stopping_patience": "epochs without val ROC-AUC gain before stopping (0: off)",
    "threshold_policy": "youden | best_f1 | sensitivity:<x> | fixed:<t>, chosen on val",
    "gate_metric": "test-split metric the registry gate compares: " + ", ".join(METRICS),
    "max_samples": "use at most this many patches in total, stratified (0: all)",
    "seed": "random seed (splits, shuffling, weights)",
    "data_dir": "dataset folder in the Kaggle layout (empty: $HISTOMLF_DATA_DIR or synthetic)",
    "patch_mpp": "µm/px of the training patches, recorded with the model for slide scoring "
    "(Kaggle IDC: 4, the papers' 40x downsampled 16x; not measured)",
    "val_fraction": "fraction of patients for validation",
    "test_fraction": "fraction of patients for test",
    "register_as": "register the model under this name and apply the champion gate",
    "packed_cache": "decode PNGs once into a packed uint8 cache (true/false)",
    "explain": "log Grad-CAM overlays and patient maps of the test split (true/false)",
    "devices": "cpu | all (every GPU) | N (N GPUs, or N logical CPU devices without GPU)",
}

SKIP = {"experiment"}

experiment_option = click.option(
    "--experiment",
    "-e",
    default=DEFAULT_EXPERIMENT,
    show_default=True,
    help="experiment file or name under experiments/",
)
"""The `--experiment` option of `train` and `cv` (the experiment file, not MLflow's)."""


def config_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(TrainConfig) if f.name not in SKIP]


def train_config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command with one option per `TrainConfig` field."""
    hints = typing.get_type_hints(TrainConfig)
    for field in reversed(config_fields()):
        kebab = "--" + field.name.replace("_", "-")
        names = [kebab] if "_" not in field.name else [kebab, f"--{field.name}"]
        kind = {int: int, float: float, bool: str, str: str}.get(hints[field.name], str)
        command = click.option(
            *names, field.name, type=kind, default=None, help=HELP.get(field.name, field.name)
        )(command)
    return command


def overrides_from(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user actually gave; an empty string (an unset MLproject default) is unset."""
    names = {f.name for f in config_fields()}
    return {k: v for k, v in options.items() if k in names and v not in (None, "")}


def load_checked_config(
    experiment: str, options: dict[str, Any]
) -> tuple[TrainConfig, dict[str, Any]]:
    """Load an experiment plus CLI overrides; a bad value is one line before any run opens."""
    from histomlf.config import ConfigError, load_experiment

    try:
        config, sections = load_experiment(
            experiment, overrides_from(options), sections=("search",)
        )
    except ConfigError as error:
        raise click.ClickException(str(error)) from error
    return config, sections

