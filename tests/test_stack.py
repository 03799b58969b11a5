"""The tracking stack from real components: auth, permissions, S3 artifacts, PostgreSQL rows,
no secret at rest, restarts. One stack per session (tests/stack_fixtures.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from histomlf.cli.server import server
from histomlf.stack import stack_status, start_stack, stop_stack
from histomlf.stack.processes import free_port
from histomlf.stack.settings import admin_password, load_settings

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
