"""A Spark standalone cluster on this host: one master and N workers from pyspark's own jars.

pip's pyspark ships `bin/spark-class` but not `sbin/start-master.sh`, so the daemons are
started directly: `spark-class org.apache.spark.deploy.master.Master --host 127.0.0.1 --port P
--webui-port W` and `spark-class org.apache.spark.deploy.worker.Worker --cores C --memory M
--work-dir DIR --webui-port W spark://127.0.0.1:P`, all on free ports (the master UI's default
8080 is also `histomlf web`'s). Each daemon runs in its own session (process group), so a stop
or a kill takes its executors and their Python workers with it. Used by the tests, the
benchmark and anyone trying a cluster job on one machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histomlf.spark.session import SparkSettings, executor_env, java_executable
from histomlf.stack.processes import free_port, spawn, terminate_group, wait_until

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
START_TIMEOUT_S = 90.0


def spark_home() -> Path:
    """The folder of the installed pyspark (its `bin/spark-class` and `jars/`)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - local URL
        return json.loads(response.read())


@dataclass
class Daemon:
    """One started master or worker: its process (a group leader), ports and log."""

    name: str
    process: subprocess.Popen
    ui_port: int
    log_path: Path

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """KILL the whole group at once (a crash, not a shutdown): executors go with it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        terminate_group(self.process.pid, grace=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


@dataclass
class StandaloneCluster:
    """A running master and its workers."""

    root: Path
    master: Daemon
    port: int
    workers: list[Daemon] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        """The master's JSON status: workers (state, cores, cores used), applications."""
        return get_json(f"{self.master.ui_url}/json/")

    def alive_workers(self) -> int:
        return sum(1 for w in self.status().get("workers", []) if w.get("state") == "ALIVE")

    def worker_executors(self) -> dict[str, list[dict[str, Any]]]:
        """Worker name -> the executors it runs or ran (each with `appid` and `id`)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for worker in self.workers:
            if not worker.alive():
                continue
            state = get_json(f"{worker.ui_url}/json/")
            found[worker.name] = [*state.get("executors", []), *state.get("finishedexecutors", [])]
        return found

    def start_worker(self, index: int, *, cores: int = 1, memory: str = "1g",
                     env: Mapping[str, str] | None = None) -> Daemon:
        """Start (or restart, after a kill) worker `index` with `cores` cores and `memory` for
        its executors; does not wait for it to register (`wait_for_workers`)."""
        name = f"worker-{index}"
        work_dir, ui_port, log = self.root / name, free_port(), self.root / f"{name}.log"
        work_dir.mkdir(exist_ok=True)
        process = spawn(
            [str(spark_home() / "bin" / "spark-class"), WORKER_CLASS, "--host", "127.0.0.1",
             "--cores", str(cores), "--memory", memory, "--work-dir", str(work_dir),
             "--webui-port", str(ui_port), self.url],
            log_path=log, pid_path=self.root / f"{name}.pid", env=env or _daemon_env(None),
            cwd=self.root,
        )
        daemon = Daemon(name, process, ui_port, log)
        self.workers = [w for w in self.workers if w.name != name] + [daemon]
        self.workers.sort(key=lambda w: w.name)
        return daemon

    def wait_for_workers(self, count: int, timeout: float = START_TIMEOUT_S) -> None:
        """Until `count` workers are ALIVE on the master."""
        wait_until(lambda: self.alive_workers() == count, what=f"{count} Spark workers",
                   timeout=timeout, proc=self.master.process, log_path=self.master.log_path)

    def stop(self) -> None:
        """Stop every daemon (workers first), whatever state each is in."""
        for daemon in [*self.workers, self.master]:
            with contextlib.suppress(Exception):
                daemon.stop()


def _daemon_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    java = java_executable()
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_DAEMON_MEMORY": "256m",
        **executor_env(SparkSettings()),
    }
    env.setdefault("JAVA_HOME", str(Path(os.path.realpath(java)).parents[1]))
    env.update(extra or {})
    return env


def start_cluster(
    root: str | Path,
    *,
    workers: int = 2,
    cores: int = 1,
    memory: str = "1g",
    env: Mapping[str, str] | None = None,
) -> StandaloneCluster:
    """Start a master and `workers` workers (each `cores` cores, `memory` for executors) under
    `root` (logs, work dirs); returns once every worker is ALIVE on the master."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    daemon_env = _daemon_env(env)
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, ui_port = free_port(), free_port()
    log = root / "master.log"
    master = Daemon(
        "master",
        spawn(
            [spark_class, MASTER_CLASS, "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(ui_port)],
            log_path=log, pid_path=root / "master.pid", env=daemon_env, cwd=root,
        ),
        ui_port,
        log,
    )
    cluster = StandaloneCluster(root, master, port)
    try:
        wait_until(lambda: "workers" in cluster.status(), what="Spark master",
                   timeout=START_TIMEOUT_S, proc=master.process, log_path=log)
        for index in range(workers):
            cluster.start_worker(index, cores=cores, memory=memory, env=daemon_env)
        cluster.wait_for_workers(workers)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def standalone_cluster(root: str | Path, **kwargs: Any) -> Iterator[StandaloneCluster]:
    """`start_cluster`, stopped whatever happens."""
    cluster = start_cluster(root, **kwargs)
    try:
        yield cluster
    finally:
        cluster.stop()


def tasks_by_worker(
    cluster: StandaloneCluster, app_id: str, executor_tasks: Mapping[str, int]
) -> dict[str, int]:
    """Tasks each worker's executors ran for one application: the application's per-executor
    counts (`StartedSpark.executor_tasks`) joined with each worker's JSON status."""
    counts: dict[str, int] = {}
    for worker, infos in cluster.worker_executors().items():
        ids = {str(info["id"]) for info in infos if info.get("appid") == app_id}
        counts[worker] = sum(executor_tasks.get(i, 0) for i in ids)
    return counts
