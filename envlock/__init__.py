"""envlock: one lock file builds every environment of a model, and says how they differ.

envlock knows nothing about models or outputs; the parity package builds on it. Names are
loaded on first use, so `envlock.guard()` at a service's start-up stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EnvlockError": "envlock.errors",
    "LockFileError": "envlock.errors",
    "MaterializeError": "envlock.errors",
    "StaleLockError": "envlock.errors",
    "EnvironmentDrift": "envlock.runtime",
    "EnvironmentDriftWarning": "envlock.runtime",
    "guard": "envlock.runtime",
    "LockedEnv": "envlock.lockfile",
    "LockedFile": "envlock.lockfile",
    "LockedPackage": "envlock.lockfile",
    "read_lock": "envlock.lockfile",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'envlock' has no attribute {name!r}")
