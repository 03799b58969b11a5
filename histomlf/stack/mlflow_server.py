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
from histomlf.stack.processes import Service, StackError
from histomlf.stack.settings import StackSecrets, StackSettings, write_private

# Server settings of the caller's that reach the server (e.g. MLFLOW_SERVER_ALLOWED_HOSTS).
PASSED_THROUGH = ("MLFLOW_SERVER_", "MLFLOW_GUNICORN_", "MLFLOW_UVICORN_")


def service(settings: StackSettings) -> Service:
    return Service("the MLflow server", settings.run_dir / "mlflow.pid",
                   settings.logs_dir / "mlflow.log", marker="mlflow")


def pid_path(settings: StackSettings) -> Path:
    return service(settings).pid_path


def log_path(settings: StackSettings) -> Path:
    return service(settings).log_path


def auth_config_path(settings: StackSettings) -> Path:
    return settings.secrets_dir / "basic_auth.ini"


def backend_uri(settings: StackSettings) -> str:
    return settings.database_uri or postgres.tracking_uri(settings)


def auth_database_uri(settings: StackSettings) -> str:
    if settings.local_postgres:
        return postgres.auth_uri(settings)
    return settings.auth_database_uri or backend_uri(settings)


def write_auth_config(settings: StackSettings) -> None:
    """The basic-auth config: users in PostgreSQL, nobody sees anything unless granted.

    MLflow reads it with configparser's interpolation, so every `%` (a percent-encoded
    password in a database URI: `p%40ss`) is written as `%%`.
    """
    values = {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": auth_database_uri(settings),
        "admin_username": settings.admin_username,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        "auth_cache_ttl_seconds": str(settings.auth_cache_ttl_seconds),
    }
    lines = [f"{key} = {value.replace('%', '%%')}" for key, value in values.items()]
    write_private(auth_config_path(settings), "[mlflow]\n" + "\n".join(lines) + "\n")


def command(settings: StackSettings) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "server", "--host", settings.host,
        "--port", str(settings.mlflow_port), "--workers", str(settings.workers),
        "--app-name", "basic-auth", "--serve-artifacts",
    ]


def environment(settings: StackSettings, secrets: StackSecrets, admin_password: str) -> dict:
    """The server's whole environment: the base variables, the caller's MLflow *server*
    settings (and `PG*` ones for an external database), and its own settings and secrets."""
    passed = PASSED_THROUGH if settings.local_postgres else (*PASSED_THROUGH, "PG")
    env = processes.base_environment()
    env.update({k: v for k, v in os.environ.items() if k.startswith(passed)})
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
    proc = service(settings).start(
        command(settings), env=environment(settings, secrets, admin_password),
        cwd=settings.server_dir,
    )
    processes.wait_until(
        lambda: healthy(settings), what="the MLflow server", timeout=timeout, proc=proc,
        log_path=log_path(settings), interval=0.5,
    )


def pid(settings: StackSettings) -> int | None:
    return service(settings).pid()


def running(settings: StackSettings) -> bool:
    return service(settings).running()


def stop(settings: StackSettings, *, grace: float = 10.0) -> None:
    """TERM the server's process group (KILL after `grace` s)."""
    service(settings).stop(grace=grace)
