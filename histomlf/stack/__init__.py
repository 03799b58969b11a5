"""The production-shaped tracking stack on one machine: PostgreSQL + SeaweedFS S3 + MLflow.

`start_stack` brings the three up in order (each waits for its health check), `stop_stack`
takes them down in reverse, `stack_status` reports each from its pid/data files, so all
three work from any process. State, secrets and logs live under `HISTOMLF_SERVER_DIR`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from histomlf.stack import mlflow_server, postgres, seaweed
from histomlf.stack.processes import StackError
from histomlf.stack.settings import (
    StackSecrets,
    StackSettings,
    admin_password,
    ensure_secrets,
    load_settings,
    private_dir,
    saved_settings,
)

__all__ = [
    "ComponentStatus",
    "StackError",
    "StackSecrets",
    "StackSettings",
    "load_settings",
    "resolve_settings",
    "stack_status",
    "start_stack",
    "stop_stack",
]


@dataclass(frozen=True)
class ComponentStatus:
    """One service of the stack: whether it runs, its pid and where it answers."""

    name: str
    running: bool
    pid: int | None
    address: str
    log: Path


def resolve_settings(settings: StackSettings | None = None) -> StackSettings:
    """`settings`, else those recorded in the server dir by `start`, else the environment's."""
    if settings is not None:
        return settings
    fresh = load_settings()
    return saved_settings(fresh.server_dir) or fresh


def start_stack(
    settings: StackSettings | None = None, *, password: str | None = None
) -> StackSettings:
    """Start PostgreSQL (unless external), SeaweedFS and MLflow; return the settings used.

    Idempotent: running components are left alone. On failure what was started is stopped.
    """
    settings = settings or load_settings()
    password = password if password is not None else admin_password()
    # Owner only; when root runs PostgreSQL as `postgres`, that user must pass through (x only).
    top = 0o711 if os.geteuid() == 0 and settings.local_postgres else 0o700
    private_dir(settings.server_dir, top)
    for folder in (settings.secrets_dir, settings.logs_dir, settings.run_dir):
        private_dir(folder)
    secrets = ensure_secrets(settings)
    settings.save()
    try:
        if settings.local_postgres:
            postgres.start(settings, secrets.pg_password)
        seaweed.start(settings, secrets)
        seaweed.ensure_bucket(settings, secrets)
        mlflow_server.start(settings, secrets, password)
    except BaseException:
        stop_stack(settings)
        raise
    return settings


def stop_stack(settings: StackSettings | None = None, *, grace: float = 10.0) -> None:
    """Stop MLflow, then SeaweedFS, then PostgreSQL; data stays in the server dir."""
    settings = resolve_settings(settings)
    errors = []
    for stop in (
        lambda: mlflow_server.stop(settings, grace=grace),
        lambda: seaweed.stop(settings, grace=grace),
        lambda: postgres.stop(settings, grace=grace) if settings.local_postgres else None,
    ):
        try:
            stop()
        except StackError as exc:
            errors.append(str(exc))
    if errors:
        raise StackError("; ".join(errors))


def stack_status(settings: StackSettings | None = None) -> list[ComponentStatus]:
    """Each component's state, read from pid files and the PostgreSQL data dir."""
    settings = resolve_settings(settings)
    rows = []
    if settings.local_postgres:
        rows.append(ComponentStatus(
            "postgresql", postgres.running(settings), postgres.pid(settings),
            f"127.0.0.1:{settings.pg_port}", postgres.log_path(settings),
        ))
    rows.append(ComponentStatus(
        "seaweedfs-s3", seaweed.running(settings), seaweed.pid(settings),
        settings.s3_endpoint_url, seaweed.log_path(settings),
    ))
    rows.append(ComponentStatus(
        "mlflow", mlflow_server.running(settings) and mlflow_server.healthy(settings),
        mlflow_server.pid(settings), settings.tracking_uri, mlflow_server.log_path(settings),
    ))
    return rows
