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
import math
import os
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

EXPERIMENTS_DIR_NAME = "experiments"
DEFAULT_EXPERIMENT = "default"
# What the default becomes when no data is given: a minutes-long run on synthetic patches.
DEMO_EXPERIMENT = "demo"
DATA_DIR_ENV = "HISTOMLF_DATA_DIR"
# µm/px of the Kaggle IDC patches: 40x scans (~0.25 µm/px) downsampled 16x to 2.5x before
# cutting, as the papers describe (Cruz-Roa 2014; Janowczyk & Madabhushi 2016). The papers'
# figure, not a measurement; another dataset sets `patch_mpp` to its own.
KAGGLE_PATCH_MPP = 4.0

AUGMENT_CHOICES = ("none", "light", "strong", "stronger")
BALANCE_CHOICES = ("class_weight", "undersample", "none")
OPTIMIZER_CHOICES = ("adam", "adamw", "sgd", "rmsprop")
LR_SCHEDULE_CHOICES = ("constant", "cosine")
TTA_CHOICES = ("none", "dihedral8")


class ConfigError(ValueError):
    """An experiment file or override is invalid; the message says which key and why."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run.

    Each field is a key of the experiment files, a `histomlf train` option (kebab-case plus a
    snake_case twin) and an `mlflow run -P key=value` parameter.
    `gate_metric` names a metric of `histomlf.evaluation.metrics.METRICS` without a split
    prefix (`roc_auc`, not `test_roc_auc`): the gate always compares scores on the test split.
    """

    model: str = "simplecnn"
    weights: str = "none"
    image_size: int = 50
    epochs: int = 5
    fine_tune_epochs: int = 0
    fine_tune_layers: int = 0
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-5
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    batch_size: int = 64
    dropout: float = 0.3
    dense_units: int = 128
    augment: str = "light"
    mixup: float = 0.0
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    tta: str = "none"
    snapshots: int = 1
    balance: str = "class_weight"
    early_stopping_patience: int = 3
    threshold_policy: str = "youden"
    gate_metric: str = "roc_auc"
    max_samples: int = 0
    seed: int = 42
    data_dir: str = ""
    patch_mpp: float = KAGGLE_PATCH_MPP
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    register_as: str = ""
    packed_cache: bool = True
    explain: bool = True
    devices: str = "cpu"
    experiment: str = DEFAULT_EXPERIMENT

    def __post_init__(self) -> None:
        _check_names(self)
        _check_choice("augment", self.augment, AUGMENT_CHOICES)
        _check_choice("balance", self.balance, BALANCE_CHOICES)
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
        """The flat key -> value mapping that gets logged as run parameters."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


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
