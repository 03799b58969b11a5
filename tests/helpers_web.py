"""A real `histomlf web` process for tests and benchmarks, never outliving its block."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from helpers_wait import answers, free_port, wait_for

START_TIMEOUT_S = 120


@contextlib.contextmanager
def web_process(
    model_uri: str, tracking_uri: str, log: Path, ui_url: str | None = None
) -> Iterator[str]:
    """`histomlf web` in its own process group, killed whole (TERM, then KILL) on exit.

    Yields its base URL once `/health` answers; fails with the log's tail if it dies first.
    """
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    command = [sys.executable, "-m", "histomlf", "web", "--model", model_uri, "--port", str(port)]
    if ui_url:
        command += ["--mlflow-ui-url", ui_url]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/health", timeout=2), START_TIMEOUT_S,
                 "histomlf web to answer /health", process=process, log=log)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # any child left in the group
