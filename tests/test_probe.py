"""The fail-fast tracking probe: unreachable, silent, wrong login, and the happy path."""

from __future__ import annotations

import socket
import time

import pytest
from helpers_wait import free_port

from histomlf.tracking.probe import PROBE_ARTIFACT, TrackingUnavailable, probe_tracking

pytest_plugins = ["stack_fixtures"]


def test_probe_is_a_no_op_for_local_stores(tmp_path) -> None:
    probe_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}")
    probe_tracking(str(tmp_path / "mlruns"))


def test_unreachable_server_fails_within_seconds() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=r"is unreachable \(connection refused\)"):
        probe_tracking(uri, timeout=2)
    assert time.monotonic() - started < 3


def test_server_that_never_answers_fails_after_the_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts TCP connections in the kernel, never answers HTTP
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(TrackingUnavailable, match="did not answer within 1 s"):
            probe_tracking(uri, timeout=1)
        assert time.monotonic() - started < 3


@pytest.mark.slow
def test_missing_and_wrong_credentials_fail_within_seconds(tracking_stack, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="requires a login"):
        probe_tracking(tracking_stack.tracking_uri, timeout=5)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", tracking_stack.admin_username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-123")
    with pytest.raises(TrackingUnavailable, match="rejected the credentials"):
        probe_tracking(tracking_stack.tracking_uri, timeout=5)
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_good_login_passes_and_writes_the_probe_artifact(stack_client_env) -> None:
    import mlflow

    stack = stack_client_env
    probe_tracking(timeout=5)
    mlflow.set_experiment("probe")
    with mlflow.start_run() as run:
        probe_tracking(timeout=5, run_id=run.info.run_id)
    keys = stack.bucket_keys("artifacts/")
    assert any(k.endswith(f"{run.info.run_id}/artifacts/{PROBE_ARTIFACT}") for k in keys)
