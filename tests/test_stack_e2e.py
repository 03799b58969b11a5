"""The real product against the real tracking stack (PostgreSQL + SeaweedFS S3 + basic-auth MLflow).

A non-admin user who was granted one experiment runs `mlflow run . -e main`, and the results are
checked where they really live: the run and its params are rows in PostgreSQL, its artifacts and
model are objects in the bucket, the champion alias is in the registry and a real
`mlflow models serve -m models:/idc-classifier@champion` pulls the model through the server.
Then: a dataset pushed to S3 and trained from `s3://` (incremental: a rerun downloads nothing),
fail-fast on a dead server and a wrong password, an MLflow-only restart in the middle of real
training, and no secret anywhere the runs wrote. One stack per session (tests/stack_fixtures.py);
the user never holds S3 keys for artifacts (the server proxies them).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from helpers_mlflow import post_json, sample_patches, serve
from mlflow.tracking import MlflowClient

from histomlf.stack.processes import free_port

pytest_plugins = ["stack_fixtures"]
pytestmark = pytest.mark.slow

MODEL_NAME = "idc-classifier"
EXPERIMENT = "stack-e2e"
SMOKE = {"experiment": "smoke", "max_samples": "128", "epochs": "1"}
FAIL_FAST_S = 15.0
PROBE_BUDGET_S = 5.0
# What `histomlf train` imports before its probe runs (TensorFlow, via the Keras callback).
IMPORTS = "import histomlf.cli.train, histomlf.recipes.train"


@dataclass
class E2EContext:
    """The granted user, its experiment, a shared cache and the runs made so far."""

    stack: object = field(repr=False)
    username: str
    password: str = field(repr=False)
    experiment_id: str
    cache: Path
    logs: Path
    run_ids: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list, repr=False)

    def env(self, *, s3: bool = False, **extra: str) -> dict[str, str]:
        """A clean process environment: this user's login only (plus the S3 keys if asked)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["HISTOMLF_CACHE"] = str(self.cache)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.stack.client_env(self.username, self.password))
        if s3:
            env.update(self.stack.s3_env())
        env.update(extra)
        return env

    def admin_client(self) -> MlflowClient:
        return MlflowClient(self.stack.tracking_uri, registry_uri=self.stack.tracking_uri)


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_command(command: list[str], env: dict, timeout: float) -> Finished:
    """Run in its own process group; the whole group is killed when `timeout` passes."""
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(
            f"{command[:6]} ran past {timeout} s:\n{out[-2000:]}\n{err[-4000:]}") from None
    finally:
        kill_group(proc)
    return Finished(proc.returncode, out, err, time.monotonic() - started)


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def mlflow_run(ctx: E2EContext, entry: str, params: dict[str, str], *, s3: bool = False,
               timeout: float = 300) -> tuple[str, Finished]:
    """`mlflow run . -e ENTRY --env-manager local` as the user; returns the run id."""
    command = [sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "-e", entry,
               "--env-manager", "local", "--experiment-name", EXPERIMENT]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    done = run_command(command, ctx.env(s3=s3), timeout)
    ctx.outputs += [done.stdout, done.stderr]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    found = re.search(r"=== Run \(ID '([0-9a-f]{32})'\) succeeded ===", done.stderr)
    assert found, done.stderr[-3000:]
    ctx.run_ids.append(found.group(1))
    return found.group(1), done


@pytest.fixture(scope="module")
def e2e(tracking_stack, tmp_path_factory) -> E2EContext:
    """A user with EDIT on one experiment (created by the admin) and nothing else."""
    stack = tracking_stack
    username, password = "e2e-user", "usr-" + secrets.token_urlsafe(18)
    stack.create_user(username, password)
    resp = stack.api("POST", "/api/2.0/mlflow/experiments/create", json={"name": EXPERIMENT})
    resp.raise_for_status()
    experiment_id = resp.json()["experiment_id"]
    stack.grant_experiment(username, experiment_id, "EDIT")
    # The registry: whoever creates a registered model gets MANAGE on it (MLflow 3.17 basic
    # auth), so the user's first `main` run may create `idc-classifier`. Only if someone else
    # created it first must the admin grant it.
    got = stack.api("GET", "/api/2.0/mlflow/registered-models/get", params={"name": MODEL_NAME})
    if got.status_code == 200:
        stack.api("POST", "/api/3.0/mlflow/users/permissions/grant", json={
            "username": username, "resource_type": "registered_model",
            "resource_id": MODEL_NAME, "permission": "MANAGE",
        }).raise_for_status()
    root = tmp_path_factory.mktemp("stack-e2e")
    (root / "logs").mkdir()
    return E2EContext(stack, username, password, experiment_id, root / "cache", root / "logs")


@pytest.fixture
def admin_env(e2e: E2EContext, monkeypatch: pytest.MonkeyPatch) -> E2EContext:
    """This test process's MLflow client as the admin; no S3 keys in its environment."""
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "AWS_")):
            monkeypatch.delenv(name)
    for name, value in e2e.stack.client_env().items():
        monkeypatch.setenv(name, value)
    return e2e


def bucket_run_keys(ctx: E2EContext, run_id: str) -> list[str]:
    return [k.split(f"{run_id}/artifacts/", 1)[1]
            for k in ctx.stack.bucket_keys("artifacts/") if f"/{run_id}/artifacts/" in k]


@pytest.mark.timeout(420)
def test_main_as_granted_user_lands_in_postgres_bucket_registry_and_serves(
    admin_env: E2EContext, idc_sample: Path, tmp_path: Path
) -> None:
    ctx, stack = admin_env, admin_env.stack
    run_id, done = mlflow_run(ctx, "main", {**SMOKE, "data_dir": str(idc_sample)})
    print(f"mlflow run -e main as {ctx.username}: {done.seconds:.1f} s")

    client = ctx.admin_client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == ctx.experiment_id
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")

    # PostgreSQL holds the run and its params.
    assert stack.sql(f"SELECT status, experiment_id FROM runs WHERE run_uuid = '{run_id}'") == [
        ("FINISHED", int(ctx.experiment_id))]
    params = dict(stack.sql(f"SELECT key, value FROM params WHERE run_uuid = '{run_id}'"))
    assert params["model"] == "simplecnn" and params["max_samples"] == "128"
    assert params["data_dir"] == str(idc_sample) and params["register_as"] == MODEL_NAME
    assert stack.sql(f"SELECT count(*) FROM metrics WHERE run_uuid = '{run_id}' "
                     "AND key = 'test_roc_auc'") == [(1,)]

    # The bucket holds the run's artifacts (plots, predictions) and the logged model.
    keys = bucket_run_keys(ctx, run_id)
    for path in ("predictions/test_predictions.csv", "evaluation/test_roc.png",
                 "evaluation/training_curves.png", "config/resolved.yaml", "probe/ok.txt"):
        assert path in keys, sorted(keys)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    model_id = _logged_model_id(client, run_id)
    assert champion.run_id == run_id and model_id in champion.source, champion.source
    model_keys = [k for k in stack.bucket_keys("artifacts/") if f"/{model_id}/" in k]
    assert any(k.endswith("/MLmodel") for k in model_keys), model_keys
    assert any(k.endswith(".keras") or "/data/" in k for k in model_keys), model_keys
    body = stack.s3_client().get_object(
        Bucket=stack.bucket, Key=next(k for k in model_keys if k.endswith("/MLmodel")))
    assert b"python_function" in body["Body"].read()

    # The user who created the registered model got MANAGE on it (MLflow 3.17 basic-auth).
    listed = stack.api("GET", "/api/3.0/mlflow/users/permissions/list",
                       params={"username": ctx.username})
    assert listed.status_code == 200, listed.text
    grants = [p for p in _permission_rows(listed.json())
              if p.get("resource_type") == "registered_model"]
    assert any(MODEL_NAME in str(p) and "MANAGE" in str(p) for p in grants), listed.json()

    # `mlflow models serve` as the same user, no S3 keys: the model comes through the server.
    paths = sample_patches(idc_sample, full=3, border=1)
    payload = {"dataframe_split": {"columns": ["image"], "data": [
        [base64.b64encode(p.read_bytes()).decode()] for p in paths]}}
    user_env = {"MLFLOW_TRACKING_USERNAME": ctx.username, "MLFLOW_TRACKING_PASSWORD": ctx.password}
    with serve(f"models:/{MODEL_NAME}@champion", tracking_uri=stack.tracking_uri,
               log_dir=tmp_path, extra_env=user_env) as served:
        answer = post_json(f"{served.url}/invocations", payload)
        assert answer.status == 200, answer.body + served.log_tail()
        probabilities = np.array([row["probability"] for row in answer.json()["predictions"]])
        print(f"serve started in {served.startup_s:.1f} s")
    assert probabilities.shape == (len(paths),)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def _logged_model_id(client: MlflowClient, run_id: str) -> str:
    (output,) = client.get_run(run_id).outputs.model_outputs
    return output.model_id


def _permission_rows(payload) -> list[dict]:
    """The permission entries of a users/permissions/list answer, whatever its top-level key."""
    if isinstance(payload, dict):
        rows = [v for v in payload.values() if isinstance(v, list)]
        return [p for row in rows for p in row if isinstance(p, dict)]
    return list(payload)


def _small_dataset(sample: Path, target: Path, patients: int = 16) -> int:
    """A copy of `patients` patient folders of the sample that hold both classes."""
    picked = [d for d in sorted(sample.iterdir())
              if d.name.isdigit() and any((d / "0").glob("*.png")) and any((d / "1").glob("*.png"))]
    count = 0
    for folder in picked[:patients]:
        shutil.copytree(folder, target / folder.name)
        count += sum(1 for _ in (target / folder.name).rglob("*.png"))
    return count


def _cache_files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in folder.rglob("*.png")}


@pytest.mark.timeout(420)
def test_dataset_pushed_to_s3_trains_from_s3_and_a_rerun_downloads_nothing(
    admin_env: E2EContext, idc_sample: Path, tmp_path: Path
) -> None:
    ctx, stack = admin_env, admin_env.stack
    local = tmp_path / "idc-small"
    files = _small_dataset(idc_sample, local)
    prefix = "datasets/idc-e2e"
    uri = f"s3://{stack.bucket}/{prefix}"
    pushed = run_command([sys.executable, "-m", "histomlf", "data", "push", str(local), uri],
                         ctx.env(s3=True), timeout=180)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert f"{files} uploaded" in pushed.stdout, pushed.stdout
    assert len([k for k in stack.bucket_keys(prefix + "/") if k.endswith(".png")]) == files
    print(f"push {files} files: {pushed.seconds:.1f} s")

    first, done = mlflow_run(ctx, "train", {**SMOKE, "data_dir": uri}, s3=True)
    print(f"train from s3 (cold cache): {done.seconds:.1f} s")
    client = ctx.admin_client()
    tags = client.get_run(first).data.tags
    assert tags["histomlf.data_source"] == "s3", tags
    mirror = ctx.cache / "s3" / stack.bucket / prefix
    assert Path(tags["histomlf.data_dir"]) == mirror
    before = _cache_files(mirror)
    assert len(before) == files

    second, done = mlflow_run(ctx, "train", {**SMOKE, "data_dir": uri}, s3=True)
    print(f"train from s3 (warm cache): {done.seconds:.1f} s")
    again = client.get_run(second).data.tags
    assert again["histomlf.data_source"] == "s3"
    assert again["histomlf.data_digest"] == tags["histomlf.data_digest"]
    assert _cache_files(mirror) == before, "the second sync downloaded files again"
    for run_id in (first, second):
        assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.timeout(180)
def test_dead_server_and_wrong_password_fail_fast_with_one_line(e2e: E2EContext) -> None:
    command = [sys.executable, "-m", "histomlf", "train", "-e", "smoke", "--max-samples", "64"]
    nobody = f"http://127.0.0.1:{free_port()}"
    cases = {
        "unreachable": (e2e.env(MLFLOW_TRACKING_URI=nobody), "is unreachable (connection refused)"),
        "wrong password": (e2e.env(MLFLOW_TRACKING_PASSWORD="not-the-password-at-all"),
                           "rejected the credentials (HTTP 401)"),
    }
    # On 2 shared cores the TensorFlow import alone ranges from 5 s to well over 10 s; the
    # bound is 15 s, or the import time measured right now plus what the probe may add.
    imports = run_command([sys.executable, "-c", IMPORTS], e2e.env(), timeout=120)
    assert imports.returncode == 0, imports.stderr[-3000:]
    bound = max(FAIL_FAST_S, imports.seconds + PROBE_BUDGET_S)
    for case, (env, expected) in cases.items():
        done = run_command(command, env, timeout=60)
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        print(f"{case}: exit {done.returncode} after {done.seconds:.1f} s (imports alone "
              f"{imports.seconds:.1f} s): {errors}")
        assert done.returncode != 0, case
        assert len(errors) == 1 and expected in errors[0], done.stderr[-3000:]
        assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
        assert done.seconds < bound, f"{case} took {done.seconds:.1f} s (bound {bound:.1f} s)"


@pytest.mark.timeout(480)
def test_mlflow_restart_during_real_training_keeps_one_metric_per_epoch(
    admin_env: E2EContext, idc_sample: Path
) -> None:
    ctx, stack = admin_env, admin_env.stack
    epochs = 4
    command = [sys.executable, "-m", "histomlf", "train", "-e", "smoke", "--data-dir",
               str(idc_sample), "--epochs", str(epochs), "--max-samples", "256",
               "--batch-size", "16"]
    env = ctx.env(MLFLOW_EXPERIMENT_NAME=EXPERIMENT)
    started_ms = int(time.time() * 1000)
    # Output goes to files: a pipe nobody reads while we poll could fill up and stall training.
    out_path, err_path = ctx.logs / "restart.out", ctx.logs / "restart.err"
    with open(out_path, "wb") as out_file, open(err_path, "wb") as err_file:
        proc = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=out_file,
                                stderr=err_file, start_new_session=True)
    try:
        run_id = _wait_for(lambda: _new_run(stack, ctx.experiment_id, started_ms), 120,
                           "the training run's row", proc, err_path)
        _wait_for(lambda: _steps(stack, run_id, "epoch/val_loss"), 180,
                  "the first epoch's val_loss", proc, err_path)
        restart_began, down_at = time.monotonic(), time.time()
        assert proc.poll() is None, "training finished before the restart: make it longer"
        stack.restart_mlflow()
        outage = time.monotonic() - restart_began
        proc.wait(timeout=360)
    finally:
        kill_group(proc)
    out = out_path.read_text(errors="replace")
    err = err_path.read_text(errors="replace")
    ctx.run_ids.append(run_id)
    ctx.outputs += [out, err]
    print(f"MLflow restart took {outage:.1f} s; training exit {proc.returncode}")
    assert proc.returncode == 0, out[-2000:] + err[-6000:]
    assert stack.sql(f"SELECT status FROM runs WHERE run_uuid = '{run_id}'") == [("FINISHED",)]
    # One value per epoch (steps 0..epochs-1); the final scores have keys of their own.
    assert _steps(stack, run_id, "epoch/val_loss") == list(range(epochs))
    assert _steps(stack, run_id, "epoch/train_loss") == list(range(epochs))
    assert _steps(stack, run_id, "val_loss") == [epochs]
    rows = stack.sql(f"SELECT key, step, timestamp FROM metrics WHERE run_uuid = '{run_id}' "
                     "AND key IN ('epoch/val_loss', 'epoch/train_loss') ORDER BY timestamp")
    offsets = [(key, step, round(t / 1000 - down_at, 1)) for key, step, t in rows]
    print(f"epoch metrics, seconds after the restart began ({outage:.1f} s long): {offsets}")
    # Training logged while the server was down (the client's retries carried the write over).
    assert any(0 <= offset <= outage for _, step, offset in offsets if 0 < step < epochs), offsets
    model_id = _logged_model_id(ctx.admin_client(), run_id)
    model_keys = [k for k in stack.bucket_keys("artifacts/") if f"/{model_id}/" in k]
    assert any(k.endswith("/MLmodel") for k in model_keys), model_keys


def _new_run(stack, experiment_id: str, since_ms: int) -> str | None:
    rows = stack.sql(f"SELECT run_uuid FROM runs WHERE experiment_id = {int(experiment_id)} "
                     f"AND start_time >= {since_ms} ORDER BY start_time DESC")
    return rows[0][0] if rows else None


def _steps(stack, run_id: str, key: str) -> list[int]:
    rows = stack.sql(f"SELECT step FROM metrics WHERE run_uuid = '{run_id}' AND key = '{key}' "
                     "ORDER BY step")
    return [r[0] for r in rows]


def _wait_for(check, timeout: float, what: str, proc: subprocess.Popen, err_path: Path):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {what}:\n"
                                 + err_path.read_text(errors="replace")[-4000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.mark.timeout(180)
def test_no_secret_in_runs_bucket_or_stack_logs(admin_env: E2EContext) -> None:
    ctx, stack = admin_env, admin_env.stack
    client = ctx.admin_client()
    run_ids = ctx.run_ids or [r.info.run_id for r in client.search_runs([ctx.experiment_id])]
    assert run_ids, "no run to check"
    found = {
        "admin password": stack.admin_password,
        "user password": ctx.password,
        "S3 secret key": stack.secrets.s3_secret_key,
    }
    haystacks: dict[str, str] = {}
    for run_id in run_ids:
        data = client.get_run(run_id).data
        haystacks[f"run {run_id} params/tags"] = repr(data.params) + repr(data.tags)
    for version in client.search_model_versions(f"name = '{MODEL_NAME}'"):
        haystacks[f"{MODEL_NAME} v{version.version} tags"] = repr(version.tags)
    s3 = stack.s3_client()
    for key in stack.bucket_keys():
        haystacks[f"s3://{stack.bucket}/{key}"] = s3.get_object(
            Bucket=stack.bucket, Key=key)["Body"].read().decode(errors="replace")
    server_dir = stack.settings.server_dir
    for log in [*(server_dir / "logs").glob("*"), server_dir / "postgres" / "postgres.log"]:
        if log.is_file():
            haystacks[str(log)] = log.read_text(errors="replace")
    for i, text in enumerate(ctx.outputs):
        haystacks[f"output of the product's process #{i}"] = text
    assert any(k.startswith("s3://") for k in haystacks)
    print(f"grepped {len(haystacks)} places for {len(found)} secrets")
    for where, text in haystacks.items():
        for name, secret in found.items():
            assert secret not in text, f"{name} found in {where}"
