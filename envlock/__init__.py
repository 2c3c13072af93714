"""envlock: one lock file builds every environment of a model, and says how they differ.

envlock knows nothing about models or outputs; the parity package builds on it.
"""

from __future__ import annotations

from envlock.errors import EnvlockError, LockFileError, MaterializeError, StaleLockError
from envlock.lockfile import LockedEnv, LockedFile, LockedPackage, read_lock

__all__ = [
    "EnvlockError",
    "LockFileError",
    "LockedEnv",
    "LockedFile",
    "LockedPackage",
    "MaterializeError",
    "StaleLockError",
    "read_lock",
]
