"""The report as Markdown, for CI step summaries and pull-request comments."""

from __future__ import annotations

from parity.report import ParityReport

_MARK = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: ParityReport) -> str:
    """A Markdown summary: verdict, reasons, outputs table, version differences table."""
    lines = [
        f"## Parity check: {_MARK[report.verdict]}",
        "",
        f"`{report.config}`: {report.candidate} against {report.reference}, "
        f"{report.inputs.get('count')} seeded inputs (seed {report.inputs.get('seed')}).",
        "",
    ]
    if report.reasons or report.errors:
        lines += [f"- {_cell(r)}" for r in [*report.errors, *report.reasons]] + [""]
    if report.outputs:
        lines += [
            "| output | result | mismatched | max abs diff | max rel diff | atol | rtol |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for o in report.outputs:
            result = "pass" if o.passed else f"**fail**: {_cell(o.reason)}"
            lines.append(
                f"| `{o.name}` | {result} | {o.mismatched} / {o.total} | {o.max_abs_diff:.4g} "
                f"| {o.max_rel_diff:.4g} | {o.atol:g} | {o.rtol:g} |"
            )
        lines.append("")
    if report.version_diffs:
        names = list(report.environments)
        lines += [
            f"| difference | {' | '.join(names)} | severity | counts | why |",
            "|---|" + "---|" * len(names) + "---|---|---|",
        ]
        for d in report.version_diffs:
            values = " | ".join(_cell(d.versions.get(n) or "-") for n in names)
            verdict = "**fails**" if d.fails else ("expected" if d.expected else "reported")
            lines.append(f"| `{d.name}` | {values} | {d.severity} | {verdict} | {_cell(d.note)} |")
        lines.append("")
    return "\n".join(lines)
