"""`ParityReport`: the one value every rendering (terminal, JSON) is made from.

Renderers format; they never compute. The JSON form is a contract (docs/ARCHITECTURE.md) and
carries `schema_version`; add fields freely, never change the meaning of one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from parity.comparison import OutputComparison
from parity.errors import was_stopped
from parity.jsontext import json_safe, json_text
from parity.judging.caught import WarningFinding
from parity.judging.versions import VersionDiff
from parity.runs.replay import EnvironmentSummary

if TYPE_CHECKING:
    from parity.investigations.localize import Localization

__all__ = [
    "BundleReference",
    "EnvironmentSummary",
    "ParityReport",
    "Verdict",
    "VersionDiff",
    "WarningFinding",
]

SCHEMA_VERSION = "1"
# The JSON Schema of `ParityReport.to_dict()`; it ships with the package.
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "report.schema.json"
Verdict = Literal["pass", "fail", "error"]


@dataclass(frozen=True)
class BundleReference:
    """The golden bundle a check compared against (`parity check --against`)."""

    path: str
    manifest_digest: str  # sha256 of its manifest.json, which digests every other file
    environment: str  # the environment it was recorded in
    created: str


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
    against: BundleReference | None = None  # the reference is a recorded golden bundle
    # the first stage and module beyond tolerance on the worst sample (`--localize`)
    localization: Localization | None = None
    # every warning and log record of level WARNING or above each environment's worker
    # caught while the model loaded and predicted (see parity.judging.caught)
    warnings: list[WarningFinding] = field(default_factory=list)
    warnings_dropped: dict[str, int] = field(default_factory=dict)  # past the worker's limit
    # where the replay ran when not on this machine (`run.executor = "ray"`: the shards, the
    # nodes, the retries; `parity.runs.sharded`); None for a local check
    execution: dict[str, Any] | None = None
    schema_version: str = SCHEMA_VERSION

    @property
    def exit_code(self) -> int:
        """0 pass, 1 fail, 3 error (the exit codes every command shares)."""
        return {"pass": 0, "fail": 1, "error": 3}[self.verdict]

    @property
    def execution_line(self) -> str | None:
        """Where the replay ran, in one line ("ray: 8 shards on 2 nodes (node1: 4, node2:
        4), 1 retried"), or None for a local check."""
        ex = self.execution
        if not ex:
            return None
        shards = ex.get("shards") or []
        nodes = ex.get("nodes") or {}
        each = ", ".join(f"{name}: {n}" for name, n in nodes.items())
        line = (
            f"{ex.get('executor')}: {len(shards)} shard{'s' if len(shards) != 1 else ''} on "
            f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}" + (f" ({each})" if each else "")
        )
        retried = int(ex.get("retried") or 0)
        lost = sum(1 for s in shards if "lost" in s)
        line += f", {retried} retried" if retried else ""
        line += f", {lost} lost" if lost else ""
        if ex.get("merge") in ("partial", "outputs"):
            what = "comparisons" if ex["merge"] == "partial" else "outputs"
            back = int(ex.get("bytes_from_shards") or 0)
            line += f"; {what} came back ({_size(back)})"
        return line

    @property
    def warnings_only_here(self) -> list[WarningFinding]:
        """The warnings whose category one environment caught and the other did not."""
        return [w for w in self.warnings if w.only_here]

    @property
    def versions_known(self) -> bool:
        """Whether the environments' versions were compared: not when one failed, since the
        versions are judged only after both replays finished (an empty `version_diffs`
        then means "unknown", never "none"), nor when one's versions are unknown (an
        endpoint with nothing recorded of it: no fingerprint)."""
        return not self.errors and all(e.fingerprinted for e in self.environments.values())

    @property
    def versions_unknown_why(self) -> str:
        """Why the versions are unknown, for the renderers ("" when they are known)."""
        if self.versions_known:
            return ""
        missing = [n for n, e in self.environments.items() if not e.fingerprinted]
        if missing and not self.errors:
            return (
                " and ".join(missing) + " has no fingerprint: nothing was recorded of what "
                "it runs (record one with `envlock fingerprint --python ... --out FILE` "
                "where it was built, and name it as the environment's fingerprint)"
            )
        if missing:  # a side that failed stops the other, which then says so
            halted = [n for n in missing if any(was_stopped(e, n) for e in self.errors)]
            failed = [n for n in missing if n not in halted]
            parts = [f"{' and '.join(failed)} failed"] if failed else []
            if halted:
                parts.append(
                    f"{' and '.join(halted)} {'was' if len(halted) == 1 else 'were'} stopped"
                )
            if len(missing) == 1:
                return f"{parts[0]} before its fingerprint was taken"
            both = f"{parts[0]}, and {parts[1]}," if len(parts) > 1 else parts[0]
            return f"{both} before their fingerprints were taken"
        return "an environment failed, so the versions were not compared"

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract, with every float JSON-safe (non-finite numbers as strings)."""
        outputs = []
        for o in self.outputs:
            d = asdict(replace(o, pictures=None))
            d["mismatched_fraction"] = o.mismatched_fraction
            if not o.measures:  # absent, not empty, for the policies with fields of their own
                del d["measures"]
            if not o.disagreements:  # absent, not empty: only decision outputs have them
                del d["disagreements"]
            if o.columns is None:  # absent, not null: only 2-D outputs have them
                del d["columns"]
            del d["pictures"]  # pixels are for the HTML report, not the JSON
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
            # `caused_by` only on a derived difference: reports stay as they were without one.
            "version_diffs": [
                {k: x for k, x in asdict(v).items() if k != "caused_by" or x is not None}
                for v in self.version_diffs
            ],
            "outputs": outputs,
            "calibrated": self.calibrated,
            "seconds": self.seconds,
        }
        if self.against is not None:  # absent, not null, in a check of two environments
            data["against"] = asdict(self.against)
        if not self.versions_known:  # absent when known, as in reports made before it existed
            data["versions_known"] = False
        if self.localization is not None:  # absent, not null, when localization did not run
            # pixels are for the HTML report, not the JSON
            entries = tuple(replace(e, pictures=None) for e in self.localization.entries)
            localization = asdict(replace(self.localization, entries=entries))
            for entry in localization["entries"]:
                del entry["pictures"]
            data["localization"] = localization
        if self.warnings:  # absent when none was caught, as in reports made before them
            data["warnings"] = [asdict(w) for w in self.warnings]
        if self.warnings_dropped:
            data["warnings_dropped"] = dict(self.warnings_dropped)
        if self.execution is not None:  # absent for a local check, as before it existed
            data["execution"] = self.execution
        safe: dict[str, Any] = json_safe(data)
        return safe

    def to_json(self) -> str:
        """The report as JSON text."""
        return json_text(self.to_dict())


def _size(n: int) -> str:
    """`n` bytes for people: 512 B, 12.3 KiB, 4.0 MiB, 1.2 GiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
