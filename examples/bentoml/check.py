"""Check the reference model served by BentoML against its training venv, in one command:

    python examples/bentoml/check.py                                   # passes
    python examples/bentoml/check.py --lock examples/bentoml/numpy-drift/pylock.toml
                                                                       # fails, naming numpy

It builds the serving venv from the lock with envlock (cached), records that venv's
fingerprint (`envlock fingerprint --out`: the endpoint's versions), starts `bentoml serve
service:Espcn` there on 127.0.0.1 (a free port, one worker), writes `parity.local.toml`
(this folder's parity.toml with the server's address; into `--out`, default this folder),
runs `parity check` against it (protocol = "bentoml"), stops the server and its worker and
exits with the check's exit code. Options of `parity check` go after `--`.
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
def bentoml(python: Path, log: Path) -> Iterator[str]:
    """`bentoml serve service:Espcn` on 127.0.0.1 while the block runs: its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(python.parent / "bentoml"), "serve", "service:Espcn",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with server(command, {}, HERE, log, f"{url}/readyz"):
        yield url


if __name__ == "__main__":
    sys.exit(main(HERE, __doc__, bentoml))
