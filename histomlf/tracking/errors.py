"""MLflow's errors as the CLI shows them: which exceptions mean "the store said no", in one line."""

from __future__ import annotations

from mlflow.exceptions import MlflowException

from histomlf.tracking.probe import TrackingUnavailable


def tracking_errors() -> tuple[type[BaseException], ...]:
    """Exceptions from the tracking store or registry that a user can act on."""
    return (MlflowException, TrackingUnavailable)


def one_line(error: BaseException) -> str:
    """The first line of an error's message (MLflow's carry a server traceback after it)."""
    message = getattr(error, "message", None) or str(error)
    lines = [line for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
