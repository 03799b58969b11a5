"""`histomlf predict --engine spark` on real Spark: `local[2]` and a standalone cluster of a
master and two 1-core workers started from pyspark's own `bin/spark-class`.

One tiny registered model (untrained, no fit: scoring is what is tested) and a few hundred real
patches of the sample, with one truncated PNG and one misplaced file added. The reference is the
in-process `histomlf predict` on the same folder; every Spark run must match it within 1e-5.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers_mlflow import tiny_keras_model
from study_store import invoke_cli, tracking_env

from histomlf.schema import RunKind, Tag
from histomlf.spark.cluster import StandaloneCluster, get_json, start_cluster
from histomlf.spark.outputs import (
    PATCHES_DIR,
    PATIENTS_FILE,
    QUARANTINE_FILE,
    read_model_metadata,
)

pytestmark = pytest.mark.slow

MODEL_NAME = "idc-spark"
SUBSET_PATIENTS = 6  # a few hundred patches, from both top folders
TRUNCATED = "10261/0/10261_idx5_x1001_y1001_class0.png"
MISPLACED = "10261/10261_idx5_x51_y51_class0.png"


def _subset(sample: Path, target: Path) -> Path:
    """A copy of the sample's first patients (both top folders) plus two bad files."""
    patients = sorted(p.name for p in sample.iterdir() if p.name.isdigit())[:SUBSET_PATIENTS]
    for pid in dict.fromkeys([*patients, "10261"]):
        for top in (sample, sample / "IDC_regular_ps50_idx5"):
            if (top / pid).is_dir():
                dest = target / top.relative_to(sample) / pid
                shutil.copytree(top / pid, dest)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    good = next((target / "10261" / "0").glob("*.png")).read_bytes()
    (target / TRUNCATED).write_bytes(good[: len(good) // 2])
    (target / MISPLACED).write_bytes(good)
    return target


class Store:
    def __init__(self, root: Path, uri: str) -> None:
        self.root, self.uri = root, uri

    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_EXPERIMENT_NAME": "spark",
                "HISTOMLF_CACHE": str(self.root / "cache"),
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@pytest.fixture(scope="session")
def spark_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A sqlite store with one tiny model registered as `idc-spark` version 1 @champion."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from histomlf.tracking.pyfunc import log_patch_classifier

    root = tmp_path_factory.mktemp("spark-store")
    store = Store(root, f"sqlite:///{root / 'mlflow.db'}")
    with tracking_env(**store.env()):
        mlflow.set_experiment("spark")
        with mlflow.start_run():
            log_patch_classifier(tiny_keras_model(seed=3), threshold=0.5,
                                 registered_model_name=MODEL_NAME)
        MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", "1")
    return store


@pytest.fixture(scope="session")
def patches_dir(tmp_path_factory: pytest.TempPathFactory, idc_sample: Path) -> Path:
    return _subset(idc_sample, tmp_path_factory.mktemp("spark-patches") / "data")


@pytest.fixture(scope="session")
def reference(spark_store: Store, patches_dir: Path, tmp_path_factory) -> dict[str, pd.DataFrame]:
    """The in-process `histomlf predict` (patches and patients) and the scanner's quarantine."""
    from histomlf.data.scan import scan_dataset
    from histomlf.recipes.evaluate import predict

    out = tmp_path_factory.mktemp("in-process") / "predictions.csv"
    with tracking_env(**spark_store.env()):
        patches_csv, patients_csv = predict(f"models:/{MODEL_NAME}@champion", str(patches_dir),
                                            out)
    return {
        "patches": pd.read_csv(patches_csv, dtype={"patient_id": str}),
        "patients": pd.read_csv(patients_csv, dtype={"patient_id": str}),
        "quarantine": scan_dataset(patches_dir, workers=1).quarantine,
    }


@pytest.fixture(scope="class")
def local_spark() -> Iterator[object]:
    """One `local[2]` session for every local test: Spark's start-up (and the Python workers'
    TensorFlow import, kept by worker reuse) is paid once, not per test."""
    from histomlf.spark.session import SparkSettings, spark_session

    with spark_session(SparkSettings(master="local[2]")) as started:
        yield started


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """A master and two workers (1 core, 1 GB for executors each), stopped whatever happens."""
    cluster = start_cluster(tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1,
                            memory="1g")
    try:
        yield cluster
    finally:
        cluster.stop()
    assert not any(d.alive() for d in [cluster.master, *cluster.workers])


def _spark_output(out: Path) -> dict[str, pd.DataFrame]:
    patches = pq.read_table(out / PATCHES_DIR).to_pandas()
    patches["patient_id"] = patches["patient_id"].astype(str)
    return {
        "patches": patches,
        "patients": pd.read_parquet(out / PATIENTS_FILE),
        "quarantine": pd.read_parquet(out / QUARANTINE_FILE),
    }


def _assert_same_as_reference(out: Path, reference: dict[str, pd.DataFrame]) -> None:
    got = _spark_output(out)
    want = reference["patches"].set_index("path").sort_index()
    have = got["patches"].set_index("path").sort_index()
    assert list(have.index) == list(want.index)  # complete: every patch once, no extra
    assert (have["probability"] - want["probability"]).abs().max() <= 1e-5
    assert (have["label"] == want["label"]).all()
    assert (have[["patient_id", "x", "y"]] == want[["patient_id", "x", "y"]]).all().all()
    patients = got["patients"].set_index("patient_id")
    expected = reference["patients"].set_index("patient_id")
    assert list(patients.index) == list(expected.index)
    assert (patients["patches"] == expected["patches"]).all()
    assert (patients["predicted_positive"] == expected["predicted_positive"]).all()
    assert (patients["mean_probability"] - expected["mean_probability"]).abs().max() <= 1e-5
    quarantine = got["quarantine"].sort_values("path").reset_index(drop=True)
    scanner = reference["quarantine"].sort_values("path").reset_index(drop=True)
    assert quarantine.to_dict("records") == scanner.to_dict("records")


def test_the_udf_result_type_is_what_mlflow_infers_from_the_signature() -> None:
    from mlflow.pyfunc import _infer_spark_udf_return_type

    from histomlf.tracking.pyfunc import SIGNATURE
    from histomlf.tracking.spark_scoring import prediction_type

    inferred = _infer_spark_udf_return_type(SIGNATURE.outputs).simpleString()
    assert prediction_type() == inferred == "struct<probability:double,label:bigint>"


class TestLocal:
    """Everything on one shared `local[2]` session (stopped at the end of the class, before the
    cluster test opens its own: a process has one SparkContext)."""

    def test_local_spark_equals_in_process_predict_and_quarantines_bad_files(
        self, local_spark, spark_store: Store, patches_dir: Path, reference: dict,
        tmp_path: Path,
    ) -> None:
        from mlflow.tracking import MlflowClient

        from histomlf.recipes.spark_predict import spark_predict

        # the scanner quarantines both bad files; Spark must give the same rows and reasons
        reasons = dict(zip(reference["quarantine"]["path"], reference["quarantine"]["reason"],
                           strict=True))
        assert reasons[str(patches_dir / TRUNCATED)].startswith("truncated image")
        assert reasons[str(patches_dir / MISPLACED)].startswith("misplaced")
        out = tmp_path / "out"
        with tracking_env(**spark_store.env()):
            result = spark_predict(f"models:/{MODEL_NAME}@champion", str(patches_dir), out,
                                   session=local_spark)
            run = MlflowClient().get_run(result["run_id"])
        _assert_same_as_reference(out, reference)
        assert result["quarantined"] == 2 and result["patches"] == len(reference["patches"])
        # @champion resolved once, before the job; the version is in the Parquet metadata
        assert result["model_uri"] == f"models:/{MODEL_NAME}/1"
        for path in (out / PATCHES_DIR, out / PATIENTS_FILE, out / QUARANTINE_FILE):
            assert read_model_metadata(path)["model_version"] == "1", path
        assert run.data.tags[Tag.KIND] == str(RunKind.SPARK_PREDICT)
        assert run.data.tags[Tag.MODEL_VERSION] == "1"
        assert run.data.params["max_records_per_batch"] == "1024"
        assert run.data.params["master"] == "local[2]"
        assert run.data.metrics["patches"] == len(reference["patches"])
        assert run.data.metrics["quarantined"] == 2
        assert run.data.metrics["patches_per_s"] > 0 and run.data.metrics["spark_startup_s"] > 0

    def test_the_spark_sql_parser_agrees_with_the_scanner_regex(self, local_spark) -> None:
        from histomlf.data.scan import PATCH_NAME
        from histomlf.spark.patches import parsed

        names = ["10253_idx5_x1351_y1101_class0.png", "9_idx5_x1_y51_class1.png",
                 "10253_idx5_x1351_y1101_class2.png", "10253_idx5_x1_y1_class0.PNG",
                 "a10253_idx5_x1_y1_class0.png", "10253_idx5_x١_y1_class0.png",
                 "10253_idx5_x1_y1_class0.png.png", "10253_idx5_x1_y1_class1.png"]
        frame = local_spark.spark.createDataFrame(
            [(f"/d/{n}", None, b"") for n in names], "path string, rel string, content binary"
        )
        rows = {r["path"].rsplit("/", 1)[1]: r for r in parsed(frame).collect()}
        for name in names:
            match, row = PATCH_NAME.match(name), rows[name]
            if match is None:
                assert row["patient_id"] == "" and row["placement"].startswith("unparsable"), name
            else:
                assert (row["patient_id"], row["x"], row["y"], row["true_label"]) == (
                    match[1], int(match[2]), int(match[3]), int(match[4])), name
                assert row["placement"] is None


def test_standalone_cluster_runs_on_both_workers_and_reruns_a_killed_workers_tasks(
    spark_store: Store, spark_cluster: StandaloneCluster, patches_dir: Path, reference: dict,
    tmp_path: Path,
) -> None:
    """One job on the 2-worker cluster: worker-1 is killed (its whole process group) once its
    executor has finished a task and is running another; Spark's own retry reruns the lost
    tasks on worker-0 and the output is still complete and equal to the in-process predict.
    Tasks ran on both workers (worker-1's before the kill, worker-0's throughout)."""
    from histomlf.recipes.spark_predict import spark_predict
    from histomlf.spark.session import SparkSettings

    victim = spark_cluster.workers[1]
    killed = threading.Event()
    seen: dict[str, object] = {}

    def kill_when_busy(started) -> None:
        """Watch the app's REST API; kill worker-1 once its executor is running a task after
        finishing at least one (an observed event, not a sleep)."""
        app, url = started.spark.sparkContext.applicationId, started.ui_url()

        def watch() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed.is_set():
                try:
                    by_worker = spark_cluster.worker_executors()
                    executors = get_json(f"{url}/api/v1/applications/{app}/executors")
                except Exception:  # noqa: BLE001 - not up yet
                    time.sleep(0.2)
                    continue
                ours = {w: {str(i["id"]) for i in infos if i.get("appid") == app}
                        for w, infos in by_worker.items()}
                seen["worker-0"] = ours.get("worker-0", set())
                for e in executors:
                    if (str(e["id"]) in ours.get(victim.name, ()) and e.get("activeTasks", 0) > 0
                            and e.get("completedTasks", 0) > 0):
                        seen["executor"] = str(e["id"])
                        seen["completed_before_kill"] = int(e["completedTasks"])
                        victim.kill()
                        killed.set()
                        return
                time.sleep(0.2)

        threading.Thread(target=watch, daemon=True).start()

    def stage_attempts(started) -> None:
        app, url = started.spark.sparkContext.applicationId, started.ui_url()
        seen["stages"] = get_json(f"{url}/api/v1/applications/{app}/stages", timeout=30)

    out = tmp_path / "out"
    with tracking_env(**spark_store.env()):
        result = spark_predict(
            f"models:/{MODEL_NAME}@champion", str(patches_dir), out,
            settings=SparkSettings(master=spark_cluster.url, tasks_per_core=4),
            on_session=kill_when_busy, before_stop=stage_attempts,
        )
    assert killed.is_set(), "worker-1 never ran a task to kill"
    _assert_same_as_reference(out, reference)  # complete and equal after the rerun
    # tasks on both workers: worker-1's executor finished some before it was killed ...
    assert seen["completed_before_kill"] > 0
    # ... and worker-0's executors ran the rest, the lost ones included
    survivors = {str(i["id"]) for i in spark_cluster.worker_executors()["worker-0"]
                 if i.get("appid") == result["app_id"]}
    assert survivors and sum(result["executor_tasks"].get(i, 0) for i in survivors) > 0
    # Spark's own retry: a task failed (lost with its executor) or a stage was re-attempted
    stages = seen["stages"]
    failed = sum(int(s.get("numFailedTasks", 0)) for s in stages)
    reattempted = [s for s in stages if int(s.get("attemptId", 0)) > 0]
    assert failed > 0 or reattempted, [(s["stageId"], s["attemptId"], s["status"]) for s in stages]


def test_the_cli_passes_its_arguments_to_the_spark_recipe_and_prints_one_json_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CLI's wiring, without a second Spark job (the recipe itself is tested above)."""
    import importlib
    import json

    import histomlf.recipes.spark_predict as recipe

    calls = []

    def fake(model_uri, data, out, *, settings):
        calls.append((model_uri, data, out, settings.master))
        return {"patches": 3, "out": str(out)}

    monkeypatch.setattr(recipe, "spark_predict", fake)
    # No model is registered for this wiring check: the store lookup is tested on its own
    # (tests/test_config_options.py), and the fake recipe never loads the model.
    verbs = importlib.import_module("histomlf.cli.evaluate")  # the module, not its command
    monkeypatch.setattr(verbs, "check_model_exists", lambda uri: None)
    monkeypatch.chdir(tmp_path)
    printed = invoke_cli("predict", f"models:/{MODEL_NAME}@champion", str(tmp_path),
                         "--engine", "spark", "--master", "spark://127.0.0.1:7077")
    assert calls == [(f"models:/{MODEL_NAME}@champion", str(tmp_path), Path("predictions"),
                      "spark://127.0.0.1:7077")]
    assert json.loads(printed.output.strip().splitlines()[-1]) == {"patches": 3,
                                                                  "out": "predictions"}


def test_missing_java_is_one_line_naming_the_debian_package(tmp_path: Path) -> None:
    """The CLI with no `java` on PATH and no JAVA_HOME: one line, before any model is resolved,
    TensorFlow imported or a JVM started (so no store or data is needed)."""
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # python, but no java
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'none.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "histomlf", "predict", f"models:/{MODEL_NAME}@champion",
         str(tmp_path), "--engine", "spark", "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: Spark needs Java 17+") and "openjdk-17-jre-headless" in last
    assert not (tmp_path / "none.db").exists()  # nothing touched the store
