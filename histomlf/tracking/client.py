"""Choosing the tracking server, and failing fast when it is not there.

MLflow's HTTP client retries a dead server for minutes (7 retries, backoff factor 2, 120 s
timeout) before it says anything. Commands call `use_tracking_uri` first, which checks an
`http(s)://` server with one short request and turns silence into a one-line error.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import mlflow

REACHABILITY_TIMEOUT_S = 5.0


class TrackingUnreachable(ConnectionError):
    """The tracking server did not answer; the message names it and what to check."""


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The explicit `uri`, else `MLFLOW_TRACKING_URI`, else MLflow's default (`sqlite:///mlflow.db`)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def ensure_reachable(uri: str, timeout: float = REACHABILITY_TIMEOUT_S) -> None:
    """Raise `TrackingUnreachable` unless an http(s) tracking server answers within `timeout`.

    Any HTTP answer (even 401/403/404) counts as reachable; database and file URIs pass as is.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingUnreachable(
            f"tracking server {uri} did not answer within {timeout:g} s ({reason}); "
            "is it running, and is MLFLOW_TRACKING_URI right?"
        ) from error


def use_tracking_uri(uri: str | None = None) -> str:
    """Resolve, check and set the tracking (and registry) URI for this process; returns it."""
    resolved = resolve_tracking_uri(uri)
    ensure_reachable(resolved)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return resolved
