"""Configuration of the tracking stack (environment variables) and its secrets on disk.

Every setting has a documented default (docs/tracking-stack.md). The resolved, secret-free
settings are written to `<server dir>/stack.json` at start, so `stop` and `status` find the
same ports from another shell. Secrets are generated once and kept in `<server dir>/secrets/`
(mode 0600); they reach the services through environment variables and 0600 files only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
MIN_ADMIN_PASSWORD_LENGTH = 12


@dataclass(frozen=True)
class StackSettings:
    """Where the stack lives and which ports and names it uses."""

    server_dir: Path
    host: str = "127.0.0.1"
    mlflow_port: int = 5000
    workers: int = 2
    pg_port: int = 5433
    s3_port: int = 8333
    weed_master_port: int = 9333
    weed_volume_port: int = 9340
    weed_filer_port: int = 8888
    bucket: str = "histomlf"
    admin_username: str = "admin"
    auth_cache_ttl_seconds: int = 60
    database_uri: str | None = None
    auth_database_uri: str | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def s3_endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def artifacts_destination(self) -> str:
        return f"s3://{self.bucket}/artifacts"

    @property
    def local_postgres(self) -> bool:
        """True when the stack runs its own PostgreSQL (no `HISTOMLF_DATABASE_URI` given)."""
        return self.database_uri is None

    @property
    def state_file(self) -> Path:
        return self.server_dir / "stack.json"

    @property
    def secrets_dir(self) -> Path:
        return self.server_dir / "secrets"

    @property
    def logs_dir(self) -> Path:
        return self.server_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.server_dir / "run"

    def save(self) -> None:
        """Record the resolved settings (no secrets) for `stop` and `status`."""
        data = dataclasses.asdict(self)
        data["server_dir"] = str(self.server_dir)
        for key in ("database_uri", "auth_database_uri"):
            data[key] = None if data[key] is None else "<external>"
        write_private(self.state_file, json.dumps(data, indent=2) + "\n")


_INT_ENV = {
    "mlflow_port": "HISTOMLF_MLFLOW_PORT",
    "workers": "HISTOMLF_MLFLOW_WORKERS",
    "pg_port": "HISTOMLF_PG_PORT",
    "s3_port": "HISTOMLF_S3_PORT",
    "weed_master_port": "HISTOMLF_WEED_MASTER_PORT",
    "weed_volume_port": "HISTOMLF_WEED_VOLUME_PORT",
    "weed_filer_port": "HISTOMLF_WEED_FILER_PORT",
    "auth_cache_ttl_seconds": "HISTOMLF_AUTH_CACHE_TTL",
}
_STR_ENV = {
    "host": "HISTOMLF_MLFLOW_HOST",
    "bucket": "HISTOMLF_S3_BUCKET",
    "admin_username": "HISTOMLF_ADMIN_USERNAME",
    "database_uri": "HISTOMLF_DATABASE_URI",
    "auth_database_uri": "HISTOMLF_AUTH_DATABASE_URI",
}


def load_settings(env: Mapping[str, str] | None = None) -> StackSettings:
    """Settings from the `HISTOMLF_*` environment variables, defaults for the rest."""
    env = os.environ if env is None else env
    server_dir = Path(env.get("HISTOMLF_SERVER_DIR") or ".histomlf-server").resolve()
    values: dict[str, object] = {}
    for key, name in _INT_ENV.items():
        if env.get(name):
            try:
                values[key] = int(env[name])
            except ValueError as exc:
                raise ValueError(f"{name} must be an integer, got {env[name]!r}") from exc
    for key, name in _STR_ENV.items():
        if env.get(name):
            values[key] = env[name]
    return StackSettings(server_dir=server_dir, **values)


def saved_settings(server_dir: Path) -> StackSettings | None:
    """The settings recorded by the last `start` in `server_dir`, or None if it never started."""
    try:
        data = json.loads((server_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return None
    data["server_dir"] = Path(data["server_dir"])
    known = {f.name for f in dataclasses.fields(StackSettings)}
    return StackSettings(**{k: v for k, v in data.items() if k in known})


def admin_password(env: Mapping[str, str] | None = None) -> str:
    """The admin password from `MLFLOW_AUTH_ADMIN_PASSWORD`; a clear error when unusable."""
    env = os.environ if env is None else env
    password = env.get(ADMIN_PASSWORD_ENV, "")
    if not password:
        raise ValueError(
            f"{ADMIN_PASSWORD_ENV} is not set: export a strong admin password "
            f"(at least {MIN_ADMIN_PASSWORD_LENGTH} characters) before `histomlf server start`"
        )
    if len(password) < MIN_ADMIN_PASSWORD_LENGTH:
        raise ValueError(
            f"{ADMIN_PASSWORD_ENV} is too short: MLflow needs at least "
            f"{MIN_ADMIN_PASSWORD_LENGTH} characters"
        )
    return password


def ensure_secret(path: Path, length: int = 40, alphabet: str | None = None) -> str:
    """Read the secret stored at `path`, creating it (mode 0600) on first use."""
    if path.exists():
        return path.read_text().strip()
    private_dir(path.parent)
    alphabet = alphabet or (string.ascii_letters + string.digits)
    value = "".join(secrets.choice(alphabet) for _ in range(length))
    write_private(path, value + "\n")
    return value


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """Create `path` (and missing parents) and give it `mode` (owner only by default)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(mode)
    return path


def write_private(path: Path, text: str | bytes) -> None:
    """Write `text` to `path` readable by the owner only (created 0600, never world-readable)."""
    if not path.parent.is_dir():
        private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(text.encode() if isinstance(text, str) else text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


_KEY_ID_ALPHABET = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class StackSecrets:
    """The generated secrets of one server dir (never printed, logged or put on a command line)."""

    s3_access_key: str
    s3_secret_key: str = field(repr=False)
    flask_secret_key: str = field(repr=False)
    pg_password: str = field(repr=False)


def ensure_secrets(settings: StackSettings) -> StackSecrets:
    """Create the stack's secrets once; later calls return the same values."""
    d = settings.secrets_dir
    return StackSecrets(
        s3_access_key="HM" + ensure_secret(d / "s3_access_key", 18, _KEY_ID_ALPHABET),
        s3_secret_key=ensure_secret(d / "s3_secret_key", 40),
        flask_secret_key=ensure_secret(d / "flask_secret_key", 64),
        pg_password=ensure_secret(d / "pg_password", 32),
    )
