"""Resuming a search after `kill -9` of its whole process group, mid-trial.

The kill is triggered by an observed event, never a sleep: a trial's first epoch metric
appearing in the sqlite store. After `resume=<parent run id>` every trial is a child of the one
original parent, each completed trial has exactly one FINISHED run and was not run again, the
interrupted attempt is KILLED and linked to its retry, nothing is left RUNNING, and the run
`mlflow run` opened for the resuming invocation says which search it resumed and ends FINISHED.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers_wait import wait_for
from test_tune_e2e import (
    EXPERIMENT,
    SMOKE,
    as_args,
    assert_search,
    first_epoch_logged,
    mlflow_run_command,
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

KILL_WAIT_S = 240


def start_and_kill_mid_trial(command: list[str], tmp_path: Path, env: dict[str, str], client,
                             trial_id: str, epoch: int | None) -> str:
    """Start a search, SIGKILL its process group once `trial_id` logged `epoch`; its parent id.

    With `epoch=None` the kill comes as soon as the trial's run is RUNNING.
    """
    log = open(tmp_path / "killed.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if epoch is None:
            wait_for(lambda: trial_running(client, trial_id), KILL_WAIT_S,
                     f"trial {trial_id} running", process=process)
        else:
            wait_for(lambda: first_epoch_logged(client, trial_id, epoch), KILL_WAIT_S,
                     f"trial {trial_id}'s epoch {epoch} in the store", process=process)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        log.close()
    (parent,) = searches(client)
    assert parent.info.status == "RUNNING"
    return parent.info.run_id


def trial_running(client, trial_id: str) -> bool:
    return any(r.data.tags.get("histomlf.trial_id") == trial_id and r.info.status == "RUNNING"
               for r in runs_of(client))


def assert_resumed(client, parent_id: str, trials: int, interrupted: str) -> list:
    runs = runs_of(client)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    children = trial_runs(client, parent_id)
    killed = [r for r in children if r.info.status == "KILLED"]
    assert [r.data.tags["histomlf.trial_id"] for r in killed] == [interrupted]
    retry = next(r for r in children if r.info.run_id == killed[0].data.tags["histomlf.retried_by"])
    assert retry.info.status == "FINISHED"
    assert retry.data.tags["histomlf.retry_of"] == killed[0].info.run_id
    assert retry.data.tags["histomlf.attempt"] == "2"
    for trial_id in {r.data.tags["histomlf.trial_id"] for r in children} - {interrupted}:
        assert len([r for r in children if r.data.tags["histomlf.trial_id"] == trial_id]) == 1
    parent = client.get_run(parent_id)
    return assert_search(client, parent, trials, tuned=("learning_rate", "dropout", "dense_units"))


def test_mlflow_run_random_search_resumes_into_its_parent(tmp_path: Path, idc_sample: Path,
                                                          shared_cache: Path) -> None:
    client = store(tmp_path)
    env = tune_env(tmp_path, shared_cache)
    # Six epochs a trial: the kill after trial 1's first epoch must land before the search
    # ends, also on a quiet machine where a 1-epoch trial takes ~3 s.
    params = {"experiment": "tune_smoke", "data_dir": str(idc_sample), "tuner": "random",
              "max_trials": "2", **SMOKE, "epochs": "6", "max_samples": "200"}
    parent_id = start_and_kill_mid_trial(mlflow_run_command(params), tmp_path, env, client,
                                         trial_id="1", epoch=0)
    result = run_ok(mlflow_run_command({"experiment": "tune_smoke", "resume": parent_id}),
                    tmp_path, env)
    assert "Reloading Tuner" in result.stdout
    assert_resumed(client, parent_id, 2, interrupted="1")
    top = [r for r in runs_of(client) if "mlflow.parentRunId" not in r.data.tags]
    launcher = next(r for r in top if r.info.run_id != parent_id)
    assert len(top) == 2 and launcher.info.status == "FINISHED"
    assert launcher.data.tags["histomlf.kind"] == "tune-resume"
    assert launcher.data.tags["histomlf.resumes"] == parent_id
    assert parent_id in launcher.data.tags["mlflow.note.content"]
    assert client.get_run(parent_id).data.tags["histomlf.resumed_by"] == launcher.info.run_id


def test_hyperband_resumes_an_interrupted_continuation(tmp_path: Path, idc_sample: Path,
                                                       shared_cache: Path) -> None:
    client = store(tmp_path)
    env = tune_env(tmp_path, shared_cache)
    args = as_args({"data-dir": str(idc_sample), "tuner": "hyperband", "max-trials": "3",
                    "max-epochs": "2", "factor": "2", **SMOKE, "max_samples": "400"})
    # Trial 2 continues the better 1-epoch trial for its 2nd (and last) epoch. Kill it as soon
    # as its run exists: once that epoch is logged, the rest of a 1-epoch continuation can end
    # between two polls on a quiet machine (CI saw the search exit first).
    parent_id = start_and_kill_mid_trial(tune_command(["-e", "tune_smoke", *args]), tmp_path,
                                         env, client, trial_id="2", epoch=None)
    result = run_ok(tune_command(["--resume", parent_id]), tmp_path, env)
    assert "Reloading Tuner" in result.stdout
    children = assert_resumed(client, parent_id, 3, interrupted="2")
    continued = next(r for r in children if r.data.tags["histomlf.trial_id"] == "2")
    assert continued.data.tags["histomlf.hyperband.initial_epoch"] == "1"
    assert continued.data.tags["histomlf.hyperband.continues"] in ("0", "1")
    assert [r.info.run_id for r in runs_of(client) if "mlflow.parentRunId" not in
            r.data.tags] == [parent_id]
    assert EXPERIMENT == client.get_experiment(continued.info.experiment_id).name


def test_resume_refuses_changes_and_unknown_searches(tmp_path: Path, shared_cache: Path) -> None:
    store(tmp_path)
    env = tune_env(tmp_path, shared_cache)
    for args, message in ((["--resume", "0" * 32], "not found"),
                          (["--resume", "0" * 32, "--dropout", "0.2"], "cannot change dropout")):
        process = subprocess.run(tune_command(args), env=env, cwd=tmp_path, capture_output=True,
                                 text=True, timeout=120)
        assert process.returncode != 0
        assert message in process.stderr and "Traceback" not in process.stderr, process.stderr
