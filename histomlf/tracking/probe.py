"""Fail fast before training: is the tracking server there, do our credentials work, can we
write an artifact?

The MLflow client retries a dead server for minutes (7 retries, backoff 2, 120 s timeout), so
the reachability and credential checks are plain HTTP requests with a short timeout and no
retry: `GET /health` (open to everyone) then `GET /api/2.0/mlflow/experiments/search` (needs a
valid login). The artifact check runs inside the caller's run (`probe_artifact_write`): it
logs `probe/ok.txt` through the MLflow client with retries off and a short timeout, which
exercises the real path (server proxy -> S3 bucket) without creating experiments. For local
stores (sqlite, file paths) there is nothing to probe.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from urllib.parse import urlparse

from histomlf.environment import environ_set
from histomlf.schema import Artifact

PROBE_ARTIFACT = Artifact.PROBE


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be used; the message says why in one line."""


def _resolve_uri(tracking_uri: str | None) -> str:
    if tracking_uri:
        return tracking_uri
    import mlflow

    return mlflow.get_tracking_uri()


def _is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def _auth() -> tuple[tuple[str, str] | None, dict[str, str]]:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return ((user, password) if user and password else None), headers


def _verify() -> bool | str:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return False
    return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True


def probe_tracking(
    tracking_uri: str | None = None, *, timeout: float = 5, run_id: str | None = None
) -> None:
    """Raise `TrackingUnavailable` unless the tracking server answers and accepts our login.

    With `run_id`, also check that an artifact can be written to that run. A no-op for
    sqlite/file tracking URIs. Takes at most about 2 x `timeout` seconds on failure.
    """
    import requests

    uri = _resolve_uri(tracking_uri).rstrip("/")
    if not _is_remote(uri):
        return
    auth, headers = _auth()
    common = {"timeout": timeout, "verify": _verify(), "headers": headers}
    try:
        health = requests.get(f"{uri}/health", **common)
    except requests.exceptions.ConnectTimeout as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable (no answer within {timeout:g} s): "
            "check MLFLOW_TRACKING_URI and that the server runs"
        ) from exc
    except requests.exceptions.ConnectionError as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable (connection refused): check "
            "MLFLOW_TRACKING_URI and that the server runs (`histomlf server start`)"
        ) from exc
    except requests.exceptions.Timeout as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} did not answer within {timeout:g} s"
        ) from exc
    except requests.RequestException as exc:
        raise TrackingUnavailable(f"MLflow tracking server {uri}: {_first_line(exc)}") from exc
    if health.status_code != 200:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unhealthy (HTTP {health.status_code} on /health)"
        )
    try:
        resp = requests.get(
            f"{uri}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
            auth=auth, **common,
        )
    except requests.RequestException as exc:
        raise TrackingUnavailable(f"MLflow tracking server {uri}: {_first_line(exc)}") from exc
    _raise_for_login(uri, resp.status_code, auth is not None or bool(headers))
    if run_id is not None:
        probe_artifact_write(run_id, tracking_uri=uri, timeout=timeout)


def _raise_for_login(uri: str, status: int, has_credentials: bool) -> None:
    if status == 401 and not has_credentials:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} requires a login (HTTP 401): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if status == 401:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} rejected the credentials (HTTP 401): check "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if status == 403:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} refused access (HTTP 403): the user lacks permission "
            "or the server does not allow this host name (--allowed-hosts)"
        )
    if status >= 400:
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} answered HTTP {status} to an authenticated request"
        )


@contextlib.contextmanager
def _short_requests(timeout: float) -> Iterator[None]:
    """Turn MLflow's and boto3's retries off and shorten their timeouts, then restore them."""
    overrides = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout))),
        "AWS_MAX_ATTEMPTS": "1",
    }
    with environ_set(overrides):
        yield


def probe_artifact_write(
    run_id: str, *, tracking_uri: str | None = None, timeout: float = 5
) -> None:
    """Log the tiny artifact `probe/ok.txt` to `run_id`, quickly; raise `TrackingUnavailable`
    with the store's one-line reason when it cannot be written."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(_resolve_uri(tracking_uri))
    with _short_requests(timeout):
        try:
            client.log_text(run_id, "ok\n", PROBE_ARTIFACT)
        except Exception as exc:  # noqa: BLE001 - any failure means the store is unusable
            raise TrackingUnavailable(
                f"cannot write artifacts for run {run_id}: {_first_line(exc)}"
            ) from exc


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def use_tracking_uri(uri: str | None = None) -> str:
    """Resolve, probe and set the tracking (and registry) URI for this process; returns it."""
    import mlflow

    resolved = _resolve_uri(uri)
    probe_tracking(resolved)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    return resolved
