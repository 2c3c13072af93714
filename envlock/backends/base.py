"""The one small interface every backend gives: start a Python script inside the environment."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Variables that would make a child interpreter see the host's packages instead of its own.
_LEAKY = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")


@dataclass(frozen=True)
class Environment:
    """A ready environment: the interpreter that runs code in it, and where it came from."""

    kind: str
    python: Path
    description: str
    root: Path | None = None
    created: bool = False

    def spawn(
        self,
        script: Path,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: IO[bytes] | int | None = None,
        stderr: IO[bytes] | int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `python script args...` inside this environment, isolated from the host's."""
        child_env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
        child_env.update(env or {})
        # -s: no user site-packages; the environment is exactly what its lock installed.
        return subprocess.Popen(
            [str(self.python), "-s", str(script), *args],
            env=child_env,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )


def LocalEnvironment(python: str | Path | None = None) -> Environment:
    """The `local` backend: an existing interpreter (default: the one running envlock)."""
    import sys

    exe = Path(python) if python else Path(sys.executable)
    return Environment(kind="local", python=exe, description=f"local interpreter {exe}")
