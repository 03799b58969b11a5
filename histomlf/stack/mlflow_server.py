"""The `mlflow server` of the stack: PostgreSQL stores, proxied S3 artifacts, basic-auth.

Secrets reach it only through its environment and 0600 files: the admin password
(`MLFLOW_AUTH_ADMIN_PASSWORD`), the Flask secret key, the S3 keys and the PostgreSQL password
(pgpass file). The store URIs go through `MLFLOW_BACKEND_STORE_URI` and the auth config file
rather than the command line, so `ps` shows no credential even for an external database URI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from histomlf.stack import postgres, processes
from histomlf.stack.processes import StackError
from histomlf.stack.settings import StackSecrets, StackSettings, write_private

MARKER = "mlflow"


def pid_path(settings: StackSettings) -> Path:
    return settings.run_dir / "mlflow.pid"


def log_path(settings: StackSettings) -> Path:
    return settings.logs_dir / "mlflow.log"


def auth_config_path(settings: StackSettings) -> Path:
    return settings.secrets_dir / "basic_auth.ini"


def backend_uri(settings: StackSettings) -> str:
    return settings.database_uri or postgres.tracking_uri(settings)


def auth_database_uri(settings: StackSettings) -> str:
    if settings.local_postgres:
        return postgres.auth_uri(settings)
    return settings.auth_database_uri or backend_uri(settings)


def write_auth_config(settings: StackSettings) -> None:
    """The basic-auth config: users in PostgreSQL, nobody sees anything unless granted."""
    text = (
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {auth_database_uri(settings)}\n"
        f"admin_username = {settings.admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        f"auth_cache_ttl_seconds = {settings.auth_cache_ttl_seconds}\n"
    )
    write_private(auth_config_path(settings), text)


def command(settings: StackSettings) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "server", "--host", settings.host,
        "--port", str(settings.mlflow_port), "--workers", str(settings.workers),
        "--app-name", "basic-auth", "--serve-artifacts",
    ]


def environment(settings: StackSettings, secrets: StackSecrets, admin_password: str) -> dict:
    """The server's environment: ours minus client-side MLflow settings, plus its secrets."""
    dropped = ("MLFLOW_TRACKING_", "MLFLOW_RUN_", "MLFLOW_EXPERIMENT_", "AWS_")
    if settings.local_postgres:
        dropped += ("PG",)
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update({
        "MLFLOW_BACKEND_STORE_URI": backend_uri(settings),
        "MLFLOW_ARTIFACTS_DESTINATION": settings.artifacts_destination,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config_path(settings)),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.flask_secret_key,
        "MLFLOW_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": secrets.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": secrets.s3_secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "PGPASSFILE": str(postgres.pgpass_path(settings)),
        "PYTHONUNBUFFERED": "1",
    })
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def healthy(settings: StackSettings, timeout: float = 2.0) -> bool:
    """Whether `/health` answers 200 (it needs no credentials)."""
    import requests

    try:
        return requests.get(f"{settings.tracking_uri}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def start(
    settings: StackSettings, secrets: StackSecrets, admin_password: str, *, timeout: float = 180
) -> None:
    """Start the server unless it runs and wait for `/health`."""
    if running(settings):
        return
    if processes.port_open(settings.host, settings.mlflow_port, timeout=0.2):
        raise StackError(
            f"port {settings.mlflow_port} is already in use (set HISTOMLF_MLFLOW_PORT)"
        )
    write_auth_config(settings)
    proc = processes.spawn(
        command(settings), log_path=log_path(settings), pid_path=pid_path(settings),
        env=environment(settings, secrets, admin_password), cwd=settings.server_dir,
    )
    processes.wait_until(
        lambda: healthy(settings), what="the MLflow server", timeout=timeout, proc=proc,
        log_path=log_path(settings), interval=0.5,
    )


def pid(settings: StackSettings) -> int | None:
    return processes.read_pid(pid_path(settings), MARKER)


def running(settings: StackSettings) -> bool:
    return pid(settings) is not None


def stop(settings: StackSettings, *, grace: float = 10.0) -> None:
    """TERM the server's process group (KILL after `grace` s)."""
    processes.stop_recorded(pid_path(settings), MARKER, grace=grace)
