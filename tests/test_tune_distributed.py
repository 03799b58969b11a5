"""Distributed Keras Tuner on localhost: `histomlf tune --workers 2` (a chief and two workers).

All trials of all workers nest under the one parent, with no "run already active" collisions;
a worker killed with SIGKILL mid-trial is restarted under the same KERASTUNER_TUNER_ID, gets
its interrupted trial again, and the search still finishes every trial.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers_wait import wait_for
from test_tune_e2e import (
    RUN_TIMEOUT_S,
    SMOKE,
    as_args,
    assert_search,
    first_epoch_logged,
    run_ok,
    runs_of,
    searches,
    session_cache,
    store,
    trial_runs,
    tune_command,
    tune_env,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_cache(tmp_path_factory)

TUNED = ("learning_rate", "dropout", "dense_units")


def test_chief_and_two_workers_nest_all_trials_under_one_parent(
    tmp_path: Path, idc_sample: Path, shared_cache: Path
) -> None:
    client = store(tmp_path)
    args = as_args({"data-dir": str(idc_sample), "max-trials": "3", "workers": "2", **SMOKE})
    result = run_ok(tune_command(["-e", "tune_smoke", *args]), tmp_path,
                    tune_env(tmp_path, shared_cache))
    assert "already active" not in result.stdout
    (parent,) = searches(client)
    children = assert_search(client, parent, 3, tuned=TUNED)
    assert {r.data.tags["histomlf.tuner_id"] for r in children} <= {"tuner0", "tuner1"}
    assert all(r.data.tags["histomlf.worker_pid"] for r in children)
    top = [r.info.run_id for r in runs_of(client) if "mlflow.parentRunId" not in r.data.tags]
    assert top == [parent.info.run_id]
    logs = Path(parent.data.tags["histomlf.tuner_dir"]) / "workers"
    assert sorted(p.name for p in logs.iterdir()) == ["tuner0.log", "tuner1.log"]


def test_a_killed_worker_is_restarted_and_every_trial_finishes(
    tmp_path: Path, idc_sample: Path, shared_cache: Path
) -> None:
    client = store(tmp_path)
    # Eight epochs per trial, so a kill after the first epoch lands mid-trial even on a quiet
    # machine (with two, CI saw the trial finish between the poll and the kill).
    args = as_args({"data-dir": str(idc_sample), "max-trials": "3", "workers": "2",
                    **{**SMOKE, "epochs": "8"}})
    log_path = tmp_path / "chief.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(tune_command(["-e", "tune_smoke", *args]),
                                   env=tune_env(tmp_path, shared_cache), cwd=tmp_path,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            victim = wait_for(lambda: first_epoch_logged(client, "0") or first_epoch_logged(
                client, "1"), RUN_TIMEOUT_S, "a trial's first epoch in the store", process=process)
            os.kill(int(victim.data.tags["histomlf.worker_pid"]), signal.SIGKILL)
            process.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    output = log_path.read_text()
    assert process.returncode == 0, output[-6000:]
    tuner_id = victim.data.tags["histomlf.tuner_id"]
    assert f"restarting it as {tuner_id}" in output
    (parent,) = searches(client)
    assert_search(client, parent, 3, tuned=TUNED)
    children = trial_runs(client, parent.info.run_id)
    killed = client.get_run(victim.info.run_id)
    assert killed.info.status == "KILLED"
    retry = client.get_run(killed.data.tags["histomlf.retried_by"])
    assert retry.info.status == "FINISHED"
    assert retry.data.tags["histomlf.trial_id"] == victim.data.tags["histomlf.trial_id"]
    assert retry.data.tags["histomlf.tuner_id"] == tuner_id
    assert retry.data.tags["histomlf.worker_pid"] != victim.data.tags["histomlf.worker_pid"]
    assert not [r for r in children if r.info.status == "RUNNING"]
