"""Backbone weights: ImageNet from the Keras cache (never a silent fallback), or a file.

Keras downloads ImageNet weights into `$KERAS_HOME/models` (default `~/.keras/models`) on
first use. On a machine without internet its own download hangs on retries or fails deep
inside the application constructor; here the cache is checked first, a download is tried
once with a short timeout, and a failure is a `WeightsUnavailableError` that names the file,
its URL and the folder to pre-seed. Random weights are only ever used when asked for.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import keras

from histomlf.errors import UserError
from histomlf.models.backbones import BACKBONES, ImagenetWeights, imagenet_backbones

DOWNLOAD_TIMEOUT_S = 10.0


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights were asked for but cannot be found or downloaded."""


_MOBILENET_SIZES = (96, 128, 160, 192, 224)


def keras_cache_dirs() -> list[Path]:
    """Folders Keras looks in for `models/` files: `$KERAS_HOME` (or ~/.keras), then /tmp/.keras.

    Keras itself falls back to `/tmp/.keras` when the home folder is not writable.
    """
    home = Path(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")))
    return [home / "models", Path(tempfile.gettempdir()) / ".keras" / "models"]


def imagenet_weights_spec(backbone: str, image_size: int = 224) -> ImagenetWeights:
    """The file name and URL of `backbone`'s no-top ImageNet weights at `image_size`."""
    entry = BACKBONES.get(backbone)
    spec = entry.imagenet if entry is not None else None
    if spec is None:
        raise WeightsUnavailableError(
            f"no ImageNet weights exist for {backbone!r}; "
            f"use weights='none' or a weights file (ImageNet backbones: "
            f"{', '.join(imagenet_backbones())})"
        )
    if backbone == "mobilenetv2" and image_size in _MOBILENET_SIZES:
        name = spec.file_name.replace("_224_", f"_{image_size}_")
        return ImagenetWeights(name, spec.url.replace(spec.file_name, name))
    return spec


def imagenet_weights_path(
    backbone: str, image_size: int = 224, *, timeout: float = DOWNLOAD_TIMEOUT_S
) -> Path:
    """Path of the cached ImageNet weights for `backbone`, downloading them once if absent.

    Raises `WeightsUnavailableError` at once (within `timeout`) when the file is not cached
    and cannot be downloaded; never returns without a real file.
    """
    spec = imagenet_weights_spec(backbone, image_size)
    cache_dirs = keras_cache_dirs()
    for folder in cache_dirs:
        candidate = folder / spec.file_name
        if candidate.is_file() and candidate.stat().st_size > 0:
            return candidate
    target = cache_dirs[0] / spec.file_name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        with (
            urllib.request.urlopen(spec.url, timeout=timeout) as response,
            open(partial, "wb") as out,
        ):
            shutil.copyfileobj(response, out)
        partial.replace(target)
    except (OSError, ValueError) as error:
        raise WeightsUnavailableError(
            f"ImageNet weights for {backbone} are not cached and could not be downloaded "
            f"({error}). Download {spec.url} and place it as {spec.file_name} in "
            f"{cache_dirs[0]} (set KERAS_HOME to use another folder), or train with "
            "weights='none' or a weights file."
        ) from error
    return target


def load_backbone_weights(backbone: keras.Model, path: str | Path) -> None:
    """Load a weights file (`.weights.h5` from `save_weights`, or a legacy Keras `.h5`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file not found: {path} (weights must be 'none', 'imagenet' "
            "or the path of a .h5 / .weights.h5 file)"
        )
    if not path.name.endswith(".h5"):
        raise ValueError(f"backbone weights must be a .h5 or .weights.h5 file, got {path.name}")
    backbone.load_weights(str(path))
