"""Experiment configuration: frozen dataclasses and `load_experiment(yaml, overrides)`.

An experiment file (`experiments/<name>.yaml`) holds only what differs from `TrainConfig`'s
defaults; command-line / `mlflow run -P` overrides come last and win. Every value is checked
when a `TrainConfig` is built — its type, its range, and names other tables own (backbone,
threshold policy, gate metric) — so a typo is a one-line error naming the key, the value and
the allowed values before any data is read, whether the config comes from the CLI, a YAML file
or Python.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from histomlf.choices import (
    AUGMENT_CHOICES,
    BALANCE_CHOICES,
    CALIBRATION_CHOICES,
    LR_SCHEDULE_CHOICES,
    OPTIMIZER_CHOICES,
    TTA_CHOICES,
)
from histomlf.errors import ConfigError

EXPERIMENTS_DIR_NAME = "experiments"
DEFAULT_EXPERIMENT = "default"
# What the default becomes when no data is given: a minutes-long run on synthetic patches.
DEMO_EXPERIMENT = "demo"
DATA_DIR_ENV = "HISTOMLF_DATA_DIR"
# µm/px of the Kaggle IDC patches: 40x scans (~0.25 µm/px) downsampled 16x to 2.5x before
# cutting, as the papers describe (Cruz-Roa 2014; Janowczyk & Madabhushi 2016). The papers'
# figure, not a measurement; another dataset sets `patch_mpp` to its own.
KAGGLE_PATCH_MPP = 4.0

RUN = "run"
"""`field.metadata["role"]` of a setting that says how this run is run, not what is trained."""
RECIPE = "recipe"


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | Callable[[], Sequence[str]] | None = None,
    role: str = RECIPE,
) -> Any:
    """A `TrainConfig` field with what the CLI, the docs and the hashes need to know about it.

    `help` is the option's help text; `choices` (a tuple, or a function returning the names
    another table owns) become a `click.Choice`; `role` is `RECIPE` (what is trained: hashed
    into run names, work folders and resume) or `RUN` (data location, registration,
    explanations, devices, experiment file: changing one keeps the resume).
    """
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "role": role}
    )


def _backbones() -> list[str]:
    from histomlf.models.backbones import backbone_names

    return backbone_names()


def _metrics() -> list[str]:
    from histomlf.evaluation.metrics import METRICS

    return list(METRICS)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run: the recipe, and how this run is run.

    Each field is a key of the experiment files, a CLI option (kebab-case plus a snake_case
    twin, generated from the field's metadata by `histomlf.cli.options`) and an
    `mlflow run -P key=value` parameter. Fields whose `role` is `RUN` (see `run_fields`) do not
    change what is trained, so they are left out of `recipe_digest`, and each verb offers
    only the run options it uses.
    `gate_metric` names a metric of `histomlf.evaluation.metrics.METRICS` without a split
    prefix (`roc_auc`, not `test_roc_auc`): the gate always compares scores on the test split.
    """

    model: str = setting("simplecnn", "backbone", choices=_backbones)
    weights: str = setting("none", "imagenet | none | path to a backbone weights file")
    image_size: int = setting(50, "input size the model resizes patches to (>= 32)")
    epochs: int = setting(5, "phase-1 epochs (head only when the backbone is pretrained)")
    fine_tune_epochs: int = setting(0, "phase-2 epochs with the top backbone layers unfrozen")
    fine_tune_layers: int = setting(0, "how many top backbone layers phase 2 unfreezes (0: all)")
    learning_rate: float = setting(1e-3, "phase-1 learning rate")
    fine_tune_learning_rate: float = setting(1e-5, "phase-2 learning rate")
    optimizer: str = setting("adam", "optimizer (sgd: momentum 0.9)", choices=OPTIMIZER_CHOICES)
    lr_schedule: str = setting(
        "constant",
        "learning rate per phase (cosine: decay over each phase's steps to 5 %)",
        choices=LR_SCHEDULE_CHOICES,
    )
    batch_size: int = setting(64, "patches per batch")
    dropout: float = setting(0.3, "dropout rate of the head")
    dense_units: int = setting(128, "units of the head's hidden layer (0: none)")
    augment: str = setting(
        "light",
        "training split only: light (flips/rotations), strong (+ HED stain jitter 0.05), "
        "stronger (+ HED jitter 0.2)",
        choices=AUGMENT_CHOICES,
    )
    mixup: float = setting(
        0.0, "mixup alpha: Beta(alpha, alpha) mixing of training patches and labels (0: off)"
    )
    label_smoothing: float = setting(
        0.0, "binary label smoothing of the training loss, in [0, 0.5) (0: off)"
    )
    weight_decay: float = setting(
        0.0,
        "decoupled weight decay per step x learning rate (0: optimizer default, none except "
        "adamw's 0.004)",
    )
    tta: str = setting(
        "none",
        "test-time augmentation (dihedral8: score the mean over the 8 flips/rotations; served "
        "model too)",
        choices=TTA_CHOICES,
    )
    snapshots: int = setting(
        1,
        "snapshot ensemble: N > 1 splits the epochs into N cosine cycles (warm restarts) and "
        "serves the mean of the N cycle-end models as one model (1: off)",
    )
    balance: str = setting(
        "class_weight", "class balance of the training split", choices=BALANCE_CHOICES
    )
    early_stopping_patience: int = setting(
        3, "epochs without val ROC-AUC gain before stopping (0: off)"
    )
    threshold_policy: str = setting(
        "youden", "youden | best_f1 | sensitivity:<x> | fixed:<t>, chosen on val"
    )
    gate_metric: str = setting(
        "roc_auc", "test-split metric the registry gate compares", choices=_metrics, role=RUN
    )
    calibrate: str = setting(
        "none",
        "platt: the logged model maps its logit by an affine map fitted on held-out "
        "predictions (a train run's validation patients; cv's final model: the pooled "
        "out-of-fold ones), so served P(IDC) is calibrated; ranking and labels unchanged",
        choices=CALIBRATION_CHOICES,
        role=RUN,
    )
    max_samples: int = setting(0, "use at most this many patches in total, stratified (0: all)")
    seed: int = setting(42, "random seed (splits, shuffling, weights)")
    data_dir: str = setting(
        "",
        "dataset folder in the Kaggle layout or s3://bucket/prefix (empty: $HISTOMLF_DATA_DIR "
        "or synthetic)",
        role=RUN,
    )
    patch_mpp: float = setting(
        KAGGLE_PATCH_MPP,
        "µm/px of the training patches, recorded with the model for slide scoring (Kaggle "
        "IDC: 4, the papers' 40x downsampled 16x; not measured)",
    )
    val_fraction: float = setting(0.15, "fraction of patients for validation")
    test_fraction: float = setting(0.15, "fraction of patients for test")
    register_as: str = setting(
        "", "register the model under this name and apply the champion gate", role=RUN
    )
    packed_cache: bool = setting(
        True, "decode PNGs once into a packed uint8 cache (true/false)", role=RUN
    )
    explain: bool = setting(
        True, "log Grad-CAM overlays and patient maps of the test split (true/false)", role=RUN
    )
    devices: str = setting(
        "cpu",
        "cpu | all (every GPU) | N (N GPUs, or N logical CPU devices without GPU)",
        role=RUN,
    )
    experiment: str = setting(DEFAULT_EXPERIMENT, "the experiment file's name", role=RUN)

    def __post_init__(self) -> None:
        _check_names(self)
        _check_choice("augment", self.augment, AUGMENT_CHOICES)
        _check_choice("balance", self.balance, BALANCE_CHOICES)
        _check_choice("calibrate", self.calibrate, CALIBRATION_CHOICES)
        _check_choice("optimizer", self.optimizer, OPTIMIZER_CHOICES)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULE_CHOICES)
        if not re.fullmatch(r"cpu|all|[1-9][0-9]*", self.devices):
            raise ConfigError(f"devices must be cpu, all or a positive count; got {self.devices!r}")
        _check_choice("tta", self.tta, TTA_CHOICES)
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        for name in ("mixup", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.patch_mpp) and self.patch_mpp > 0):
            raise ConfigError(f"patch_mpp must be a positive µm/px, got {self.patch_mpp}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must leave patients for training")
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        _check_snapshots(self)
        for name in ("fine_tune_epochs", "fine_tune_layers", "max_samples", "dense_units"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.image_size < 32:
            raise ConfigError(
                f"image_size must be >= 32 (Keras backbones' minimum), got {self.image_size}"
            )

    def as_params(self) -> dict[str, Any]:
        """The flat key -> value mapping that gets logged as run parameters (recipe and run)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def recipe_params(self) -> dict[str, Any]:
        """Only what is trained: the fields whose role is `RECIPE`."""
        return {name: getattr(self, name) for name in recipe_fields()}

    def recipe_digest(self, length: int = 6) -> str:
        """A short hash of `recipe_params`: the same recipe, the same digest, whatever the run
        options (data location, registration, explanations, devices, experiment file)."""
        text = json.dumps(self.recipe_params(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:length]

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def check_data_location(data_dir: str) -> None:
    """Refuse a data location that cannot work, before a run opens or TensorFlow is imported.

    `data_dir` (else `$HISTOMLF_DATA_DIR`) must be an existing folder or `s3://bucket[/prefix]`;
    empty means the synthetic demo set. Whether the folder holds patches is the scan's to say.
    """
    given = str(data_dir or os.environ.get(DATA_DIR_ENV, "")).strip()
    source = "data_dir" if str(data_dir or "").strip() else f"${DATA_DIR_ENV}"
    if not given:
        return
    if given.startswith("s3://"):
        if not given[len("s3://") :].split("/")[0]:
            raise ConfigError(f"{source}={given!r}: an S3 location is s3://bucket[/prefix]")
        return
    path = Path(given).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{source}={given!r}: no such folder (a dataset in the Kaggle layout; "
            "`histomlf data fetch DEST` downloads it, or leave it empty for synthetic data)"
        )
    if not path.is_dir():
        raise ConfigError(f"{source}={given!r}: not a folder (a dataset in the Kaggle layout)")


def run_fields() -> tuple[str, ...]:
    """The `TrainConfig` fields that say how a run is run (role `RUN`)."""
    return tuple(f.name for f in fields(TrainConfig) if f.metadata.get("role") == RUN)


def recipe_fields() -> tuple[str, ...]:
    """The `TrainConfig` fields that say what is trained (role `RECIPE`)."""
    return tuple(f.name for f in fields(TrainConfig) if f.metadata.get("role") != RUN)


# The run options each verb uses; it offers no other (an option it would ignore is not one).
# `cv` neither registers nor explains its folds; a `tune` trial runs on one device (scale a
# search with --workers) and is not calibrated. `experiment` is every verb's `-e`.
VERB_RUN_OPTIONS: dict[str, tuple[str, ...]] = {
    "train": ("data_dir", "register_as", "gate_metric", "calibrate", "packed_cache", "explain",
              "devices"),
    # register_as / gate_metric / calibrate: for the final model of `cv --final ensemble|refit`
    # (its fold models stay uncalibrated: their out-of-fold outputs are what the map is fitted on).
    "cv": ("data_dir", "register_as", "gate_metric", "calibrate", "packed_cache", "devices"),
    "tune": ("data_dir", "register_as", "gate_metric", "packed_cache", "explain"),
}


def verb_fields(verb: str) -> tuple[str, ...]:
    """The `TrainConfig` keys `verb` takes: every recipe field, its run options, `experiment`
    (what a command that reruns a run of `verb` may pass)."""
    return (*recipe_fields(), *VERB_RUN_OPTIONS[verb], "experiment")


def _check_snapshots(config: TrainConfig) -> None:
    """A snapshot ensemble splits phase 1 into equal cosine cycles and keeps each cycle's end."""
    if config.snapshots < 1:
        raise ConfigError(f"snapshots must be >= 1, got {config.snapshots}")
    if config.snapshots == 1:
        return
    needs = {
        "lr_schedule": (config.lr_schedule == "cosine", "cosine (one cosine cycle per snapshot)"),
        "epochs": (
            config.epochs % config.snapshots == 0,
            f"a multiple of snapshots={config.snapshots} (equal cycles)",
        ),
        "fine_tune_epochs": (config.fine_tune_epochs == 0, "0 (snapshots are taken in phase 1)"),
        "early_stopping_patience": (
            config.early_stopping_patience == 0,
            "0 (every cycle runs to its end)",
        ),
    }
    for key, (ok, wanted) in needs.items():
        if not ok:
            raise ConfigError(
                f"snapshots={config.snapshots} needs {key} = {wanted}; got {getattr(config, key)}"
            )


def _check_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_names(config: TrainConfig) -> None:
    """Names whose allowed values live in other tables: backbone, threshold policy, metric."""
    from histomlf.evaluation.metrics import METRICS
    from histomlf.evaluation.threshold import POLICIES, parse_policy
    from histomlf.models.backbones import backbone_names

    _check_choice("model", config.model, backbone_names())
    try:
        parse_policy(config.threshold_policy)
    except ValueError:
        raise ConfigError(
            f"threshold_policy must be one of {', '.join(POLICIES)}; "
            f"got {config.threshold_policy!r}"
        ) from None
    if config.gate_metric not in METRICS:
        hint = ""
        if config.gate_metric.removeprefix("test_") in METRICS:
            hint = f" (write {config.gate_metric.removeprefix('test_')!r}: the gate always "
            hint += "compares test-split scores)"
        raise ConfigError(
            f"gate_metric must be one of {', '.join(METRICS)}; got {config.gate_metric!r}{hint}"
        )


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(name: str, value: Any, target: Any) -> Any:
    """Convert `value` (often a string from the command line) to the field type `target`."""
    origin = typing.get_origin(target)
    if origin in (typing.Union, types.UnionType):
        target = next(arg for arg in typing.get_args(target) if arg is not type(None))
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(value)
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return (
                int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
            )
        if target is float:
            return float(value)
        if target is str:
            return "" if value is None else str(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: cannot read {value!r} as {target.__name__}") from error
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def uses_real_data(values: dict[str, Any]) -> bool:
    """Whether a data folder is given (`data_dir` or `$HISTOMLF_DATA_DIR`); else synthetic."""
    return bool(str(values.get("data_dir") or "").strip() or os.environ.get(DATA_DIR_ENV, ""))


def resolve_experiment_path(experiment: str | Path, search_dirs: list[Path] | None = None) -> Path:
    """Find an experiment file from a path or a bare name (`vgg16` -> experiments/vgg16.yaml)."""
    candidate = Path(experiment)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    name = candidate.stem if candidate.suffix in (".yaml", ".yml") else str(experiment)
    dirs = search_dirs or [Path.cwd() / EXPERIMENTS_DIR_NAME, repo_experiments_dir()]
    for directory in dirs:
        for suffix in (".yaml", ".yml"):
            path = directory / f"{name}{suffix}"
            if path.is_file():
                return path
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.y*ml")})
    raise ConfigError(
        f"unknown experiment {str(experiment)!r}: no such file, and no {name}.yaml in "
        f"{', '.join(str(d) for d in dirs)} (known: {', '.join(known) or 'none'})"
    )


def repo_experiments_dir() -> Path:
    """`experiments/` beside the package (a source checkout or an editable install)."""
    return Path(__file__).resolve().parent.parent / EXPERIMENTS_DIR_NAME


def read_experiment_file(path: Path) -> dict[str, Any]:
    """Read an experiment YAML into a dict; an empty file is an empty dict."""
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: an experiment file must be a mapping of key: value")
    return content


def build_config(cls: type, values: dict[str, Any], *, source: str) -> Any:
    """Instantiate dataclass `cls` from `values`, refusing unknown keys with their source."""
    types_by_name = _field_types(cls)
    unknown = sorted(set(values) - set(types_by_name))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(types_by_name))}"
        )
    coerced = {k: coerce(k, v, types_by_name[k]) for k, v in values.items()}
    return cls(**coerced)


def load_experiment(
    experiment: str | Path = DEFAULT_EXPERIMENT,
    overrides: dict[str, Any] | None = None,
    *,
    sections: tuple[str, ...] = (),
) -> tuple[TrainConfig, dict[str, Any]]:
    """Load an experiment file plus overrides into a `TrainConfig`.

    The default experiment without any data folder (no `data_dir` override, no
    `$HISTOMLF_DATA_DIR`) loads `experiments/demo.yaml` instead: the synthetic first run.

    Top-level sections named in `sections` (e.g. `search` for tuning) are returned separately
    instead of being treated as unknown keys. Returns `(config, {section: content})`.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if str(experiment) == DEFAULT_EXPERIMENT and not uses_real_data(given):
        experiment = DEMO_EXPERIMENT
    path = resolve_experiment_path(experiment)
    content = read_experiment_file(path)
    extra = {name: content.pop(name) for name in sections if name in content}
    values = {**content, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    values["experiment"] = str(experiment)
    config = build_config(TrainConfig, values, source=f"experiment {path.name} + overrides")
    return config, extra
