"""Polling and ports for the tests: one `wait_for`, one `free_port`, one `answers`."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str, timeout: float = 5) -> bool:
    """Whether `url` answers HTTP 200 now."""
    with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status == 200
    return False


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
    detail: Callable[[], str] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
    interval: float = 0.5,
) -> Any:
    """Poll `condition` until it returns something truthy, and return that.

    Fails naming `what` after `timeout` s, or as soon as `process` has exited; the failure
    shows the tail of `log` and `detail()` (e.g. a page's text). Exceptions of the `ignore`
    types count as "not yet".
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(*ignore):
            value = condition()
            if value:
                return value
        exited = process is not None and process.poll() is not None
        if exited or time.monotonic() > deadline:
            why = (f"process exited ({process.returncode}) before {what}" if exited
                   else f"timed out after {timeout:.0f} s waiting for {what}")
            extra = [log.read_text(errors="replace")[-4000:]] if log and log.exists() else []
            extra += [detail()] if detail is not None else []
            pytest.fail("\n".join([why, *extra]))
        time.sleep(interval)
