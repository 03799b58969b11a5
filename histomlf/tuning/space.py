"""The search space: `search.space` of an experiment file, declared as Keras Tuner hyperparameters.

Each key is a `TrainConfig` field, so a trial's values apply to the config by name and its run
logs them under the train names. A spec is one of

    learning_rate: {min: 1.0e-4, max: 1.0e-2, sampling: log}   # Float (Int for int fields)
    dense_units: {min: 32, max: 256, step: 32}
    model: [simplecnn, vgg16, resnet50]                         # Choice (or {choice: [...]})
    augment: {fixed: light}                                     # Fixed
    fine_tune_layers: {min: 0, max: 8, step: 4, when: {model: [vgg16, resnet50]}}

`when: {parent: [values]}` makes a hyperparameter conditional (a Keras Tuner conditional
scope): it is only active, and only logged, when the parent takes one of those values. The
fine-tuning knobs are conditional by default on the model not being `simplecnn` (a network
without pretrained weights has nothing to fine-tune), so a simplecnn trial logs no
`fine_tune_layers`.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras_tuner as kt

from histomlf.config import (
    AUGMENT_CHOICES,
    BALANCE_CHOICES,
    OPTIMIZER_CHOICES,
    ConfigError,
    TrainConfig,
    coerce,
)
from histomlf.models.backbones import BACKBONES, backbone_names

TUNABLE = (
    "model", "weights", "image_size", "epochs", "fine_tune_epochs", "fine_tune_layers",
    "learning_rate", "fine_tune_learning_rate", "optimizer", "batch_size", "dropout",
    "dense_units", "augment", "balance", "early_stopping_patience", "threshold_policy",
)  # fmt: skip
FINE_TUNING = ("fine_tune_layers", "fine_tune_learning_rate", "fine_tune_epochs")
CHOICES = {"augment": AUGMENT_CHOICES, "balance": BALANCE_CHOICES, "optimizer": OPTIMIZER_CHOICES}
_SPEC_KEYS = {"choice", "values", "min", "max", "step", "sampling", "fixed", "default", "when"}


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its name, Keras Tuner kind and arguments, and its condition."""

    name: str
    kind: str
    args: dict[str, Any]
    when: tuple[str, tuple[Any, ...]] | None = None

    def declare(self, hp: kt.HyperParameters) -> Any:
        """Register this parameter on `hp`; returns its value (None when inactive)."""
        factories = {"choice": hp.Choice, "int": hp.Int, "float": hp.Float, "fixed": hp.Fixed}
        factory = factories[self.kind]
        if self.when is None:
            return factory(self.name, **self.args)
        parent, values = self.when
        with hp.conditional_scope(parent, list(values)):
            return factory(self.name, **self.args)


class SearchSpace:
    """An ordered set of `Param`s over `TrainConfig` fields (parents before children)."""

    def __init__(self, params: list[Param]) -> None:
        self.params = params
        self.names = tuple(p.name for p in params)

    def __repr__(self) -> str:
        return f"SearchSpace({', '.join(self.names)})"

    @classmethod
    def from_mapping(cls, space: Mapping[str, Any], base: TrainConfig) -> SearchSpace:
        """Parse and check `search.space`; a bad key, range or value is a `ConfigError`."""
        if not space:
            raise ConfigError("search.space is empty: name at least one parameter to tune")
        unknown = sorted(set(space) - set(TUNABLE))
        if unknown:
            raise ConfigError(f"search.space: cannot tune {', '.join(unknown)}; "
                              f"tunable: {', '.join(TUNABLE)}")
        parsed = [_parse(name, spec, base) for name, spec in space.items()]
        parsed = _default_conditions(parsed, base)
        # Keras Tuner needs a parent declared before the parameters conditional on it.
        params = [p for p in parsed if p.when is None] + [p for p in parsed if p.when is not None]
        unconditional = {p.name for p in params if p.when is None}
        for param in params:
            if param.when is not None and param.when[0] not in unconditional:
                raise ConfigError(f"search.space.{param.name}: condition on {param.when[0]!r}, "
                                  "which must itself be tuned (and unconditional)")
        return cls(params)

    def declare(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """Declare every parameter on `hp`; returns the active values by name."""
        values = {}
        for param in self.params:
            value = param.declare(hp)
            if value is not None or hp.is_active(param.name):
                values[param.name] = value
        return values

    def active_values(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """This trial's values of the space's parameters (inactive ones left out)."""
        return {name: hp.values[name] for name in self.names if name in hp.values}

    def inactive(self, hp: kt.HyperParameters) -> list[str]:
        return [name for name in self.names if name not in hp.values]

    def apply(self, base: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
        """`base` with the trial's values (only names of this space) applied and checked."""
        hints = typing.get_type_hints(TrainConfig)
        changes = {k: coerce(k, v, hints[k]) for k, v in values.items() if k in self.names}
        return base.replace(**changes)



def _parse(name: str, spec: Any, base: TrainConfig) -> Param:
    hints = typing.get_type_hints(TrainConfig)
    field_type = hints[name]
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict):
        spec = {"fixed": spec}
    extra = sorted(set(spec) - _SPEC_KEYS)
    if extra:
        raise ConfigError(f"search.space.{name}: unknown spec key(s) {', '.join(extra)}; "
                          f"use choice, min/max/step/sampling, fixed, default, when")
    when = _parse_when(name, spec.get("when"))
    where = f"search.space.{name}"
    if "choice" in spec or "values" in spec:
        values = spec.get("choice", spec.get("values"))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: choice needs a non-empty list")
        values = [coerce(name, v, field_type) for v in values]
        for value in values:
            _check_value(name, value, base)
        args: dict[str, Any] = {"values": values}
        if "default" in spec:
            args["default"] = coerce(name, spec["default"], field_type)
        return Param(name, "choice", args, when)
    if "fixed" in spec:
        value = coerce(name, spec["fixed"], field_type)
        _check_value(name, value, base)
        return Param(name, "fixed", {"value": value}, when)
    if "min" not in spec or "max" not in spec:
        raise ConfigError(f"{where}: give choice: [...], fixed: value, or min and max")
    if field_type not in (int, float):
        raise ConfigError(f"{where}: {name} is not numeric; use choice: [...]")
    low, high = coerce(name, spec["min"], field_type), coerce(name, spec["max"], field_type)
    if not low < high:
        raise ConfigError(f"{where}: min must be below max (got {low} and {high})")
    sampling = str(spec.get("sampling", "linear"))
    if sampling not in ("linear", "log", "reverse_log"):
        raise ConfigError(f"{where}: sampling must be linear, log or reverse_log")
    if sampling != "linear" and low <= 0:
        raise ConfigError(f"{where}: {sampling} sampling needs min > 0")
    _check_value(name, low, base)
    _check_value(name, high, base)
    args = {"min_value": low, "max_value": high, "sampling": sampling}
    if spec.get("step") is not None:
        args["step"] = coerce(name, spec["step"], field_type)
    if "default" in spec:
        args["default"] = coerce(name, spec["default"], field_type)
    return Param(name, "int" if field_type is int else "float", args, when)


def _parse_when(name: str, when: Any) -> tuple[str, tuple[Any, ...]] | None:
    if when is None:
        return None
    if not isinstance(when, dict) or len(when) != 1:
        raise ConfigError(f"search.space.{name}: when must be one mapping parent: [values]")
    ((parent, values),) = when.items()
    values = values if isinstance(values, list) else [values]
    return str(parent), tuple(values)


def _check_value(name: str, value: Any, base: TrainConfig) -> None:
    if name == "model":
        if value not in BACKBONES:
            raise ConfigError(f"search.space.model: unknown model {value!r}; "
                              f"known: {', '.join(backbone_names())}")
        return
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(
            f"search.space.{name}: {value!r} is not one of {', '.join(CHOICES[name])}"
        )
    try:
        base.replace(**{name: value})
    except ConfigError as error:
        raise ConfigError(f"search.space.{name}: {error}") from None


def _default_conditions(params: list[Param], base: TrainConfig) -> list[Param]:
    """Make fine-tuning knobs conditional on a pretrainable model, unless a `when` is given."""
    model = next((p for p in params if p.name == "model"), None)
    out = []
    for param in params:
        if param.name in FINE_TUNING and param.when is None:
            if model is not None and model.kind == "choice":
                pretrainable = tuple(
                    v for v in model.args["values"] if not BACKBONES[v].trains_from_scratch
                )
                if not pretrainable:
                    raise ConfigError(f"search.space.{param.name}: no model in the space "
                                      "can be fine-tuned (all are trained from scratch)")
                param = Param(param.name, param.kind, param.args, ("model", pretrainable))
            elif model is None and BACKBONES[base.model].trains_from_scratch:
                raise ConfigError(f"search.space.{param.name}: model {base.model} is trained from "
                                  "scratch and has nothing to fine-tune; tune model too or drop it")
        out.append(param)
    return out
