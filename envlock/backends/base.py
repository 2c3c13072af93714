"""The one small interface every backend gives: run a Python script inside the environment.

A caller names the files the script needs (`Mount`s); the environment says where each one
appears inside it (`layout`) and runs the script with a time limit (`run_python`). For a
venv or this interpreter a file appears where it is; a container mounts it.

Nothing a script starts outlives it: the script runs in a process group (a session) of its
own, killed whole when `run_python` returns for any reason (exit, time limit, exception),
so a process the model forked dies with it; on Linux the script is also killed when the
thread that started it dies (`PR_SET_PDEATHSIG`). Every script running is listed in
`RUNNING`, and `stop_all()` kills them all at once (a command interrupted by Ctrl-C or
SIGTERM calls it from its signal handler).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, ClassVar

from envlock.envvars import child_environment
from envlock.errors import EnvlockError


class RunTimeout(EnvlockError):
    """A script ran past its time limit and was killed."""

    exit_code = 3


class Cancelled(EnvlockError):
    """A script killed because its caller cancelled the work it was part of: `stop_all` of
    the `Running` passed to `run_python` as `cancel` (e.g. the other side of a check failed,
    so this side's answers are no longer needed)."""

    exit_code = 3


class Stopped(BaseException):
    """A script killed by `stop_all`: the command that ran it is ending (interrupted). Not
    an Exception, as KeyboardInterrupt is not: nothing should report it as the script's own
    failure."""


@dataclass(frozen=True)
class Mount:
    """A host file or folder a script needs, and whether it may write there."""

    source: Path
    writable: bool = False


@dataclass(frozen=True)
class Environment:
    """A ready environment: the interpreter that runs code in it, and where it came from."""

    kind: str
    python: Path
    description: str
    root: Path | None = None
    created: bool = False
    # Whether a script inside sees the host's process ids (not in a container): the
    # worker then watches the host's process and kills its own group when it is gone.
    shares_host_pids: ClassVar[bool] = True
    # Whether its interpreter runs on this machine's file system, so that the host can
    # fingerprint it in a process of its own and cache that (`envlock.fingerprints`).
    probes_on_host: ClassVar[bool] = True
    # Whether `run_python` runs scripts: not for a serving endpoint, which answers requests
    # (`envlock.backends.endpoint`); a caller asks this, never the backend's kind.
    runs_scripts: ClassVar[bool] = True

    def layout(self, mounts: Mapping[str, Mount]) -> dict[str, str]:
        """Where each named mount appears inside the environment (here: where it is)."""
        return {name: str(m.source) for name, m in mounts.items()}

    def run_python(
        self,
        script: str,
        args: Sequence[str],
        *,
        mounts: Mapping[str, Mount],
        env: Mapping[str, str],
        log: Path,
        timeout: float,
        started: Callable[[], None] | None = None,
        cancel: Running | None = None,
    ) -> int:
        """Run `python script args...` inside; return its exit status, or raise `RunTimeout`.
        `started` is called once the script's process has started. The script is listed in
        `cancel` while it runs: its `stop_all` kills it, and `Cancelled` is raised."""
        child_env = child_environment(env)
        with log.open("wb") as out:
            # -s: no user site-packages; the environment is exactly what its lock installed.
            proc = subprocess.Popen(
                [str(self.python), "-s", script, *args],
                env=child_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a process group of its own, killed whole below
                preexec_fn=_dies_with_parent(),
            )
            assert proc.stdout is not None
            pump = BoundedLog(proc.stdout, out)
            try:
                kill = functools.partial(kill_group, proc.pid)
                with RUNNING.running(kill), listed(cancel, kill):
                    try:
                        if started is not None:
                            started()
                        exited = _exits_within(proc, timeout)
                    finally:
                        # However it ended, what the script started dies with it: the
                        # group is killed while its leader is not yet reaped, so the group's
                        # id cannot have been reused by then.
                        kill_group(proc.pid)
            finally:
                status = proc.wait()
                pump.finish()
        if RUNNING.stopping:
            raise Stopped(f"{self.description}: stopped")
        if cancel is not None and cancel.stopping:
            raise Cancelled(f"{self.description}: cancelled")
        if not exited:
            raise RunTimeout(f"timed out after {timeout:g}s and was killed")
        return status


# Bytes of a script's output its log keeps: the first LOG_HEAD as they come (what failed
# at start), the last LOG_TAIL when it ends (what failed at the end); a model printing
# without end fills neither the disk nor, read back for an error message, the memory.
LOG_HEAD = 1_000_000
LOG_TAIL = 1_000_000
# How long output is still read once the script's group is dead: only a process that left
# the group (setsid) can still be writing, and it is not waited for.
_DRAIN = 2.0


class BoundedLog:
    """Copies a script's output from a pipe into its log in a thread of its own: the first
    `LOG_HEAD` bytes as they come, then only the last `LOG_TAIL` bytes, written with a line
    saying how many bytes were left out between them when `finish` is called."""

    def __init__(self, pipe: IO[bytes], out: IO[bytes]) -> None:
        self._pipe, self._out = pipe, out
        self._head = 0
        self._tail = bytearray()
        self._dropped = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="script-log", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self._pipe.fileno()
        deadline = None
        while True:
            if self._done.is_set() and deadline is None:
                deadline = time.monotonic() + _DRAIN
            if deadline is not None and time.monotonic() >= deadline:
                return
            ready, _, _ = select.select([fd], [], [], 0.1 if deadline is None else 0.05)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        if self._head < LOG_HEAD:
            first = chunk[: LOG_HEAD - self._head]
            self._out.write(first)
            self._out.flush()
            self._head += len(first)
            chunk = chunk[len(first) :]
        if chunk:
            self._tail += chunk
            excess = len(self._tail) - LOG_TAIL
            if excess > 0:
                del self._tail[:excess]
                self._dropped += excess

    def finish(self) -> None:
        """Read what is left (briefly: see `_DRAIN`), then write the kept end to the log."""
        self._done.set()
        self._thread.join()
        self._pipe.close()
        if self._dropped:
            self._out.write(
                f"\n[... {self._dropped:,} bytes of output left out here ...]\n".encode()
            )
        self._out.write(self._tail)
        self._out.flush()


class Running:
    """What is running now for the scripts of `run_python` (any backend), each with the
    function that kills it; `stop_all` kills them all, and from then on kills at once
    anything that starts, until `resume`."""

    def __init__(self) -> None:
        # Re-entrant: a signal handler may call `stop_all` in a thread that holds it.
        self._lock = threading.RLock()
        self._stops: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._stopping = False

    @contextlib.contextmanager
    def running(self, stop: Callable[[], None]) -> Iterator[None]:
        """Listed while the block runs: `stop` kills what it runs (it is called at once
        when everything is being stopped)."""
        with self._lock:
            token = self._next
            self._next += 1
            self._stops[token] = stop
            if self._stopping:
                _quietly(stop)
        try:
            yield
        finally:
            with self._lock:
                del self._stops[token]

    def stop_all(self) -> int:
        """Kill everything running now, and anything that starts later (until `resume`);
        how many were running."""
        with self._lock:  # held: nothing leaves the list (and is reaped) while it is killed
            self._stopping = True
            stops = list(self._stops.values())
            for stop in stops:
                _quietly(stop)
        return len(stops)

    @property
    def stopping(self) -> bool:
        """Whether `stop_all` was called (and not yet `resume`)."""
        return self._stopping

    def resume(self) -> None:
        """Let scripts run again after `stop_all`."""
        with self._lock:
            self._stopping = False

    def __len__(self) -> int:
        return len(self._stops)


RUNNING = Running()


def listed(
    cancel: Running | None, stop: Callable[[], None]
) -> contextlib.AbstractContextManager[None]:
    """`cancel.running(stop)`, or nothing when there is no `cancel`."""
    return contextlib.nullcontext() if cancel is None else cancel.running(stop)


def stop_all() -> int:
    """Kill every script `run_python` is running, in any backend; how many there were."""
    return RUNNING.stop_all()


def run_tool(
    cmd: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool (uv) to completion, its output captured as text, as `run_python` runs a
    script: in a process group of its own, listed in `RUNNING` so that Ctrl-C or SIGTERM
    kills it from whichever thread started it (a venv built in a worker thread), dying
    with this process (even by SIGKILL), and killed whole if its caller is interrupted.
    Raise OSError when it cannot start."""
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_dies_with_parent(),
    )
    try:
        with RUNNING.running(lambda: kill_group(proc.pid)):
            stdout, stderr = proc.communicate()
    except BaseException:
        kill_group(proc.pid)
        proc.wait()
        raise
    if RUNNING.stopping:
        raise Stopped(f"{Path(cmd[0]).name}: stopped")
    return subprocess.CompletedProcess(list(cmd), proc.returncode, stdout, stderr)


def kill_group(pgid: int) -> None:
    """SIGKILL to process group `pgid`; nothing when it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _quietly(stop: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):  # gone already, or its daemon does not answer
        stop()


def _exits_within(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether child process `proc` exits within `timeout` seconds. Where the system allows
    (Linux: pidfd; else waitid), it is left unreaped: its id stays its group's."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux 5.3+
        if not hasattr(os, "waitid"):  # macOS: reaped, the group killed just after
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True
    try:
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while not poll.poll(min(max(deadline - time.monotonic(), 0), 86400) * 1000):
            if time.monotonic() >= deadline:  # a day at a time: poll takes a C int of ms
                return False
        return True
    finally:
        os.close(fd)


_PR_SET_PDEATHSIG = 1


@functools.cache
def _dies_with_parent() -> Callable[[], None] | None:
    """On Linux, the function a child runs before its program starts so that it gets
    SIGKILL when the thread that started it dies (with its process, even by SIGKILL);
    None elsewhere. The C function is looked up here, never in the forked child."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    sigkill = int(signal.SIGKILL)

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill)

    return die_with_parent


def LocalEnvironment(python: str | Path | None = None) -> Environment:
    """The `local` backend: an existing interpreter (default: the one running envlock)."""
    exe = Path(python) if python else Path(sys.executable)
    return Environment(kind="local", python=exe, description=f"local interpreter {exe}")
