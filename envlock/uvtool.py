"""Find the uv executable envlock drives, and its version."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading

from envlock.errors import ToolMissingError

_lock = threading.Lock()


def find_uv() -> str:
    """Path to uv: `$ENVLOCK_UV`, the `uv` package installed with envlock, or `uv` on PATH."""
    # Serialized: the uv package's finder reads sysconfig, whose first use is not thread-safe.
    with _lock:
        return _find_uv()


@functools.cache
def _find_uv() -> str:
    explicit = os.environ.get("ENVLOCK_UV")
    if explicit:
        return explicit
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv")
    if found:
        return found
    raise ToolMissingError("uv not found: install envlock with its dependencies, or set ENVLOCK_UV")


@functools.cache
def uv_version(uv: str) -> str:
    """uv's version string, e.g. `0.13.9`."""
    out = subprocess.run([uv, "--version"], capture_output=True, text=True, check=False).stdout
    parts = out.split()
    return parts[1] if len(parts) > 1 else "unknown"
