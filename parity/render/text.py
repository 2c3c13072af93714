"""Results for people: `parity bisect`, `parity search` and `parity init`.

Like every renderer these format values they are given and compute nothing. Lines that
hold text from environments (error messages, package names) are printed literally, as the
check's terminal rendering prints them (`parity.render.terminal.literal`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from parity.investigations.bisect import CANDIDATE_ITSELF, NOT_BUILT, BisectReport
from parity.investigations.search import CASE_CONFIG, SearchResult
from parity.render.terminal import literal

if TYPE_CHECKING:
    from parity.init.project import InitResult


def render_bisect(report: BisectReport, console: Console) -> None:
    """Print a bisection on `console`: the finding first, then the evidence."""
    lines = [f"parity bisect: {report.message}"]
    if report.differing:
        lines.append(
            f"{len(report.differing)} differing package(s), "
            f"{report.reference} -> {report.candidate}:"
        )
        lines += [f"  {d.describe()}" for d in report.differing]
    if report.trials:
        lines.append("combinations tried (packages taken from the candidate):")
        width = max(len(", ".join(t.packages)) for t in report.trials)
        for i, t in enumerate(report.trials, 1):
            diffs = ", ".join(f"{k} {v:.3g}" for k, v in t.max_abs_diff.items())
            where = (
                t.environment
                if t.environment == CANDIDATE_ITSELF
                else ("built now" if t.built else "cached")
            )
            if t.environment.startswith("as trial") or t.environment == NOT_BUILT:
                where = t.environment
            detail = f"max |diff|: {diffs}" if diffs and t.outcome != "unresolved" else t.reason
            lines.append(
                f"  {i:>2}. {', '.join(t.packages):<{width}}  {t.outcome:<10} [{where}] {detail}"
            )
            if t.dragged:
                lines.append(
                    f"      {'':<{width}}  installed with {', '.join(t.dragged)}: "
                    + "; ".join(t.dragged.values())
                )
    if report.environments:
        lines.append(
            f"environments: {report.environments} used ({report.reference}, {report.candidate} "
            f"and {report.environments - 2} intermediate), {report.built} built by this run; "
            f"{report.resolutions} resolution(s), {report.not_installable} combination(s) "
            "found not installable as asked by resolution (never built as asked)"
        )
    lines += [f"error: {e}" for e in report.errors]
    _print_lines(console, lines)


def render_search(result: SearchResult, console: Console) -> None:
    """Print a search's result on `console` in a few lines."""
    seeded = result.seeded.score
    ratio = f", {result.worst.score / seeded:.3g}x" if seeded > 0 else ""
    lines = [
        f"parity search: {result.verdict.upper()}  ({result.config})",
        f"output {result.output!r} ({result.policy}): search worst {result.worst.score:.6g} "
        f"(example {result.worst_example} of {result.examples}, seed {result.seed}) vs seeded "
        f"set worst {seeded:.6g} (sample {result.seeded_index} of {result.seeded_count}){ratio}",
        "at the worst input:",
    ]
    for name, c in result.worst.outputs.items():
        mark = "✓" if c.passed else "✗"
        why = f": {c.reason}" if c.reason else ""
        lines.append(f"  {mark} {name}: max abs diff {c.max_abs_diff:.6g}{why}")
    lines.append(
        f"case saved: {result.case} (replay: parity check --config "
        f"{Path(result.case) / CASE_CONFIG})"
    )
    _print_lines(console, lines)


def render_init(result: InitResult, console: Console) -> None:
    """Print what `parity init` wrote and decided, and the next command to run."""
    lines = [f"parity init: wrote {', '.join(result.written)} in {result.folder}"]
    lines.append(f"adapter: {result.adapter}")
    for a in result.arrays:
        shape = "x".join(str(d) for d in a["shape"]) or "scalar"
        span = f" in [{a['low']:g}, {a['high']:g}]" if a["low"] is not None else ""
        gen = f" ({a['generator']})" if a["generator"] != "uniform" else ""
        lines.append(f"input {a['name']}: {a['dtype']} {shape}{span}{gen}")
    for group, packages in result.groups.items():
        what = "locked package(s)" if result.locked else "requirement(s)"
        label = group if result.locked or group == "main" else f"{group} adds"
        listed = f": {', '.join(packages)}" if 0 < len(packages) <= 12 else ""
        lines.append(f"{label}: {len(packages)} {what}{listed}")
    lines += [f"note: {n}" for n in result.notes]
    lines.append("next: parity check --config " + str(Path(result.folder) / "parity.toml"))
    _print_lines(console, lines)


def _print_lines(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(literal(line), soft_wrap=True)
