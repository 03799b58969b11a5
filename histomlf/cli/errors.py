"""The exceptions that mean "bad input or environment": shown as one line, not a traceback."""

from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    """Imported lazily: these modules pull in TensorFlow and MLflow."""
    from histomlf.data.s3sync import S3SyncError
    from histomlf.models.weights import WeightsUnavailableError
    from histomlf.tracking.errors import tracking_errors

    return (
        ValueError,
        FileNotFoundError,
        S3SyncError,
        WeightsUnavailableError,
        *tracking_errors(),
    )


def check_tracking_server() -> None:
    """Probe a remote tracking server before TensorFlow is imported (seconds, not minutes)."""
    import click

    from histomlf.tracking.probe import TrackingUnavailable, probe_tracking

    try:
        probe_tracking()
    except TrackingUnavailable as error:
        raise click.ClickException(str(error)) from error
