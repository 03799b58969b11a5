"""Which errors a command shows as one line: `UserError`s (bad input or environment) and the
tracking store's own errors. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from urllib.parse import urlparse

import click

from histomlf.errors import UserError


def user_errors() -> tuple[type[BaseException], ...]:
    """`UserError` plus MLflow's errors (imported lazily: MLflow takes seconds to import)."""
    from histomlf.tracking.errors import tracking_errors

    return (UserError, *tracking_errors())


def one_line(error: BaseException) -> str:
    """The first non-empty line of `error`'s message (its type when the message is empty)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def shown_as_one_line() -> Iterator[None]:
    """Turn a user's mistake into click's one-line `Error: ...` and exit code 1."""
    try:
        yield
    except UserError as error:
        raise click.ClickException(one_line(error)) from error
    except Exception as error:
        # An MLflow error can only come once MLflow is imported; before that, asking for its
        # error types would import it (seconds) just to answer no.
        if "mlflow" in sys.modules and isinstance(error, user_errors()):
            raise click.ClickException(one_line(error)) from error
        raise


def check_tracking_server() -> None:
    """Probe a remote tracking server before TensorFlow is imported (seconds, not minutes).

    A local store (sqlite, a folder, or no `$MLFLOW_TRACKING_URI`) has nothing to probe, and
    MLflow is not imported to find that out.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if urlparse(uri).scheme not in ("http", "https"):
        return
    from histomlf.tracking.probe import TrackingUnavailable, probe_tracking

    try:
        probe_tracking(uri)
    except TrackingUnavailable as error:
        raise click.ClickException(str(error)) from error
