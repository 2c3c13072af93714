"""`ParityReport`: the one value every rendering (terminal, JSON) is made from.

Renderers format; they never compute. The JSON form is the contract of DESIGN.md and
carries `schema_version`; add fields freely, never change the meaning of one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

if TYPE_CHECKING:
    from parity.compare import OutputComparison

SCHEMA_VERSION = "1"
# The JSON Schema of `ParityReport.to_dict()`; it ships with the package.
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "report.schema.json"
Verdict = Literal["pass", "fail", "error"]


@dataclass(frozen=True)
class EnvironmentSummary:
    """Where one environment came from and what it holds."""

    name: str
    backend: str
    description: str
    lock: str | None
    lock_digest: str | None
    group: str | None
    python: str | None
    platform: str | None
    packages: dict[str, str]
    env: dict[str, str]
    libraries: dict[str, Any]
    cpu: dict[str, Any]
    created: bool
    seconds: dict[str, float]


@dataclass(frozen=True)
class VersionDiff:
    """One package (or the interpreter) whose version differs between the environments."""

    name: str
    versions: dict[str, str | None]
    severity: str
    expected: bool
    note: str
    fails: bool = False  # whether the policy counts it against the check


@dataclass(frozen=True)
class ParityReport:
    """The outcome of a parity check: verdict, reasons, and the evidence for both."""

    verdict: Verdict
    config: str
    reference: str
    candidate: str
    inputs: dict[str, Any]
    environments: dict[str, EnvironmentSummary]
    outputs: list[OutputComparison]
    version_diffs: list[VersionDiff]
    reasons: list[str]
    errors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    calibrated: bool = False  # each environment ran twice; outputs carry their noise
    schema_version: str = SCHEMA_VERSION

    @property
    def exit_code(self) -> int:
        """0 pass, 1 fail, 3 error (see DESIGN.md)."""
        return {"pass": 0, "fail": 1, "error": 3}[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract, with every float JSON-safe (non-finite numbers as strings)."""
        outputs = []
        for o in self.outputs:
            d = asdict(o)
            d["mismatched_fraction"] = o.mismatched_fraction
            outputs.append(d)
        data = {
            "schema_version": self.schema_version,
            "verdict": self.verdict,
            "config": self.config,
            "reference": self.reference,
            "candidate": self.candidate,
            "reasons": self.reasons,
            "errors": self.errors,
            "inputs": self.inputs,
            "environments": {k: asdict(v) for k, v in self.environments.items()},
            "version_diffs": [asdict(v) for v in self.version_diffs],
            "outputs": outputs,
            "calibrated": self.calibrated,
            "seconds": self.seconds,
        }
        safe: dict[str, Any] = _json_safe(data)
        return safe

    def to_json(self) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


_VERDICT_STYLE = {"pass": ("PASS", "green"), "fail": ("FAIL", "red"), "error": ("ERROR", "red")}


def render_text(report: ParityReport, color: bool | None = None) -> str:
    """A readable summary for a terminal."""

    def s(text: str, **style: Any) -> str:
        return click.style(text, **style) if color is not False else text

    word, fg = _VERDICT_STYLE[report.verdict]
    lines = [
        f"parity check: {s(word, fg=fg, bold=True)}  ({report.config})",
        f"inputs: {report.inputs.get('count')} samples, seed {report.inputs.get('seed')}, "
        f"{report.inputs.get('digest', '')[:23]}…",
        "",
        "environments:",
    ]
    for env in report.environments.values():
        role = " (reference)" if env.name == report.reference else ""
        lines.append(
            f"  {env.name}{role}: {env.description}; python {env.python}, "
            f"{len(env.packages)} distributions"
        )
    if report.outputs:
        lines += ["", f"outputs ({report.candidate} against {report.reference}):"]
        for o in report.outputs:
            mark = s("ok  ", fg="green") if o.passed else s("FAIL", fg="red", bold=True)
            lines.append(
                f"  {mark} {o.name}: {o.candidate_dtype}{list(o.candidate_shape)}  "
                f"mismatched {o.mismatched}/{o.total}  max abs {o.max_abs_diff:.4g}  "
                f"max rel {o.max_rel_diff:.4g}  (atol={o.atol:g}, rtol={o.rtol:g})"
            )
            if o.reason:
                lines.append(f"       {o.reason}")
            if not o.passed and o.worst_index is not None:
                lines.append(
                    f"       worst at {list(o.worst_index)}: {o.worst_reference:.6g} "
                    f"({report.reference}) vs {o.worst_candidate:.6g} ({report.candidate}); "
                    f"atol that would pass: {o.atol_to_pass:.4g}"
                )
    if report.version_diffs:
        lines += ["", "version differences:"]
        names = list(report.environments)
        for v in report.version_diffs:
            a, b = (v.versions.get(n) or "-" for n in names)
            tag = s("expected", fg="cyan") if v.expected else s(v.severity, fg="yellow", bold=True)
            lines.append(f"  {v.name}: {a} ({names[0]}) vs {b} ({names[1]})  [{tag}] {v.note}")
    else:
        lines += ["", "version differences: none"]
    if report.errors:
        lines += ["", "errors:"] + [f"  {e}" for e in report.errors]
    if report.reasons:
        lines += ["", "why:"] + [f"  - {r}" for r in report.reasons]
    return "\n".join(lines) + "\n"
