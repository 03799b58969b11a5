"""The stack's own PostgreSQL: initdb into `<server dir>/postgres`, the postmaster a `Service`.

PostgreSQL refuses to run as root, so when we are root its files belong to the `postgres`
user, initdb runs through `runuser` and the postmaster is started as that user. It gets only
the base environment (no admin password, no S3 keys) and stops with SIGINT (fast shutdown:
abort sessions, checkpoint), KILL after the grace period. Superuser access is only through a
Unix socket in a 0700 folder (trust, local only); TCP logins need SCRAM passwords. MLflow
connects as the `mlflow` role whose password lives in a 0600 pgpass file (`PGPASSFILE`), so no
password appears in a URI, a command line or a log; the role is created from a SCRAM hash, so
the clear password never reaches the server either.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from histomlf.stack.processes import (
    Service,
    StackError,
    base_environment,
    is_alive,
    run_checked,
    wait_until,
)
from histomlf.stack.settings import StackSettings, write_private

PG_BIN = Path(os.environ.get("HISTOMLF_PG_BIN", "/usr/lib/postgresql/15/bin"))
ROLE = "mlflow"
TRACKING_DB = "mlflow"
AUTH_DB = "mlflow_auth"
SUPERUSER = "postgres"


def pg_dir(settings: StackSettings) -> Path:
    return settings.server_dir / "postgres"


def data_dir(settings: StackSettings) -> Path:
    return pg_dir(settings) / "data"


def socket_dir(settings: StackSettings) -> Path:
    return pg_dir(settings) / "run"


def log_path(settings: StackSettings) -> Path:
    return pg_dir(settings) / "postgres.log"


def service(settings: StackSettings) -> Service:
    return Service("PostgreSQL", settings.run_dir / "postgres.pid", log_path(settings),
                   marker="postgres", stop_signal=signal.SIGINT)


def pgpass_path(settings: StackSettings) -> Path:
    return settings.secrets_dir / "pgpass"


def tracking_uri(settings: StackSettings) -> str:
    """SQLAlchemy URI of the tracking + registry DB (the password comes from PGPASSFILE)."""
    return f"postgresql://{ROLE}@127.0.0.1:{settings.pg_port}/{TRACKING_DB}"


def auth_uri(settings: StackSettings) -> str:
    """SQLAlchemy URI of the basic-auth user DB (the password comes from PGPASSFILE)."""
    return f"postgresql://{ROLE}@127.0.0.1:{settings.pg_port}/{AUTH_DB}"


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *cmd] if os.geteuid() == 0 else cmd


def _give_to_pg_user(path: Path) -> None:
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(SUPERUSER)
    except KeyError as exc:
        raise StackError("running as root, but there is no `postgres` user for PostgreSQL") from exc
    for p in [path, *path.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid)


def _check_reachable_by_pg_user(path: Path) -> None:
    if os.geteuid() != 0:
        return
    done = subprocess.run(
        _as_pg_user(["test", "-x", str(path)]), capture_output=True, timeout=10, check=False
    )
    if done.returncode != 0:
        raise StackError(
            f"the postgres user cannot enter {path}: give the folders above the server dir "
            "execute permission for others (chmod o+x) or set HISTOMLF_SERVER_DIR elsewhere"
        )


def initialized(settings: StackSettings) -> bool:
    return (data_dir(settings) / "PG_VERSION").exists()


def init(settings: StackSettings) -> None:
    """initdb once: local socket trust for the superuser, SCRAM over TCP for everyone."""
    if initialized(settings):
        return
    if not (PG_BIN / "initdb").exists():
        raise StackError(f"PostgreSQL binaries not found in {PG_BIN} (set HISTOMLF_PG_BIN)")
    root = pg_dir(settings)
    socket_dir(settings).mkdir(parents=True, exist_ok=True)
    data_dir(settings).mkdir(parents=True, exist_ok=True)
    for p in (root, data_dir(settings), socket_dir(settings)):
        p.chmod(0o700)
    _give_to_pg_user(root)
    _check_reachable_by_pg_user(root)
    run_checked(
        _as_pg_user([
            str(PG_BIN / "initdb"), "-D", str(data_dir(settings)), "-U", SUPERUSER,
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-instructions",
        ]),
        what="initdb",
        timeout=120,
        env=base_environment(),
    )


def running(settings: StackSettings) -> bool:
    """Whether the stack's postmaster (the one recorded at start) runs."""
    return service(settings).running()


def pid(settings: StackSettings) -> int | None:
    """The postmaster's pid, when it runs."""
    return service(settings).pid()


def command(settings: StackSettings) -> list[str]:
    return [
        str(PG_BIN / "postgres"), "-D", str(data_dir(settings)), "-p", str(settings.pg_port),
        "-k", str(socket_dir(settings)), "-c", "unix_socket_permissions=0700",
        "-c", "listen_addresses=127.0.0.1",
        "-c", "max_connections=60", "-c", "shared_buffers=32MB",
    ]


def start(settings: StackSettings, password: str, *, timeout: float = 60) -> None:
    """Start PostgreSQL on 127.0.0.1:`pg_port` and make sure the role and both DBs exist."""
    init(settings)
    if not running(settings):
        _refuse_unrecorded_postmaster(settings)
        as_root = os.geteuid() == 0
        home = pwd.getpwnam(SUPERUSER).pw_dir if as_root else os.environ.get("HOME", "/")
        proc = service(settings).start(
            command(settings), env=base_environment(HOME=home), cwd=data_dir(settings),
            user=SUPERUSER if as_root else None,
        )
        wait_until(lambda: _connect(settings).close() is None, what="PostgreSQL",
                   timeout=timeout, proc=proc, log_path=log_path(settings))
    _provision(settings, password)
    write_private(pgpass_path(settings), f"127.0.0.1:*:*:{ROLE}:{password}\n")


def _refuse_unrecorded_postmaster(settings: StackSettings) -> None:
    """A postmaster on our data dir that we did not record (e.g. started by `pg_ctl`)."""
    try:
        other = int((data_dir(settings) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if is_alive(other):
        raise StackError(
            f"a PostgreSQL (pid {other}) that this stack did not start runs on "
            f"{data_dir(settings)}: stop it with `pg_ctl stop -D {data_dir(settings)}`"
        )


def stop(settings: StackSettings, *, grace: float = 10.0) -> None:
    """Fast shutdown (SIGINT: abort sessions, checkpoint); KILL after `grace` s."""
    service(settings).stop(grace=grace)


def _connect(settings: StackSettings, dbname: str = "postgres"):
    import psycopg2

    return psycopg2.connect(
        host=str(socket_dir(settings)), port=settings.pg_port, user=SUPERUSER, dbname=dbname,
        connect_timeout=3,
    )


def _provision(settings: StackSettings, password: str) -> None:
    from psycopg2.extensions import encrypt_password

    conn = _connect(settings)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            verifier = encrypt_password(password, ROLE, conn, "scram-sha-256")
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(f"{verb} ROLE {ROLE} LOGIN PASSWORD %s", (verifier,))
            for db in (TRACKING_DB, AUTH_DB):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if not cur.fetchone():
                    cur.execute(f"CREATE DATABASE {db} OWNER {ROLE}")
    finally:
        conn.close()


def query(settings: StackSettings, sql: str, dbname: str = TRACKING_DB) -> list[tuple]:
    """Run one read query as the superuser over the local socket (for checks and tests)."""
    conn = _connect(settings, dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def dump(settings: StackSettings, dbname: str) -> str:
    """`pg_dump` of one of the stack's databases as SQL text."""
    pg_dump = PG_BIN / "pg_dump" if (PG_BIN / "pg_dump").exists() else shutil.which("pg_dump")
    return run_checked(
        [str(pg_dump), "-h", str(socket_dir(settings)), "-p", str(settings.pg_port),
         "-U", SUPERUSER, "--no-password", dbname],
        what=f"pg_dump {dbname}",
        timeout=120,
    )
