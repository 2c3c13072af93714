"""Check the reference model served by MLServer against its training venv, in one command:

    python examples/mlserver/check.py                                  # passes
    python examples/mlserver/check.py --lock examples/mlserver/numpy-drift/pylock.toml
                                                                       # fails, naming numpy

It builds the serving venv from the lock with envlock (cached), records that venv's
fingerprint (`envlock fingerprint --out`: the endpoint's versions), starts MLServer there on
127.0.0.1 (free ports, one process, metrics off) serving models/espcn through its custom
runtime, writes `parity.local.toml` (this folder's parity.toml with the server's address;
into `--out`, default this folder), runs `parity check` against it, stops the server and
exits with the check's exit code. Options of `parity check` go after `--`:
`python examples/mlserver/check.py -- --html r.html`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from serving import free_port, main, server  # noqa: E402  (examples/serving.py)


@contextlib.contextmanager
def mlserver(python: Path, log: Path) -> Iterator[str]:
    """MLServer serving models/ on 127.0.0.1 while the block runs: its URL. One process
    (parallel_workers 0) and no metrics server (models/settings.json); the ports free ones
    (settings.json leaves them to these variables)."""
    http, grpc = free_port(), free_port()
    env = {"MLSERVER_HTTP_PORT": str(http), "MLSERVER_GRPC_PORT": str(grpc)}
    url = f"http://127.0.0.1:{http}"
    command = [str(python.parent / "mlserver"), "start", str(HERE / "models")]
    with server(command, env, HERE, log, f"{url}/v2/models/espcn/ready"):
        yield url


if __name__ == "__main__":
    sys.exit(main(HERE, __doc__, mlserver))
