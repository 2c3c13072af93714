"""The figures a benchmark hands to `benchmarks/bench.py`, which prints them in one table.

A benchmark prints its own table for whoever runs it alone, and calls `record` for each
figure the project promises (a ratio and its target). `record` writes one JSON line to the
file named by `PARITY_BENCH_RESULTS` when `bench.py` set it, and does nothing otherwise.
"""

from __future__ import annotations

import json
import os

RESULTS = "PARITY_BENCH_RESULTS"


def record(
    figure: str,
    value: float,
    *,
    target: float | None = None,
    at_most: bool = True,
    unit: str = "x",
    detail: str = "",
) -> None:
    """One measured figure: `value` in `unit`, met when <= `target` (>= when not `at_most`)."""
    path = os.environ.get(RESULTS)
    if not path:
        return
    line = {
        "figure": figure,
        "value": value,
        "target": target,
        "at_most": at_most,
        "unit": unit,
        "detail": detail,
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
