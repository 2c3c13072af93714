"""What is installed on a search path, read from `*.dist-info` folder names alone.

Shared by `guard()` (at a service's start-up, where a few hundred distributions must cost
milliseconds, so no metadata is parsed) and by `envlock verify` for conda environments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from envlock.names import canonical


def installed_versions(paths: list[str] | None = None) -> dict[str, str]:
    """Name -> version of every distribution importable from `paths` (default: sys.path).

    The first distribution of a name on the path wins, as for imports.
    """
    found: dict[str, str] = {}
    for entry in paths if paths is not None else sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for folder in names:
            if folder.endswith(".dist-info"):
                name, sep, version = folder[: -len(".dist-info")].partition("-")
                if sep:
                    found.setdefault(canonical(name), version)
            elif folder.endswith(".egg-info"):
                _egg_info(os.path.join(entry, folder), found)
    return found


def _egg_info(path: str, found: dict[str, str]) -> None:
    from importlib.metadata import PathDistribution

    dist = PathDistribution(Path(path))
    name = dist.metadata["Name"]
    if name:
        found.setdefault(canonical(name), dist.version)
