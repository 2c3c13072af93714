"""Check the reference model served by MLServer against its training venv, in one command:

    python examples/mlserver/check.py                                  # passes
    python examples/mlserver/check.py --lock examples/mlserver/numpy-drift/pylock.toml
                                                                       # fails, naming numpy

It builds the serving venv from the lock with envlock (cached), records that venv's
fingerprint (`envlock fingerprint --out`: the endpoint's versions), starts MLServer there on
127.0.0.1 (free ports, one process, metrics off) serving models/espcn through its custom
runtime, writes `parity.local.toml` (this folder's parity.toml with the server's address;
into `--out`, default this folder),
runs `parity check` against it, stops the server and exits with the check's exit code.
Other options of `parity check` go after `--`: `python examples/mlserver/check.py -- --html r.html`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = Path(sys.executable).parent
MODELS = HERE / "models"
READY_WITHIN = 180.0  # seconds MLServer may take to start and load the model


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving_python(lock: Path, cache_dir: Path | None = None) -> Path:
    """The interpreter of the venv envlock builds from `lock` (its main group)."""
    from envlock.backends import VenvBackend
    from envlock.lockfile import MAIN, read_lock

    venv = VenvBackend(cache_dir).materialize(read_lock(lock), MAIN, progress=_say)
    return Path(venv.python)


def record_fingerprint(python: Path, out: Path) -> None:
    """Record the serving venv's fingerprint into `out` (`envlock fingerprint --out`)."""
    subprocess.run(
        [str(BIN / "envlock"), "fingerprint", "--python", str(python), "--out", str(out)],
        check=True,
    )


@contextlib.contextmanager
def mlserver(python: Path, log: Path) -> Iterator[str]:
    """MLServer (from the venv of `python`) serving models/ on 127.0.0.1 while the block
    runs: its URL. One process (parallel_workers 0), no metrics server (settings.json);
    stopped, with whatever it started, when the block ends, however it ends."""
    http, grpc = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(grpc),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(python.parent / "mlserver"), "start", str(MODELS)],
            env=env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped whole below
        )
    try:
        url = f"http://127.0.0.1:{http}"
        _wait_until_ready(url, server, log)
        yield url
    finally:
        stop(server)


def stop(server: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop a server started in its own process group: SIGTERM, then SIGKILL after
    `grace` seconds; the group is killed too, so nothing it started survives."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def _wait_until_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"mlserver exited ({server.returncode}) before it was ready: {log}")
        ready = f"{url}/v2/models/espcn/ready"
        with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"mlserver was not ready within {READY_WITHIN:g}s: {log}")


def write_config(url: str, fingerprint: Path, lock: Path, out: Path) -> Path:
    """This folder's parity.toml with the server's address, its recorded fingerprint and
    the lock it was built from, as `out` (its paths made absolute, so it works anywhere)."""
    import tomli_w

    config = tomllib.loads((HERE / "parity.toml").read_text())
    config["model"]["paths"] = [str((HERE / p).resolve()) for p in config["model"]["paths"]]
    for environment in config["environments"].values():
        if "lock" in environment:
            environment["lock"] = str((HERE / environment["lock"]).resolve())
    served = config["environments"]["served"]
    served |= {"url": url, "fingerprint": str(fingerprint), "lock": str(lock)}
    out.write_text(tomli_w.dumps(config))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=HERE / "locks" / "pylock.toml")
    parser.add_argument("--cache-dir", type=Path, default=None, help="envlock's venv cache")
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE,
        help="where to write parity.local.toml, the fingerprint and mlserver.log",
    )
    parser.add_argument("parity_args", nargs="*", help="more options for `parity check`")
    args = parser.parse_args(argv)
    lock = args.lock.resolve()
    python = serving_python(lock, args.cache_dir)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = out / "served.fingerprint.json"
    record_fingerprint(python, fingerprint)
    with mlserver(python, out / "mlserver.log") as url:
        _say(f"mlserver serving espcn at {url}")
        config = write_config(url, fingerprint, lock, out / "parity.local.toml")
        done = subprocess.run(
            [str(BIN / "parity"), "check", "--config", str(config), *args.parity_args],
            check=False,
        )
    return done.returncode


def _say(message: str) -> None:
    print(f"mlserver example: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
