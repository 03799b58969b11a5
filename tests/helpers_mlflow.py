"""Shared helpers for tests that use real MLflow: a tmp sqlite store, a tiny Keras model, real
sample patches, and a real `mlflow models serve` subprocess that never outlives its test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from helpers_wait import answers, free_port, wait_for
from PIL import Image

from histomlf.environment import environ_set

SERVE_START_TIMEOUT_S = 150.0
REQUEST_TIMEOUT_S = 60.0


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")


@dataclass(frozen=True)
class TmpStore:
    """A tracking store under a test's tmp_path: sqlite backend, artifacts beside it."""

    tracking_uri: str
    experiment_id: str
    artifact_root: Path

    def start_run(self, **kwargs: Any) -> Any:
        """`mlflow.start_run` in this store's experiment (no process-wide `set_experiment`)."""
        import mlflow

        return mlflow.start_run(experiment_id=self.experiment_id, **kwargs)


@contextlib.contextmanager
def isolated_tracking() -> Iterator[None]:
    """Undo process-wide MLflow state on exit: the tracking/registry URIs, their env vars and
    the active experiment (an in-process recipe's `set_experiment` would otherwise send a later
    test's runs into another store's experiment id).

    `mlflow.set_tracking_uri` also exports `MLFLOW_TRACKING_URI`, so without this one test's
    store would leak into every later test and subprocess.
    """
    import mlflow
    from mlflow.tracking import fluent

    saved_experiment = fluent._active_experiment_id  # set_experiment() keeps it process-wide
    with environ_set({}, also_restore=_MLFLOW_ENV):  # restored after the URIs are reset
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)
            fluent._active_experiment_id = saved_experiment


@contextlib.contextmanager
def tmp_store(tmp_path: Path, experiment: str = "tests") -> Iterator[TmpStore]:
    """Point MLflow at `sqlite:///<tmp_path>/mlflow.db` (artifacts under tmp_path) while open."""
    import mlflow

    with isolated_tracking():
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        artifact_root = tmp_path / "artifacts"
        mlflow.set_tracking_uri(uri)
        experiment_id = mlflow.create_experiment(
            experiment, artifact_location=artifact_root.as_uri()
        )
        yield TmpStore(uri, experiment_id, artifact_root)


def tiny_keras_model(seed: int = 0, filters: int = 4) -> Any:
    """Rescaling(1/255) -> Conv2D -> GlobalAveragePooling -> Dense(1, sigmoid) on 50x50x3.

    Different seeds give different (untrained) scorers, enough to rank two models.
    """
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((50, 50, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(filters, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def keras_probabilities(model: Any, batch: np.ndarray) -> np.ndarray:
    """The in-process reference: the Keras model called on a float32 batch, as a flat array."""
    import keras

    output = model(batch.astype(np.float32), training=False)
    return keras.ops.convert_to_numpy(output).reshape(-1).astype(np.float64)


def sample_patches(idc_sample: Path, full: int = 6, border: int = 3) -> list[Path]:
    """`full` 50x50 real patches then `border` slide-border patches smaller than 50x50."""
    found_full: list[Path] = []
    found_border: list[Path] = []
    for path in sorted(idc_sample.rglob("*.png")):
        with Image.open(path) as image:
            target = found_full if image.size == (50, 50) else found_border
        target.append(path)
        if len(found_full) >= full and len(found_border) >= border:
            break
    return found_full[:full] + found_border[:border]


@dataclass(frozen=True)
class Served:
    """A running scoring server: its base URL, process and log file."""

    url: str
    process: subprocess.Popen
    log_path: Path
    startup_s: float

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass(frozen=True)
class Response:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def post_json(url: str, payload: Any, timeout: float = REQUEST_TIMEOUT_S) -> Response:
    """POST JSON and return status and body, 4xx/5xx included (no exception)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return Response(reply.status, reply.read().decode())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read().decode())


@contextlib.contextmanager
def serve(
    model_uri: str,
    *,
    tracking_uri: str,
    log_dir: Path,
    port: int | None = None,
    start_timeout: float = SERVE_START_TIMEOUT_S,
    extra_env: Mapping[str, str] | None = None,
    workers: int = 1,
) -> Iterator[Served]:
    """Run `mlflow models serve -m URI --env-manager local [-w WORKERS]` until the block exits.

    The server runs in its own process group (uvicorn forks a child that holds the port), is
    polled on /ping for up to `start_timeout` s, and the whole group is killed on exit: TERM,
    then KILL after 10 s. Fails with the server's log tail if it dies or never answers.
    """
    port = port or free_port()
    log_path = log_dir / f"serve-{port}.log"
    # mlflow execs `uvicorn` by name: the interpreter's bin dir must come first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking_uri, **(extra_env or {})}
    command = [
        sys.executable, "-m", "mlflow", "models", "serve",
        "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
        "-w", str(workers),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        startup_s = _wait_for_ping(url, process, log_path, start_timeout)
        yield Served(url, process, log_path, startup_s)
    finally:
        _kill_group(process)


def _wait_for_ping(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> float:
    started = time.monotonic()
    wait_for(lambda: answers(f"{url}/ping"), timeout, "mlflow models serve to answer /ping",
             process=process, log=log_path)
    return time.monotonic() - started


def _kill_group(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure no child of the group (uvicorn workers) survives it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return
