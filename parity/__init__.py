"""parity: replay seeded inputs through two environments and prove they give the same answers.

Import the API from here; the `parity` command is a thin layer over it, and every
function it calls is exported here (docs/ARCHITECTURE.md shows where each lives). Names
are loaded on first use, so reading a config does not pay for NumPy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Bundle": "parity.bundle",
    "BundleError": "parity.errors",
    "load_bundle": "parity.bundle",
    "record_bundle": "parity.bundle",
    "check_against": "parity.check",
    "ConfigError": "parity.errors",
    "HostileOutputError": "parity.errors",
    "ParityError": "parity.errors",
    "WorkerError": "parity.errors",
    "ParityConfig": "parity.config",
    "load_config": "parity.config",
    "ParityReport": "parity.report",
    "TolerancePolicy": "parity.policies",
    "compare_arrays": "parity.judging.compare",
    "run_check": "parity.check",
    "FleetEntry": "parity.fleet",
    "FleetError": "parity.fleet",
    "FleetReport": "parity.fleet",
    "expand_configs": "parity.fleet",
    "run_fleet": "parity.fleet",
    "InitResult": "parity.init.project",
    "init_project": "parity.init.project",
    "BisectReport": "parity.investigations.bisect",
    "bisect_environments": "parity.investigations.bisect",
    "Localization": "parity.investigations.localize",
    "SearchError": "parity.investigations.search",
    "SearchResult": "parity.investigations.search",
    "search": "parity.investigations.search",
    "OutputComparison": "parity.comparison",
    "download_bundle": "parity.integrations.mlflow",
    "log_bundle": "parity.integrations.mlflow",
    "log_check": "parity.integrations.mlflow",
    "render_html": "parity.render.html",
    "render_junit": "parity.render.junit",
    "render_markdown": "parity.render.markdown",
    "render_metrics": "parity.render.metrics",
    "render_terminal": "parity.render.terminal",
    "render_text": "parity.render.terminal",
    "render_bisect": "parity.render.text",
    "render_search": "parity.render.text",
    "render_init": "parity.render.text",
    "render_fleet": "parity.render.fleet",
    "render_fleet_junit": "parity.render.fleet",
    "render_fleet_markdown": "parity.render.fleet",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
