"""A Spark session for scoring images: Java checked first, executors set up to run histomlf.

What matters for images, and why it is set here rather than left to Spark's defaults:

- `spark.sql.execution.arrow.maxRecordsPerBatch`: the rows a pandas UDF gets per call. Spark's
  default is 10,000; the served pyfunc refuses more than its `serving_max_images` (1,024) per
  call, so a batch is capped at that.
- Executor cores vs TensorFlow's threads: Spark runs one Python worker (one predictor) per
  executor core, and each TensorFlow predictor starts as many intra-op threads as the machine
  has cores. Left alone, `local[2]` on two cores runs four busy threads on two cores. The
  executors get `TF_NUM_INTRAOP_THREADS` (default 1: one thread per core-slot) and
  `OMP_NUM_THREADS` to match; `benchmarks/spark_predict.py` measures the choice.
- `spark.sql.files.openCostInBytes`: Spark's 4 MB default treats each 2 KB patch as a 4 MB
  file and splits a folder into hundreds of tiny tasks, each loading the model again.
- Python workers: reused across tasks (`spark.python.worker.reuse`), forked from a daemon
  that has imported TensorFlow and MLflow (`histomlf.tracking.spark_daemon`), and the pyfunc
  keeps its loaded model per worker (`HISTOMLF_PYFUNC_PROCESS_CACHE`): in `local[N]` mode
  MLflow's `spark_udf` loads the model in every task. `benchmarks/spark_profile.py` shows
  what each costs.
- histomlf importable on the executors (`env_manager="local"`): the folder holding the
  `histomlf` package goes onto the executors' `PYTHONPATH`, the driver's Python is theirs.

The session helpers are not patch-specific: a per-slide job builds its session the same way.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histomlf.environment import environ_set

JAVA_PACKAGE = "openjdk-17-jre-headless"
JAVA_MIN_MAJOR = 17
PYFUNC_MAX_IMAGES = 1024
SPARK_EXTRA = 'pip install -e ".[spark]"'
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class SparkUnavailable(RuntimeError):
    """Spark cannot start here (no Java, an old Java, no pyspark); the message is one line."""


@dataclass(frozen=True)
class SparkSettings:
    """How a scoring job's Spark session is set up; every field has a measured default."""

    master: str = "local[*]"
    app_name: str = "histomlf"
    max_records_per_batch: int = PYFUNC_MAX_IMAGES
    tf_intra_op_threads: int = 1
    executor_cores: int | None = None
    executor_memory: str | None = None
    driver_memory: str = "1g"
    tasks_per_core: int = 2
    preload: bool = True
    conf: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.max_records_per_batch <= PYFUNC_MAX_IMAGES:
            raise ValueError(
                f"max_records_per_batch must be in 1..{PYFUNC_MAX_IMAGES} (the pyfunc's "
                f"per-call cap), got {self.max_records_per_batch}"
            )
        if self.tf_intra_op_threads < 1 or self.tasks_per_core < 1:
            raise ValueError("tf_intra_op_threads and tasks_per_core must be at least 1")


def java_executable() -> str:
    """The `java` Spark will start: `$JAVA_HOME/bin/java`, else `java` on PATH.

    Raises `SparkUnavailable` naming the Debian package when there is none or it is older than
    Java 17 (Spark 4 needs 17).
    """
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    hint = f"install Java {JAVA_MIN_MAJOR}: apt-get install -y {JAVA_PACKAGE}"
    if not java or not os.access(java, os.X_OK):
        where = f"JAVA_HOME={home} has no bin/java" if home else "no java on PATH"
        raise SparkUnavailable(f"Spark needs Java {JAVA_MIN_MAJOR}+ ({where}): {hint}")
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SparkUnavailable(f"{java} -version failed ({error}): {hint}") from error
    found = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    major = int(found[1]) if found else 0
    if major == 1 and found and found[2]:
        major = int(found[2])  # "1.8.0" is Java 8
    if major < JAVA_MIN_MAJOR:
        raise SparkUnavailable(f"Spark needs Java {JAVA_MIN_MAJOR}+, {java} is {major}: {hint}")
    return java


def check_pyspark() -> str:
    """pyspark's version; `SparkUnavailable` with the install command when it is missing."""
    try:
        import pyspark
    except ImportError as error:
        raise SparkUnavailable(f"pyspark is not installed: {SPARK_EXTRA}") from error
    return pyspark.__version__


def executor_env(settings: SparkSettings) -> dict[str, str]:
    """Environment of every executor's Python workers: histomlf importable, TF threads set."""
    threads = str(settings.tf_intra_op_threads)
    path = [str(PACKAGE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(path)),
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": "1",
        "OMP_NUM_THREADS": threads,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # one model load (and graph trace) per Python worker, not per task: see pyfunc.py
        "HISTOMLF_PYFUNC_PROCESS_CACHE": "1",
    }


def session_conf(settings: SparkSettings, local_dir: str) -> dict[str, str]:
    """Every Spark setting of a scoring session (also what the run logs)."""
    conf = {
        "spark.master": settings.master,
        "spark.app.name": settings.app_name,
        "spark.driver.memory": settings.driver_memory,
        "spark.driver.host": "127.0.0.1" if _is_local_host(settings.master) else "",
        "spark.driver.bindAddress": "127.0.0.1" if _is_local_host(settings.master) else "",
        "spark.ui.port": "0",  # a free port: 4040 may be another job's (or `histomlf web`'s)
        "spark.ui.showConsoleProgress": "false",
        "spark.local.dir": local_dir,
        "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON") or sys.executable,
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(settings.max_records_per_batch),
        # a Python worker (its imports, its loaded model) serves every task of its executor
        "spark.python.worker.reuse": "true",
        # workers forked from a daemon that has imported TensorFlow and MLflow already
        "spark.python.daemon.module": "histomlf.tracking.spark_daemon" if settings.preload else "",
        "spark.sql.files.openCostInBytes": str(64 * 1024),
        # list a patch folder on the driver: past 32 paths Spark lists them with a job of one
        # task per patient folder (220 tasks, 7.5 s for 7,914 patches; benchmarks/spark_profile)
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
        "spark.sql.shuffle.partitions": "8",
        "spark.sql.session.timeZone": "UTC",
        # patient ids are strings ("09123" must not become 9123) when a dataset is read back
        "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    }
    if settings.executor_cores:
        conf["spark.executor.cores"] = str(settings.executor_cores)
    if settings.executor_memory:
        conf["spark.executor.memory"] = settings.executor_memory
    for key, value in executor_env(settings).items():
        conf[f"spark.executorEnv.{key}"] = value
    conf.update(settings.conf)
    return {key: value for key, value in conf.items() if value != ""}


@dataclass
class StartedSpark:
    """An open session and how long it took to start (JVM, context, executors)."""

    spark: Any
    startup_s: float
    conf: dict[str, str]
    tasks_per_core: int = 2

    @property
    def total_cores(self) -> int:
        return int(self.spark.sparkContext.defaultParallelism)

    @property
    def task_count(self) -> int:
        """How many tasks a scoring job splits into: a few per core, for balance and retries."""
        return self.total_cores * self.tasks_per_core

    def ui_url(self) -> str | None:
        return self.spark.sparkContext.uiWebUrl

    def executor_tasks(self) -> dict[str, int]:
        """Executor id -> tasks it ran (done, failed, running), from the app's REST API
        (`driver` is the executor of `local[N]`)."""
        import json
        import urllib.request

        url, app = self.ui_url(), self.spark.sparkContext.applicationId
        if not url:
            return {}
        try:
            with urllib.request.urlopen(  # noqa: S310 - the session's own UI
                f"{url}/api/v1/applications/{app}/allexecutors", timeout=10
            ) as response:
                executors = json.loads(response.read())
        except OSError:
            return {}
        keys = ("activeTasks", "failedTasks", "completedTasks")
        return {str(e["id"]): sum(int(e.get(k, 0)) for k in keys) for e in executors}


@contextlib.contextmanager
def spark_session(settings: SparkSettings | None = None) -> Iterator[StartedSpark]:
    """Start a Spark session as `settings` say; stopped (and its scratch folder removed) on exit.

    Java and pyspark are checked before anything starts, so a missing one is one line, not a
    Py4J traceback. Startup seconds include waiting for a cluster's executors to register.
    """
    settings = settings or SparkSettings()
    java = java_executable()
    check_pyspark()
    from pyspark.sql import SparkSession

    environ = {
        # pyspark takes the executors' Python from this variable, not from spark.pyspark.python
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON") or sys.executable,
        "JAVA_HOME": os.environ.get("JAVA_HOME") or str(Path(os.path.realpath(java)).parents[1]),
    }
    started = time.perf_counter()
    with environ_set(environ), tempfile.TemporaryDirectory(prefix="histomlf-spark-") as local_dir:
        conf = session_conf(settings, local_dir)
        builder = SparkSession.builder
        for key, value in conf.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        try:
            spark.sparkContext.setLogLevel("ERROR")
            _wait_for_executors(spark, settings)
            yield StartedSpark(
                spark, time.perf_counter() - started, conf, settings.tasks_per_core
            )
        finally:
            spark.stop()


def _is_local_host(master: str) -> bool:
    return master.startswith("local") or "127.0.0.1" in master or "localhost" in master


def _wait_for_executors(spark: Any, settings: SparkSettings, timeout: float = 120.0) -> None:
    """On a cluster, wait until executors have registered (their cores are the parallelism)."""
    if settings.master.startswith("local"):
        return
    status = spark.sparkContext._jsc.sc().statusTracker()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # the driver is listed among the executor infos: one more than the driver means ready
        if len(status.getExecutorInfos()) > 1:
            return
        time.sleep(0.2)
    raise SparkUnavailable(
        f"no executor registered with {settings.master} within {timeout:.0f} s "
        "(are workers running, with free cores and memory?)"
    )
