"""Session-wide fixtures for the real tracking stack (PostgreSQL + SeaweedFS S3 + MLflow).

Use from a test module with `pytest_plugins = ["stack_fixtures"]` (or from conftest.py), so the
stack starts once per test session on random ports in a fresh temporary folder and stops at
the end. `tracking_stack` yields a `RunningStack`; `stack_client_env` points the MLflow client
of the current test at it as the admin user.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import requests

from histomlf.environment import environ_set
from histomlf.stack import (
    StackSecrets,
    StackSettings,
    mlflow_server,
    postgres,
    start_stack,
    stop_stack,
)
from histomlf.stack.processes import free_port
from histomlf.stack.settings import ADMIN_PASSWORD_ENV, ensure_secrets

RUN_SCOPED_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
# Set in the environment of `start` (as a user's shell would): no stack child but MLflow may see
# the admin password, and none may see an unrelated variable of the caller.
CALLER_CANARY = "HISTOMLF_TEST_CALLER_CANARY"


@dataclass
class RunningStack:
    """A started stack and what clients and checks need to use it."""

    settings: StackSettings
    admin_username: str
    admin_password: str = field(repr=False)
    secrets: StackSecrets = field(repr=False)

    @property
    def tracking_uri(self) -> str:
        return self.settings.tracking_uri

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    @property
    def s3_endpoint_url(self) -> str:
        return self.settings.s3_endpoint_url

    def client_env(self, username: str | None = None, password: str | None = None) -> dict:
        """Environment for an MLflow client (subprocess or `mlflow run`) logging as a user."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_TRACKING_USERNAME": username or self.admin_username,
            "MLFLOW_TRACKING_PASSWORD": password or self.admin_password,
        }

    def s3_env(self) -> dict:
        """Environment for a boto3 user of the stack's bucket (datasets on S3)."""
        return {
            "AWS_ACCESS_KEY_ID": self.secrets.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.secrets.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint_url,
        }

    def s3_client(self, access_key: str | None = None, secret_key: str | None = None):
        """A boto3 client on the stack's S3 endpoint (the stack's keys unless given)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.s3_endpoint_url, region_name="us-east-1",
            aws_access_key_id=access_key or self.secrets.s3_access_key,
            aws_secret_access_key=secret_key or self.secrets.s3_secret_key,
            config=Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2}),
        )

    def bucket_keys(self, prefix: str = "") -> list[str]:
        """Every object key in the stack's bucket under `prefix`."""
        pages = self.s3_client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def sql(self, query: str, dbname: str = postgres.TRACKING_DB) -> list[tuple]:
        """Rows of a SQL query on the stack's PostgreSQL (tracking DB by default)."""
        return postgres.query(self.settings, query, dbname)

    def pg_dump(self, dbname: str) -> str:
        return postgres.dump(self.settings, dbname)

    def api(self, method: str, path: str, *, auth: tuple[str, str] | None = None, **kwargs):
        """An HTTP request to the server as `auth` (admin by default); returns the response."""
        auth = auth or (self.admin_username, self.admin_password)
        return requests.request(
            method, f"{self.tracking_uri}{path}", auth=auth, timeout=30, **kwargs
        )

    def create_user(self, username: str, password: str) -> None:
        resp = self.api("POST", "/api/2.0/mlflow/users/create",
                        json={"username": username, "password": password})
        resp.raise_for_status()

    def grant_experiment(self, username: str, experiment_id: str, permission: str) -> None:
        """Give `username` READ/USE/EDIT/MANAGE on one experiment (MLflow 3.x unified API)."""
        resp = self.api("POST", "/api/3.0/mlflow/users/permissions/grant", json={
            "username": username, "resource_type": "experiment",
            "resource_id": str(experiment_id), "permission": permission,
        })
        resp.raise_for_status()

    def restart_mlflow(self) -> None:
        """Stop and start only the MLflow server process (PostgreSQL and S3 stay up)."""
        mlflow_server.stop(self.settings)
        mlflow_server.start(self.settings, self.secrets, self.admin_password)

    def restart(self) -> None:
        """Stop and start the whole stack on the same ports and data."""
        stop_stack(self.settings)
        _start_as_a_user_would(self.settings, self.admin_password)


def _start_as_a_user_would(settings: StackSettings, password: str) -> None:
    """`start_stack` with the admin password and a canary exported in the caller's environment."""
    with environ_set({ADMIN_PASSWORD_ENV: password, CALLER_CANARY: "caller-only"}):
        start_stack(settings, password=password)


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports and all(abs(port - p) != 10000 for p in ports):
            ports.append(port)
    return ports


@pytest.fixture(scope="session")
def tracking_stack() -> Iterator[RunningStack]:
    """The whole stack, started once per session on random ports, stopped and deleted after.

    Its folder is made with mkdtemp in /tmp (not pytest's 0700 tmp tree) because PostgreSQL runs
    as the `postgres` user, which must be able to enter it.
    """
    root = Path(tempfile.mkdtemp(prefix="histomlf-stack-"))
    root.chmod(0o711)
    mlflow_port, pg_port, s3_port, master, volume, filer = _distinct_free_ports(6)
    settings = replace(
        StackSettings(server_dir=root / "server"),
        mlflow_port=mlflow_port, pg_port=pg_port, s3_port=s3_port, weed_master_port=master,
        weed_volume_port=volume, weed_filer_port=filer, workers=2,
    )
    password = "adm-" + secrets.token_urlsafe(18)
    try:
        _start_as_a_user_would(settings, password)
        yield RunningStack(settings, settings.admin_username, password, ensure_secrets(settings))
    finally:
        stop_stack(settings)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stack_client_env(
    tracking_stack: RunningStack, monkeypatch: pytest.MonkeyPatch
) -> RunningStack:
    """Point this test's MLflow client at the stack, logged in as the admin."""
    for name in RUN_SCOPED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in tracking_stack.client_env().items():
        monkeypatch.setenv(name, value)
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    # Forget a URI or experiment chosen in-process by an earlier test; restored afterwards.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    return tracking_stack
