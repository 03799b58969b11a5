"""Start, watch and stop the stack's long-running processes.

One `Service` per process: it runs in its own session (process group) under umask 077 with
only the environment it is given, its output appended to a 0600 log file and its pid plus its
start time in a 0600 pid file, so `histomlf server stop|status` works from any other process, a
stop takes the whole group down (uvicorn workers included) escalating TERM to KILL, and a pid
that the kernel has since given to another process is never signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from histomlf.stack.settings import private_dir, write_private

CHILD_UMASK = 0o077
# What every child may inherit from the caller; anything else it needs is passed explicitly.
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


class StackError(RuntimeError):
    """A stack component failed to start, stop or answer; the message is one line."""


def base_environment(**extra: str) -> dict[str, str]:
    """The caller's `BASE_ENV` variables (those set) plus `extra`: a child's whole environment."""
    env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(extra)
    return env


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks after boot); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Service:
    """One long-running process of the stack, known by its pid file.

    The pid file holds `<pid> <start time>`; the process counts as ours only while a process
    with that pid *and* that start time runs (and, given a `marker`, its command line holds
    it). `stop_signal` is the polite first signal (PostgreSQL's fast shutdown is SIGINT).
    """

    name: str
    pid_path: Path
    log_path: Path
    marker: str | None = None
    stop_signal: int = signal.SIGTERM

    def start(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
        user: str | None = None,
    ) -> subprocess.Popen:
        """Start `cmd` detached in a new session with exactly `env`, as `user` if given."""
        private_dir(self.log_path.parent)
        private_dir(self.pid_path.parent)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.chmod(self.log_path, 0o600)
        with os.fdopen(fd, "ab") as log:
            proc = subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(env), cwd=cwd, start_new_session=True, umask=CHILD_UMASK,
                **({"user": user, "group": user, "extra_groups": []} if user else {}),
            )
        write_private(self.pid_path, f"{proc.pid} {process_start_time(proc.pid) or 0}\n")
        return proc

    def pid(self) -> int | None:
        """The recorded pid if that very process still runs, else None."""
        try:
            recorded_pid, recorded_start = (int(v) for v in self.pid_path.read_text().split()[:2])
        except (OSError, ValueError):
            return None  # absent, or written by an older histomlf without a start time
        if not is_alive(recorded_pid) or process_start_time(recorded_pid) != recorded_start:
            return None
        if self.marker is not None:
            try:
                cmdline = Path(f"/proc/{recorded_pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                return None
            if self.marker.encode() not in cmdline:
                return None
        return recorded_pid

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self, *, grace: float = 10.0) -> bool:
        """Stop the recorded process group (if it is still ours) and drop the pid file.

        Returns True when the polite signal was enough (or nothing ran), False when KILL was
        needed after `grace` seconds.
        """
        found = self.pid()
        polite = True
        if found is not None:
            polite = terminate_group(found, grace=grace, first=self.stop_signal)
        self.pid_path.unlink(missing_ok=True)
        return polite


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


def terminate_group(pid: int, *, grace: float = 10.0, first: int = signal.SIGTERM) -> bool:
    """Send `first` (TERM) to the process group led by `pid`, KILL it after `grace` seconds.

    Returns True when the first signal was enough, False when KILL was needed.
    """
    try:
        os.killpg(pid, first)
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
