"""Start, watch and stop the stack's long-running processes.

Every service runs in its own session (process group) with its output appended to a log file
and its pid in a pid file, so `histomlf server stop|status` works from any other process and a
stop takes the whole group down (uvicorn workers included), escalating TERM to KILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class StackError(RuntimeError):
    """A stack component failed to start, stop or answer; the message is one line."""


def spawn(
    cmd: Sequence[str],
    *,
    log_path: Path,
    pid_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start `cmd` detached in a new session, output appended to `log_path`, pid to `pid_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    pid_path.write_text(f"{proc.pid}\n")
    return proc


def read_pid(pid_path: Path, marker: str | None = None) -> int | None:
    """The pid in `pid_path` if that process is alive (and its command line holds `marker`)."""
    try:
        pid = int(pid_path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not is_alive(pid):
        return None
    if marker is not None:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return None
        if marker.encode() not in cmdline:
            return None
    return pid


def is_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie child of ours is reaped and counts as dead)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def terminate_group(pid: int, *, grace: float = 10.0) -> bool:
    """Send TERM to the process group led by `pid`, KILL it after `grace` seconds.

    Returns True when TERM was enough, False when KILL was needed.
    """
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_alive(pid):
            _kill_leftovers(pid)
            return True
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 10
    while is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return False


def stop_recorded(pid_path: Path, marker: str | None = None, *, grace: float = 10.0) -> None:
    """Terminate the process group recorded in `pid_path` (if it still runs), drop the file."""
    found = read_pid(pid_path, marker)
    if found is not None:
        terminate_group(found, grace=grace)
    pid_path.unlink(missing_ok=True)


def _kill_leftovers(pgid: int) -> None:
    """KILL what remains of a group whose leader has exited (e.g. orphaned workers)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    proc: subprocess.Popen | None = None,
    log_path: Path | None = None,
    interval: float = 0.25,
) -> None:
    """Poll `check` until it returns True; fail early if `proc` exits, with its log's last line."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - any failure of a health probe means "not yet"
            pass
        if proc is not None and proc.poll() is not None:
            raise StackError(
                f"{what} exited with code {proc.returncode} while starting{_log_hint(log_path)}"
            )
        if time.monotonic() > deadline:
            raise StackError(
                f"{what} did not become ready within {timeout:.0f} s{_log_hint(log_path)}"
            )
        time.sleep(interval)


def _log_hint(log_path: Path | None) -> str:
    if log_path is None:
        return ""
    last = last_log_line(log_path)
    return f" (see {log_path}: {last})" if last else f" (see {log_path})"


def last_log_line(log_path: Path, max_chars: int = 300) -> str:
    """The last non-empty line of a log file, shortened; empty when there is none."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:max_chars] if lines else ""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1", *, below: int = 55000) -> int:
    """A currently free TCP port under `below` (SeaweedFS also binds each port + 10000)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if 1024 < port < below and not port_open(host, port + 10000, timeout=0.05):
            return port
    raise StackError("found no free TCP port")


def run_checked(cmd: Sequence[str], *, what: str, timeout: float = 60, **kwargs) -> str:
    """Run a short command, returning stdout; a failure becomes a one-line StackError."""
    try:
        done = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what} timed out after {timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {cmd[0]} not found") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise StackError(f"{what} failed: {detail[-1] if detail else f'exit {done.returncode}'}")
    return done.stdout
