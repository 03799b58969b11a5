"""Models by name, timm style: `@register_model` records a builder, `create_model` builds it.

A builder is a function `(**kwargs) -> keras.Model` registered under its own name. The
registry refuses a second builder under a taken name (a silent overwrite would make the
same experiment file train a different network depending on import order), refuses a name
the backbone table (`histomlf.models.backbones`) does not describe, and `create_model` refuses
unknown names with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from histomlf.models.backbones import BACKBONES, UnknownBackboneError

Builder = TypeVar("Builder", bound=Callable[..., Any])

_MODELS: dict[str, Callable[..., Any]] = {}



def register_model(builder: Builder) -> Builder:
    """Register `builder` under its function name; a duplicate name is a `ValueError`."""
    name = builder.__name__
    if name not in BACKBONES:
        raise ValueError(
            f"no backbone-table entry for {name!r}: add it to histomlf/models/backbones.py first"
        )
    if name in _MODELS:
        raise ValueError(
            f"a model named {name!r} is already registered "
            f"({_MODELS[name].__module__}.{_MODELS[name].__qualname__})"
        )
    _MODELS[name] = builder
    return builder


def list_models() -> list[str]:
    """The registered names, sorted."""
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(name: str, **kwargs: Any) -> Any:
    """Build the model registered as `name`; `kwargs` go to its builder.

    For the built-in backbones these are `weights`, `image_size`, `dropout`, `dense_units`
    (see `histomlf.models.heads.build_classifier`).
    """
    try:
        builder = _MODELS[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown model {name!r}; known models: {', '.join(list_models()) or 'none'}"
        ) from None
    return builder(**kwargs)
