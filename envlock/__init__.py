"""envlock: one lock file builds every environment of a model, and says how they differ.

envlock knows nothing about models or outputs; the parity package builds on it. Every
function the `envlock` command calls is exported here. Names are loaded on first use, so
`envlock.guard()` at a service's start-up stays cheap.
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
    "MAIN": "envlock.lockfile",
    "lock": "envlock.locking",
    "check_lock": "envlock.locking",
    "fetch": "envlock.fetch",
    "verify_wheelhouse": "envlock.fetch",
    "EnvironmentSpec": "envlock.environments",
    "open_environment": "envlock.environments",
    "VenvBackend": "envlock.backends",
    "build_images": "envlock.images",
    "Difference": "envlock.diff",
    "load_side": "envlock.diff",
    "load_sides": "envlock.diff",
    "summarize": "envlock.diff",
    # `envlock.diff` is the module; its function is exported under the name it does.
    "diff_environments": "envlock.diff:diff",
    "verify_fingerprint": "envlock.verify",
    "verify_conda_prefix": "envlock.verify",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        return getattr(importlib.import_module(module), attr or name)
    raise AttributeError(f"module 'envlock' has no attribute {name!r}")
