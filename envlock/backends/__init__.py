"""Where an environment lives: this interpreter (`local`) or a uv venv from a lock (`venv`).

Every backend gives an `Environment`: something that can start a Python script inside it.
"""

from __future__ import annotations

from envlock.backends.base import (
    Cancelled,
    Environment,
    LocalEnvironment,
    Mount,
    Running,
    RunTimeout,
    stop_all,
)
from envlock.backends.venv import VenvBackend, default_cache_dir

__all__ = [
    "Cancelled",
    "Environment",
    "LocalEnvironment",
    "Mount",
    "RunTimeout",
    "Running",
    "VenvBackend",
    "default_cache_dir",
    "stop_all",
]
