"""What the serving examples share (examples/mlserver/check.py, examples/bentoml/check.py):
build the serving venv from a lock with envlock, record its fingerprint, start a server
from it on 127.0.0.1 (free ports) in a process group of its own, wait until it answers,
write the example's parity config with the server's address, run `parity check` and stop
the server with everything it started, however the check ended."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
READY_WITHIN = 180.0  # seconds a server may take to start and load the model
# What a server needs of ours: no PYTHONPATH or VIRTUAL_ENV (its venv is its own), one thread
# as parity's workers use (run.threads = 1), no telemetry.
SERVER_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "BENTOML_DO_NOT_TRACK": "true",
}


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving_python(lock: Path, cache_dir: Path | None = None) -> Path:
    """The interpreter of the venv envlock builds from `lock` (its main group)."""
    from envlock.backends import VenvBackend
    from envlock.lockfile import MAIN, read_lock

    venv = VenvBackend(cache_dir).materialize(read_lock(lock), MAIN, progress=say)
    return Path(venv.python)


def record_fingerprint(python: Path, out: Path) -> None:
    """Record the serving venv's fingerprint into `out` (`envlock fingerprint --out`)."""
    subprocess.run(
        [str(BIN / "envlock"), "fingerprint", "--python", str(python), "--out", str(out)],
        check=True,
    )


@contextlib.contextmanager
def server(
    command: list[str], env: dict[str, str], cwd: Path, log: Path, ready: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`command` running while the block runs, once `ready` (a URL) answers 200; stopped
    with every process it started when the block ends, however it ends. The server gets a
    temporary folder of its own (TMPDIR), next to its log and removed once it is stopped:
    a server killed mid-run (BentoML makes folders in it) leaves nothing in /tmp."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    scratch = Path(tempfile.mkdtemp(prefix=f"{log.stem}-tmp-", dir=log.parent))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            env={**environ, **SERVER_ENV, "TMPDIR": str(scratch), **env},
            cwd=cwd,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group
        )
    try:
        _wait_until_ready(ready, proc, log)
        yield proc
    finally:
        stop(proc)
        shutil.rmtree(scratch, ignore_errors=True)


def stop(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Stop a server and whatever it started (its process group, and descendants that
    made groups of their own, as BentoML's workers do): SIGTERM, then SIGKILL after
    `grace` seconds."""
    family = [proc.pid, *_descendants(proc.pid)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in family[1:]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` now (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_until_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}) before it was ready: {log}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"the server was not ready within {READY_WITHIN:g}s: {log}")


def write_config(here: Path, url: str, fingerprint: Path, lock: Path, out: Path) -> Path:
    """`here`/parity.toml with the server's address, its recorded fingerprint and the lock
    it was built from, as `out` (its paths made absolute, so it works anywhere)."""
    import tomli_w

    config = tomllib.loads((here / "parity.toml").read_text())
    config["model"]["paths"] = [str((here / p).resolve()) for p in config["model"]["paths"]]
    for environment in config["environments"].values():
        if "lock" in environment:
            environment["lock"] = str((here / environment["lock"]).resolve())
    served = config["environments"]["served"]
    served |= {"url": url, "fingerprint": str(fingerprint), "lock": str(lock)}
    out.write_text(tomli_w.dumps(config))
    return out


Serve = Callable[[Path, Path], contextlib.AbstractContextManager[str]]


def main(here: Path, doc: str, serve: Serve, argv: list[str] | None = None) -> int:
    """The examples' command: build, record, serve (`serve(python, log)` gives the URL
    while it serves), check, stop; the check's exit code."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=here / "locks" / "pylock.toml")
    parser.add_argument("--cache-dir", type=Path, default=None, help="envlock's venv cache")
    parser.add_argument(
        "--out",
        type=Path,
        default=here,
        help="where to write parity.local.toml, the fingerprint and the server's log",
    )
    parser.add_argument("parity_args", nargs="*", help="more options for `parity check`")
    args = parser.parse_args(argv)
    lock = args.lock.resolve()
    python = serving_python(lock, args.cache_dir)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = out / "served.fingerprint.json"
    record_fingerprint(python, fingerprint)
    with serve(python, out / "server.log") as url:
        say(f"serving at {url}")
        config = write_config(here, url, fingerprint, lock, out / "parity.local.toml")
        done = subprocess.run(
            [str(BIN / "parity"), "check", "--config", str(config), *args.parity_args],
            check=False,
        )
    return done.returncode


def say(message: str) -> None:
    print(f"example: {message}", file=sys.stderr, flush=True)
