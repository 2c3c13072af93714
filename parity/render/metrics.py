"""A parity report as a small metrics file for DVC (`dvc metrics show` / `dvc metrics diff`).

DVC reads a JSON metrics file by flattening its objects and skipping lists, so the full
report makes a poor metric: its outputs are a list (their numbers vanish) and every
fingerprinted package version becomes a column. This keeps the numbers a reviewer
compares across commits, nested by output name:

    {"verdict": "pass", "passed": 1, "inputs": {"count": 8},
     "outputs": {"sr": {"passed": 1, "max_abs_diff": 0.0, "max_rel_diff": 0.0,
                        "mismatched": 0, "total": 18432}},
     "version_diffs": 0}

Written by `parity check --metrics metrics.json`, or from a saved report with
`python -m parity.render.metrics report.json metrics.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.outputs import MAX_JSON_BYTES

if TYPE_CHECKING:
    from parity.report import ParityReport

_OUTPUT_FIELDS = ("max_abs_diff", "max_rel_diff", "mismatched", "total")


def flat_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The metrics of a report's JSON form (`ParityReport.to_dict()`): verdict, pass as 1/0,
    per-output differences, the number of differing versions."""
    outputs: dict[str, Any] = {}
    for o in report.get("outputs", []):
        if isinstance(o, dict) and isinstance(o.get("name"), str):
            entry: dict[str, Any] = {"passed": int(bool(o.get("passed")))}
            entry.update({k: o[k] for k in _OUTPUT_FIELDS if k in o})
            outputs[o["name"]] = entry
    inputs = report.get("inputs", {})
    return {
        "verdict": report.get("verdict"),
        "passed": int(report.get("verdict") == "pass"),
        "inputs": {"count": inputs.get("count")} if isinstance(inputs, dict) else {},
        "outputs": outputs,
        # "unknown" when an environment failed: an empty list then is no evidence of none
        "version_diffs": (
            len(report.get("version_diffs", []))
            if report.get("versions_known", True)
            else "unknown"
        ),
    }


def render_metrics(report: ParityReport) -> str:
    """The metrics file's text for `report` (`parity check --metrics PATH`)."""
    return json.dumps(flat_metrics(report.to_dict()), indent=2) + "\n"


def write_metrics(report: dict[str, Any], path: Path) -> None:
    """Write the metrics of `report` to `path` as JSON, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(flat_metrics(report), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """`python -m parity.render.metrics REPORT.json METRICS.json`; exit 2 on a bad report."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m parity.render.metrics REPORT.json METRICS.json", file=sys.stderr)
        return 2
    source, target = Path(args[0]), Path(args[1])
    try:
        if source.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
        report = json.loads(source.read_text(encoding="utf-8"))
        if not isinstance(report, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        print(f"parity.render.metrics: {source}: not a parity report ({e})", file=sys.stderr)
        return 2
    write_metrics(report, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
