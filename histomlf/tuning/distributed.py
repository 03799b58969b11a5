"""Keras Tuner's chief/worker mode on one machine, with workers that come back when they die.

The chief is the process holding the search's parent run: it serves the oracle over gRPC
(`KERASTUNER_ORACLE_IP`/`PORT`) and runs no trials. Workers are `histomlf tune
--parent-run-id P` processes with `KERASTUNER_TUNER_ID=tuner<k>`: each asks the chief for
trials and nests its runs under P. Upstream, the chief polls every 20 s and waits forever for a
worker that died mid-trial (its trial stays "ongoing"); here the chief polls every second and
restarts a dead worker under the same id, which makes the oracle hand it the same trial again.
A worker that keeps dying is given up: its trial is ended FAILED so the search can finish.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from histomlf.errors import UserError

TUNER_ID = "KERASTUNER_TUNER_ID"
ORACLE_IP = "KERASTUNER_ORACLE_IP"
ORACLE_PORT = "KERASTUNER_ORACLE_PORT"
PARENT_ENV = "HISTOMLF_TUNE_PARENT_RUN_ID"
MAX_RESTARTS = 3
_DROP_FOR_WORKERS = ("MLFLOW_RUN_ID",)


def configure_threads(threads: int) -> None:
    """Size this process's TensorFlow thread pools (call before TensorFlow does any work)."""
    if threads <= 0:
        return
    for name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ[name] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised: the env vars still size subprocesses
        pass


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def role() -> str:
    """`chief`, `worker` or `single`, from Keras Tuner's environment variables."""
    if ORACLE_IP not in os.environ:
        return "single"
    return "chief" if "chief" in os.environ.get(TUNER_ID, "") else "worker"


def become_chief(ip: str = "127.0.0.1", port: int | None = None) -> tuple[str, int]:
    """Set this process's environment so the tuner built next is the chief."""
    port = port or free_port()
    os.environ.update({TUNER_ID: "chief", ORACLE_IP: ip, ORACLE_PORT: str(port)})
    return ip, port


@dataclass
class Worker:
    """One worker subprocess and its restart count."""

    tuner_id: str
    process: subprocess.Popen
    log: TextIO
    restarts: int = 0
    given_up: bool = False


@dataclass
class WorkerPool:
    """Start `count` workers and keep them alive while the chief serves."""

    command: list[str]
    env: Mapping[str, str]
    log_dir: Path
    count: int
    max_restarts: int = MAX_RESTARTS
    workers: dict[str, Worker] = field(default_factory=dict)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.count):
            tuner_id = f"tuner{index}"
            self.workers[tuner_id] = self._spawn(tuner_id)

    def _spawn(self, tuner_id: str, restarts: int = 0) -> Worker:
        env = {k: v for k, v in self.env.items() if k not in _DROP_FOR_WORKERS}
        env[TUNER_ID] = tuner_id
        log = open(self.log_dir / f"{tuner_id}.log", "a")  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT)
        print(f"worker {tuner_id} started (pid {process.pid})", flush=True)
        return Worker(tuner_id, process, log, restarts)

    def supervise(self, oracle: Any) -> None:
        """Restart workers that died; give up (and fail their trial) after `max_restarts`."""
        for tuner_id, worker in list(self.workers.items()):
            code = worker.process.poll()
            if code is None or code == 0 or worker.given_up:
                continue
            worker.log.close()
            if worker.restarts < self.max_restarts:
                print(f"worker {tuner_id} died (exit {code}); restarting it as {tuner_id}",
                      flush=True)
                self.workers[tuner_id] = self._spawn(tuner_id, worker.restarts + 1)
            else:
                print(f"worker {tuner_id} died {worker.restarts + 1} times; giving up on it",
                      flush=True)
                worker.given_up = True
                abandon(oracle, tuner_id, f"worker {tuner_id} died {worker.restarts + 1} times")

    def all_gone(self) -> bool:
        return all(w.given_up for w in self.workers.values())

    def stop(self, timeout: float = 10.0) -> None:
        """TERM every live worker, KILL after `timeout` s."""
        for worker in self.workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            try:
                worker.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            if not worker.log.closed:
                worker.log.close()


def abandon(oracle: Any, tuner_id: str, reason: str) -> None:
    """End the trial a lost worker held as FAILED and forget the worker, so the chief can exit."""
    from keras_tuner.src.engine import trial as trial_module

    trial = oracle.ongoing_trials.get(tuner_id)
    if trial is not None:
        trial.status = trial_module.TrialStatus.FAILED
        trial.message = reason
        oracle.end_trial(trial)
    oracle.tuner_ids.discard(tuner_id)


def serve_oracle(tuner: Any, pool: WorkerPool | None = None, poll_seconds: float = 1.0) -> None:
    """Serve the chief's oracle until every trial ended and every worker was told to stop.

    Keras Tuner's `oracle_chief.start_server` with a shorter poll and the pool's supervision.
    """
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    oracle = tuner.oracle
    tuner.save()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    server.add_insecure_port(f"{os.environ[ORACLE_IP]}:{os.environ[ORACLE_PORT]}")
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_seconds)
            if pool is not None:
                pool.supervise(oracle)
                if pool.all_gone():
                    raise UserError("every worker died and could not be restarted; see "
                                       f"{pool.log_dir}")
    finally:
        server.stop(grace=2)
        tuner.save()


def worker_command(parent_run_id: str, tuner_dir: Path, threads: int) -> list[str]:
    """The command a local worker runs (the same `histomlf tune`, as a worker)."""
    return [sys.executable, "-m", "histomlf", "tune", "--parent-run-id", parent_run_id,
            "--tuner-dir", str(tuner_dir), "--threads", str(threads)]


def worker_env(parent_run_id: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env[PARENT_ENV] = parent_run_id
    env.update({"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1",
                "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"})
    return env
