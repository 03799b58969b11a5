"""The tracking stack from real components: auth, permissions, S3 artifacts, PostgreSQL rows,
no secret at rest, restarts. One stack per session (tests/stack_fixtures.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from stack_fixtures import CALLER_CANARY

from histomlf.cli.server import server
from histomlf.stack import (
    StackSettings,
    mlflow_server,
    postgres,
    seaweed,
    stack_status,
    start_stack,
    stop_stack,
)
from histomlf.stack.processes import free_port
from histomlf.stack.settings import ADMIN_PASSWORD_ENV, admin_password, load_settings

pytest_plugins = ["stack_fixtures"]

SEARCH = "/api/2.0/mlflow/experiments/search"


def test_settings_from_env_and_admin_password_rules(tmp_path: Path) -> None:
    settings = load_settings({"HISTOMLF_SERVER_DIR": str(tmp_path), "HISTOMLF_MLFLOW_PORT": "5123"})
    assert settings.server_dir == tmp_path and settings.tracking_uri == "http://127.0.0.1:5123"
    assert settings.artifacts_destination == "s3://histomlf/artifacts" and settings.local_postgres
    with pytest.raises(ValueError, match="MLFLOW_AUTH_ADMIN_PASSWORD is not set"):
        admin_password({})
    with pytest.raises(ValueError, match="at least 12"):
        admin_password({"MLFLOW_AUTH_ADMIN_PASSWORD": "short"})


def test_start_refuses_without_admin_password(tmp_path: Path) -> None:
    env = {"HISTOMLF_SERVER_DIR": str(tmp_path / "srv"), "MLFLOW_AUTH_ADMIN_PASSWORD": ""}
    result = CliRunner().invoke(server, ["start"], env=env)
    assert result.exit_code == 1
    assert "MLFLOW_AUTH_ADMIN_PASSWORD is not set" in result.output
    assert "Traceback" not in result.output


def test_status_of_a_never_started_dir_says_stopped(tmp_path: Path) -> None:
    env = {"HISTOMLF_SERVER_DIR": str(tmp_path), "HISTOMLF_MLFLOW_PORT": str(free_port())}
    result = CliRunner().invoke(server, ["status"], env=env)
    assert result.exit_code == 1 and "stopped" in result.output and "tracking URI" in result.output


@pytest.mark.slow
def test_status_reports_the_running_stack(tracking_stack) -> None:
    env = {"HISTOMLF_SERVER_DIR": str(tracking_stack.settings.server_dir)}
    result = CliRunner().invoke(server, ["status"], env=env)
    assert result.exit_code == 0, result.output
    assert f"tracking URI: {tracking_stack.tracking_uri}" in result.output
    assert result.output.count("running (pid") == 3
    assert all(row.running for row in stack_status(tracking_stack.settings))


@pytest.mark.slow
def test_unauthenticated_and_wrong_password_requests_get_401(tracking_stack) -> None:
    import requests

    params = {"max_results": 10}
    assert requests.get(tracking_stack.tracking_uri + SEARCH, params=params,
                        timeout=10).status_code == 401
    wrong = (tracking_stack.admin_username, "not-the-password")
    assert tracking_stack.api("GET", SEARCH, auth=wrong, params=params).status_code == 401
    assert tracking_stack.api("GET", SEARCH, params=params).status_code == 200
    assert requests.get(tracking_stack.tracking_uri + "/health", timeout=10).status_code == 200


@pytest.mark.slow
def test_user_needs_a_grant_to_read_or_write_an_experiment(tracking_stack) -> None:
    resp = tracking_stack.api("POST", "/api/2.0/mlflow/experiments/create",
                              json={"name": "private-exp"})
    resp.raise_for_status()
    exp_id = resp.json()["experiment_id"]
    alice = ("alice", "alice-password-123")
    tracking_stack.create_user(*alice)

    def read() -> int:
        return tracking_stack.api("GET", "/api/2.0/mlflow/experiments/get", auth=alice,
                                  params={"experiment_id": exp_id}).status_code

    def write() -> int:
        return tracking_stack.api("POST", "/api/2.0/mlflow/runs/create", auth=alice,
                                  json={"experiment_id": exp_id}).status_code

    assert (read(), write()) == (403, 403)
    listed = tracking_stack.api("GET", SEARCH, auth=alice, params={"max_results": 100}).json()
    assert exp_id not in {e["experiment_id"] for e in listed.get("experiments", [])}

    tracking_stack.grant_experiment("alice", exp_id, "EDIT")
    assert (read(), write()) == (200, 200)


@pytest.mark.slow
def test_logged_artifact_is_an_object_in_the_bucket_and_run_a_row_in_postgres(
    stack_client_env,
) -> None:
    import mlflow

    stack = stack_client_env
    mlflow.set_experiment("stack-artifacts")
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 0.01)
        mlflow.log_metric("loss", 0.5, step=1)
        mlflow.log_text("hello bucket", "notes/hello.txt")
    run_id = run.info.run_id
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")

    keys = stack.bucket_keys("artifacts/")
    assert any(k.endswith(f"{run_id}/artifacts/notes/hello.txt") for k in keys), keys
    body = stack.s3_client().get_object(
        Bucket=stack.bucket, Key=next(k for k in keys if run_id in k)
    )["Body"].read()
    assert body == b"hello bucket"

    rows = stack.sql(f"SELECT status FROM runs WHERE run_uuid = '{run_id}'")
    assert rows == [("FINISHED",)]
    assert stack.sql(f"SELECT value FROM params WHERE run_uuid = '{run_id}'") == [("0.01",)]


@pytest.mark.slow
def test_wrong_s3_keys_are_refused(tracking_stack) -> None:
    from botocore.exceptions import ClientError

    bad_secret = tracking_stack.s3_client(secret_key="x" * 40)
    with pytest.raises(ClientError) as info:
        bad_secret.list_objects_v2(Bucket=tracking_stack.bucket)
    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    unknown = tracking_stack.s3_client(access_key="HMUNKNOWNKEY000000000", secret_key="x" * 40)
    with pytest.raises(ClientError) as info:
        unknown.list_objects_v2(Bucket=tracking_stack.bucket)
    assert info.value.response["Error"]["Code"] == "InvalidAccessKeyId"


@pytest.mark.slow
def test_no_secret_in_logs_db_dumps_bucket_or_command_lines(stack_client_env) -> None:
    import mlflow

    stack = stack_client_env
    mlflow.set_experiment("stack-secrets")
    with mlflow.start_run() as run:
        mlflow.log_param("p", 1)
        mlflow.set_tag("t", "v")
        mlflow.log_text("x", "a.txt")
    data = mlflow.get_run(run.info.run_id).data
    pg_password = (stack.settings.secrets_dir / "pg_password").read_text().strip()
    secrets = {
        "admin password": stack.admin_password,
        "S3 secret key": stack.secrets.s3_secret_key,
        "Flask secret key": stack.secrets.flask_secret_key,
        "PostgreSQL password": pg_password,
    }
    haystacks = {"run params/tags": repr(data.params) + repr(data.tags)}
    server_dir = stack.settings.server_dir
    for log in [*(server_dir / "logs").glob("*"), server_dir / "postgres" / "postgres.log"]:
        haystacks[str(log)] = log.read_text(errors="replace")
    for db in ("mlflow", "mlflow_auth"):
        haystacks[f"pg_dump {db}"] = stack.pg_dump(db)
    client = stack.s3_client()
    for key in stack.bucket_keys():
        haystacks[f"s3://{stack.bucket}/{key}"] = client.get_object(
            Bucket=stack.bucket, Key=key)["Body"].read().decode(errors="replace")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=30)
    haystacks["ps"] = ps.stdout
    assert "users" in haystacks["pg_dump mlflow_auth"]
    for where, text in haystacks.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{name} found in {where}"


CLIENT = textwrap.dedent("""
    import sys, time, mlflow
    mlflow.set_experiment("restart-mid-run")
    with mlflow.start_run() as run:
        print(run.info.run_id, flush=True)
        for step in range(int(sys.argv[1])):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            time.sleep(0.2)
""")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mlflow_server_restart_while_a_client_logs_keeps_every_metric(tracking_stack) -> None:
    steps = 40
    env = {**_base_env(), **tracking_stack.client_env()}
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(steps)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id, proc.stderr.read() if proc.poll() is not None else "no run id"
        _wait_for(lambda: _metric_count(tracking_stack, run_id) >= 5, 120, "the first metrics")
        before = _metric_count(tracking_stack, run_id)
        tracking_stack.restart_mlflow()
        assert proc.poll() is None, "the client finished before the restart: make it longer"
        assert proc.wait(timeout=400) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert before < steps
    rows = tracking_stack.sql(
        f"SELECT step FROM metrics WHERE run_uuid = '{run_id}' AND key = 'loss' ORDER BY step"
    )
    assert [r[0] for r in rows] == list(range(steps))
    status = tracking_stack.sql(f"SELECT status FROM runs WHERE run_uuid = '{run_id}'")
    assert status == [("FINISHED",)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_whole_stack_restart_keeps_data(tracking_stack) -> None:
    resp = tracking_stack.api("POST", "/api/2.0/mlflow/experiments/create",
                              json={"name": "survives-restart"})
    resp.raise_for_status()
    exp_id = resp.json()["experiment_id"]
    settings = tracking_stack.settings
    started = time.monotonic()
    stop_stack(settings)
    stopped = time.monotonic()
    assert not any(row.running for row in stack_status(settings))
    ports = [settings.s3_port, settings.weed_master_port, settings.weed_volume_port,
             settings.weed_filer_port]
    stale = [p.name for p in Path("/tmp").glob("seaweedfs-*.sock")
             if any(p.name.endswith((f"-{n}.sock", f"-{n + 10000}.sock")) for n in ports)]
    assert stale == []
    start_stack(settings, password=tracking_stack.admin_password)
    print(f"stop {stopped - started:.1f} s, start {time.monotonic() - stopped:.1f} s")
    got = tracking_stack.api("GET", "/api/2.0/mlflow/experiments/get",
                             params={"experiment_id": exp_id})
    assert got.status_code == 200 and got.json()["experiment"]["name"] == "survives-restart"
    assert tracking_stack.bucket_keys("artifacts/"), "bucket contents lost across restart"


def _base_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}


def _metric_count(stack, run_id: str) -> int:
    return stack.sql(f"SELECT count(*) FROM metrics WHERE run_uuid = '{run_id}'")[0][0]


def _wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# --- hardening: SeaweedFS internals, modes, child environments, the auth ini, pid reuse ------

# Defaults of other things a histomlf user runs on the same machine: `histomlf web` (8080),
# `mlflow models serve` examples (5001), Spark's master (7077), master UI (8080), worker UI
# (8081) and application UI (4040).
OTHER_DEFAULT_PORTS = {8080, 5001, 7077, 8081, 4040}


def test_default_ports_are_distinct_and_clear_of_histomlf_web_and_spark() -> None:
    defaults = StackSettings(server_dir=Path("/nonexistent"))
    ports = [getattr(defaults, f.name) for f in fields(StackSettings) if f.name.endswith("port")]
    weed = [defaults.weed_master_port, defaults.weed_volume_port, defaults.weed_filer_port,
            defaults.s3_port]
    taken = ports + [p + 10000 for p in weed]
    assert len(set(taken)) == len(taken), taken
    assert not set(taken) & OTHER_DEFAULT_PORTS, set(taken) & OTHER_DEFAULT_PORTS


def test_auth_ini_keeps_a_percent_encoded_database_uri(tmp_path: Path, monkeypatch) -> None:
    from mlflow.server.auth.config import read_auth_config

    uri = "postgresql://mlflow:p%40ss@db.example.org:5432/mlflow_auth"
    settings = StackSettings(server_dir=tmp_path, database_uri=uri, admin_username="ad%min")
    mlflow_server.write_auth_config(settings)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(mlflow_server.auth_config_path(settings)))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_USERNAME", raising=False)
    config = read_auth_config()
    assert config.database_uri == uri
    assert config.admin_username == "ad%min"


def _start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: the process's start time in clock ticks after boot."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_stop_never_signals_a_reused_pid(tmp_path: Path) -> None:
    settings = StackSettings(server_dir=tmp_path / "srv")
    settings.run_dir.mkdir(parents=True)
    # Two harmless processes whose command lines look like ours, recorded as if a stack had
    # run under their pids long ago: the recorded start time is not theirs.
    decoys = {
        name: subprocess.Popen(["bash", "-c", f"exec -a {name}-server sleep 60"],
                               start_new_session=True)
        for name in ("mlflow", "weed")
    }
    try:
        time.sleep(0.2)
        for path, proc in ((mlflow_server.pid_path(settings), decoys["mlflow"]),
                           (seaweed.pid_path(settings), decoys["weed"])):
            path.write_text(f"{proc.pid} {_start_time(proc.pid) + 1}\n")
        stop_stack(settings, grace=1)
        time.sleep(0.3)
        assert [p.poll() for p in decoys.values()] == [None, None], "stop killed a stranger"
        assert not mlflow_server.running(settings) and not seaweed.running(settings)
    finally:
        for proc in decoys.values():
            proc.kill()
            proc.wait(timeout=10)


def test_service_escalates_term_to_kill_for_the_whole_group(tmp_path: Path) -> None:
    from histomlf.stack.processes import Service

    service = Service("stubborn", pid_path=tmp_path / "run" / "s.pid",
                      log_path=tmp_path / "logs" / "s.log", marker="sleep")
    # bash ignores TERM and so does its sleep child (an ignored signal stays ignored).
    service.start(["bash", "-c", "trap '' TERM; sleep 60 & echo ready; wait"],
                  env={"PATH": os.defpath})
    deadline = time.monotonic() + 10
    while "ready" not in service.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)  # TERM before the trap is set would be enough
    pid = service.pid()
    assert pid is not None and service.running()
    pid_file = service.pid_path.read_text().split()
    assert pid_file == [str(pid), str(_start_time(pid))]
    started = time.monotonic()
    assert service.stop(grace=0.5) is False  # TERM was not enough
    assert time.monotonic() - started < 5
    assert not service.running() and not service.pid_path.exists()
    deadline = time.monotonic() + 5  # the killed sleep child may wait a moment to be reaped
    while _group_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_exists(pid), "a process of the group survived KILL"


def _group_exists(pgid: int) -> bool:
    """Whether a live (not zombie) process of process group `pgid` remains."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat_file.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def _environ(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


@pytest.mark.slow
def test_each_child_gets_only_the_environment_it_needs(tracking_stack) -> None:
    settings = tracking_stack.settings
    weed_env = _environ(seaweed.pid(settings))
    pg_env = _environ(postgres.pid(settings))
    mlflow_env = _environ(mlflow_server.pid(settings))
    for name, env in (("weed", weed_env), ("postgres", pg_env)):
        assert ADMIN_PASSWORD_ENV not in env, name
        assert not any(k.startswith(("MLFLOW_", "AWS_")) for k in env), (name, sorted(env))
    for name, env in (("weed", weed_env), ("postgres", pg_env), ("mlflow", mlflow_env)):
        assert CALLER_CANARY not in env, f"{name} inherited the caller's environment"
        assert "PATH" in env, name
    assert mlflow_env[ADMIN_PASSWORD_ENV] == tracking_stack.admin_password


@pytest.mark.slow
def test_stack_folders_are_0700_and_files_0600(tracking_stack) -> None:
    root = tracking_stack.settings.server_dir
    # Root running PostgreSQL as `postgres` must let that user through the server dir (x only).
    top = 0o711 if os.geteuid() == 0 and tracking_stack.settings.local_postgres else 0o700
    assert stat.S_IMODE(root.stat().st_mode) == top
    loose = []
    for path in root.rglob("*"):
        st = path.lstat()
        # weed chmods its volume-info files (`<volume>.vif`, no data) to 0644 whatever the
        # umask; they sit in the 0700 `seaweed/` folder, and each start tightens them again.
        if path.suffix == ".vif" and path.parent == root / "seaweed":
            continue
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            if st.st_mode & 0o077:
                loose.append(f"{path.relative_to(root)} {stat.S_IMODE(st.st_mode):o}")
    ports = [tracking_stack.settings.s3_port, tracking_stack.settings.weed_master_port,
             tracking_stack.settings.weed_volume_port, tracking_stack.settings.weed_filer_port]
    for sock in Path("/tmp").glob("seaweedfs-*.sock"):
        if any(sock.name.endswith((f"-{n}.sock", f"-{n + 10000}.sock")) for n in ports):
            if sock.lstat().st_mode & 0o077:
                loose.append(f"{sock} {stat.S_IMODE(sock.lstat().st_mode):o}")
    assert loose == []


@pytest.mark.slow
def test_seaweed_internals_refuse_unauthenticated_writes(tracking_stack, tmp_path: Path) -> None:
    settings, bucket = tracking_stack.settings, tracking_stack.bucket
    upload = {"file": ("evil.py", b"import os  # planted\n")}
    # Volume server: a file id from the master, then a plain multipart upload to it.
    assign = requests.get(f"http://127.0.0.1:{settings.weed_master_port}/dir/assign",
                          timeout=10).json()
    volume = requests.post(f"http://{assign['url']}/{assign['fid']}", files=upload, timeout=10)
    assert volume.status_code == 401, (volume.status_code, volume.text)
    # Filer over HTTP: what `curl -F file=@x http://127.0.0.1:FILER/path/` does; listing too.
    filer = f"http://127.0.0.1:{settings.weed_filer_port}/buckets/{bucket}"
    written = requests.post(f"{filer}/planted-http/", files=upload, timeout=10)
    assert written.status_code == 401, (written.status_code, written.text)
    listed = requests.get(f"{filer}/?pretty=y", timeout=10)
    assert listed.status_code == 401, (listed.status_code, listed.text[:300])
    # Filer over gRPC (port + 10000) without a client certificate: CreateEntry is refused.
    grpc = pytest.importorskip("grpc")

    def field(number: int, data: bytes) -> bytes:  # one length-delimited protobuf field
        return bytes([number << 3 | 2, len(data)]) + data

    entry = field(1, b"planted-grpc.py") + field(9, b"import os  # planted\n")
    request = field(1, f"/buckets/{bucket}".encode()) + field(2, entry)
    with grpc.insecure_channel(f"127.0.0.1:{settings.weed_filer_port + 10000}") as channel:
        create = channel.unary_unary("/filer_pb.SeaweedFiler/CreateEntry")
        with pytest.raises(grpc.RpcError) as refused:
            create(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # Nothing landed, and S3 with the stack's keys still writes and reads.
    keys = tracking_stack.bucket_keys()
    assert not [k for k in keys if k.startswith(("planted-http", "planted-grpc"))], keys
    client = tracking_stack.s3_client()
    client.put_object(Bucket=bucket, Key="checks/jwt.txt", Body=b"x" * 300_000)
    body = client.get_object(Bucket=bucket, Key="checks/jwt.txt")["Body"].read()
    assert body == b"x" * 300_000
