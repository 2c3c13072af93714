"""The one small interface every backend gives: run a Python script inside the environment.

A caller names the files the script needs (`Mount`s); the environment says where each one
appears inside it (`layout`) and runs the script with a time limit (`run_python`). For a
venv or this interpreter a file appears where it is; a container mounts it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from envlock.envvars import child_environment
from envlock.errors import EnvlockError


class RunTimeout(EnvlockError):
    """A script ran past its time limit and was killed."""

    exit_code = 3


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
    ) -> int:
        """Run `python script args...` inside; return its exit status, or raise `RunTimeout`."""
        child_env = child_environment(env)
        with log.open("wb") as out:
            # -s: no user site-packages; the environment is exactly what its lock installed.
            proc = subprocess.Popen(
                [str(self.python), "-s", script, *args],
                env=child_env,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise RunTimeout(f"timed out after {timeout:g}s and was killed") from None
            except BaseException:
                proc.kill()
                raise


def LocalEnvironment(python: str | Path | None = None) -> Environment:
    """The `local` backend: an existing interpreter (default: the one running envlock)."""
    exe = Path(python) if python else Path(sys.executable)
    return Environment(kind="local", python=exe, description=f"local interpreter {exe}")
