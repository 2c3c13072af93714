"""parity: replay seeded inputs through two environments and prove they give the same answers.

Import the API from here; the `parity` command is a thin layer over it.
"""

from __future__ import annotations

from parity.check import run_check
from parity.compare import Tolerance, compare_arrays
from parity.config import ParityConfig, load_config
from parity.errors import ConfigError, HostileOutputError, ParityError, WorkerError
from parity.report import ParityReport

__all__ = [
    "ConfigError",
    "HostileOutputError",
    "ParityConfig",
    "ParityError",
    "ParityReport",
    "Tolerance",
    "WorkerError",
    "compare_arrays",
    "load_config",
    "run_check",
]
