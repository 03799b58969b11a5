"""A real `histomlf web` process for tests and benchmarks, never outliving its block."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from helpers_mlflow import free_port

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
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"histomlf web exited {process.returncode}:\n"
                                   + log.read_text(errors="replace")[-3000:])
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError(f"histomlf web did not answer /health in {START_TIMEOUT_S} s:"
                                   "\n" + log.read_text(errors="replace")[-3000:])
            time.sleep(0.5)
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
