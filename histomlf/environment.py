"""Facts about where a run ran: versions, devices, installed packages, git state."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def environ_set(
    values: Mapping[str, str], *, also_restore: Iterable[str] = ()
) -> Iterator[None]:
    """`os.environ` with `values` set for the block, then every key restored (or removed) —
    those of `values` and `also_restore` (keys the block itself may set or remove)."""
    saved = {key: os.environ.get(key) for key in {*values, *also_restore}}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


KEY_PACKAGES = (
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "keras-tuner",
    "mlflow",
    "numpy",
    "pandas",
    "scikit-learn",
    "pillow",
)


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_state(directory: Path | None = None) -> dict[str, Any]:
    """The commit and whether tracked files differ from it; empty outside a git checkout."""
    cwd = str(directory or Path.cwd())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}


def devices() -> list[str]:
    import tensorflow as tf

    return [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()]


def pip_freeze() -> str:
    lines = sorted(
        f"{dist.metadata['Name']}=={dist.version}" for dist in importlib.metadata.distributions()
    )
    return "\n".join(lines) + "\n"


def environment_facts() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "devices": devices(),
        "packages": package_versions(),
        **git_state(),
    }
