"""The report as Markdown, for CI step summaries and pull-request comments."""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

from parity.comparison import describe_disagreements
from parity.policies import advises_tolerances, reads_difference, would_pass
from parity.policies import measure as policy_measure
from parity.report import ParityReport

if TYPE_CHECKING:
    from parity.comparison import OutputComparison
    from parity.investigations.localize import Localization

_MARK = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}
MESSAGE = 400  # characters of a warning's message shown; the JSON report has it all


# Characters a summary must not carry raw (terminal escapes, NUL, BEL, lone surrogates).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _visible(text: object) -> str:
    """`text` on one line, every other control character shown as `\\x1b`."""
    return _CONTROL.sub(_escaped, str(text).replace("\r\n", " ").replace("\n", " "))


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _cell(text: object) -> str:
    """`text` as Markdown text in a table cell or list item: HTML (`<script>`) and control
    characters shown as text, `|` kept from splitting the cell."""
    return html.escape(_visible(text), quote=False).replace("|", "\\|")


def _code(text: object) -> str:
    """`text` as code: a Markdown code span, or, where it holds HTML's `<>&` or a backtick
    (which a code span would show raw or end at), an HTML `<code>` element of its escaped
    text; control characters shown as `\\x1b`, `|` kept from splitting a table cell."""
    body = _visible(text)
    if any(c in body for c in "<>&`"):
        return f"<code>{html.escape(body, quote=False)}</code>".replace("|", "\\|")
    return f"`{body}`".replace("|", "\\|")


def _inputs(inputs: dict[str, object]) -> str:
    if "folder" in inputs:
        return f"{inputs.get('count')} inputs from {_code(inputs.get('folder'))}"
    return f"{inputs.get('count')} seeded inputs (seed {inputs.get('seed')})"


def render_markdown(report: ParityReport) -> str:
    """A Markdown summary: verdict, reasons, outputs table (with each failing output's worst
    element and each noisy output's noise below it), version differences table."""
    lines = [
        f"## Parity check: {_MARK[report.verdict]}",
        "",
        f"{_code(report.config)}: {_cell(report.candidate)} against {_cell(report.reference)}, "
        f"{_inputs(report.inputs)}.",
        "",
    ]
    if report.against is not None:
        a = report.against
        lines.insert(
            -1,
            f"{_cell(report.reference)} is the golden bundle {_code(a.path)} "
            f"(recorded {_cell(a.created)}, manifest {_code(a.manifest_digest)}).",
        )
    if report.execution_line is not None:
        notes = [str(n) for n in (report.execution or {}).get("notes") or []]
        lines += [f"Ran on {_cell(report.execution_line)}.", ""]
        lines += [f"- note: {_cell(n)}" for n in notes] + ([""] if notes else [])
    if report.reasons or report.errors:
        lines += [f"- {_cell(r)}" for r in [*report.errors, *report.reasons]] + [""]
    if report.outputs:
        lines += [*_outputs(report), ""]
    if report.localization is not None:
        lines += [*_localization(report, report.localization), ""]
    for env in report.environments.values():
        if env.versions_from == "lock":
            lines += [
                f"Versions of {_code(env.name)}: from the lock, not observed (what "
                f"{_code(env.lock or '?')} pins for group {_code(env.group or '?')}; nothing "
                "was recorded of the server).",
                "",
            ]
    if report.version_diffs:
        names = list(report.environments)
        lines += [
            f"| difference | {' | '.join(names)} | severity | counts | why |",
            "|---|" + "---|" * len(names) + "---|---|---|",
        ]
        roots = {d.name: d for d in report.version_diffs if d.caused_by is None}
        for d in report.version_diffs:
            values = " | ".join(_cell(d.versions.get(n) or "-") for n in names)
            verdict = "**fails**" if d.fails else ("expected" if d.expected else "reported")
            name = _code(d.name)
            root = roots.get(d.caused_by or "")
            if root is not None:  # follows from the root cause listed above it
                name = f"↳ {_code(d.name)}"
                if root.fails or not d.fails:
                    verdict = f"with {_code(root.name)}"
            lines.append(f"| {name} | {values} | {d.severity} | {verdict} | {_cell(d.note)} |")
        lines.append("")
    elif not report.versions_known:
        lines += [f"Version differences: unknown ({_cell(report.versions_unknown_why)}).", ""]
    if report.warnings or report.warnings_dropped:
        lines += [*_warnings(report), ""]
    return "\n".join(lines)


def _warnings(report: ParityReport) -> list[str]:
    """The warnings each environment caught: those only one caught first, then a table."""
    lines = ["### Warnings", ""]
    only: dict[str, list[str]] = {}
    for w in report.warnings_only_here:
        if w.category not in only.setdefault(w.environment, []):
            only[w.environment].append(w.category)
    lines += [
        f"- **only in {_cell(env)}**: " + ", ".join(f"{_code(c)}" for c in categories)
        for env, categories in only.items()
    ]
    if only:
        lines.append("")
    if report.warnings:
        lines += [
            "| environment | warning | count | counts | message | first at |",
            "|---|---|---:|---|---|---|",
        ]
        for w in report.warnings:
            verdict = "**fails**" if w.fails else ("only here" if w.only_here else "reported")
            level = f" ({_cell(w.level)})" if w.level else ""
            message = w.message.strip()
            if len(message) > MESSAGE:
                message = message[:MESSAGE] + "…"
            lines.append(
                f"| {_cell(w.environment)} | {_code(w.category)}{level} | {w.count} | "
                f"{verdict} | {_cell(message)} | {_code(w.first)} |"
            )
    for env, n in report.warnings_dropped.items():
        lines += ["", f"{n} more warnings in {_cell(env)} past the worker's limit (not listed)."]
    return lines


def _outputs(report: ParityReport) -> list[str]:
    """The outputs table, then a note for each failing or nondeterministic output."""
    # The measures' own names as the column's title, e.g. `ULP / agreement / PSNR`.
    measures = list(dict.fromkeys(m[0] for o in report.outputs if (m := policy_measure(o))))
    measured = bool(measures)
    noisy_envs = list(dict.fromkeys(env for o in report.outputs for env in o.noise))
    noise_envs = noisy_envs if report.calibrated else []
    headers = [
        "output",
        "result",
        "policy",
        "mismatched",
        "max abs diff",
        "median abs diff",
        "p99 abs diff",
        "max rel diff",
        "would pass",
        *([" / ".join(measures)] if measures else []),
        *(f"noise in {_cell(env)}" for env in noise_envs),
    ]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|---|---|---|" + "---:|" * (len(headers) - 3),
    ]
    notes = []
    for o in report.outputs:
        if o.passed:
            result = "pass (nondeterministic)" if o.nondeterministic else "pass"
        else:
            result = f"**fail** ({o.cause}): {_cell(o.reason)}"
        # |a - b| statistics mean nothing for a rule that decides on classes (decision):
        # its row shows the rows that disagree, its agreement and its own advice instead
        stats = [o.max_abs_diff, o.median_abs_diff, o.p99_abs_diff, o.max_rel_diff]
        shown = [f"{x:.4g}" for x in stats] if reads_difference(o) else ["-"] * len(stats)
        cells = [
            f"{_code(o.name)}",
            result,
            f"{_code(o.policy_description)}",
            f"{o.mismatched} / {o.total} {o.unit} ({100 * o.mismatched_fraction:.3g}%)",
            *shown,
            _would_pass(o),
            *([_measure(o) or "-"] if measured else []),
        ]
        for env in noise_envs:
            n = o.noise.get(env)
            if n is None:
                cells.append("-")
            elif n.mismatched:
                cells.append(f"{n.max_abs_diff:.3g} ({n.mismatched} / {n.total} differ)")
            else:
                cells.append("none")
        lines.append("| " + " | ".join(cells) + " |")
        if not o.passed and not reads_difference(o):
            notes += [
                f"- {_code(o.name)}: {_cell(line)}"
                for line in describe_disagreements(o, report.reference, report.candidate)
            ]
        elif not o.passed and o.worst_index is not None:
            notes.append(
                f"- {_code(o.name)}: worst at {list(o.worst_index)}: {o.worst_reference:.6g} "
                f"({_cell(report.reference)}) vs {o.worst_candidate:.6g} "
                f"({_cell(report.candidate)})"
            )
        notes += [
            f"- {_code(o.name)} is nondeterministic: {_cell(env)} disagrees with itself (max "
            f"abs diff {n.max_abs_diff:.3g} between two runs, {n.mismatched} of {n.total} "
            "elements)"
            for env, n in o.noise.items()
            if n.mismatched
        ]
    return lines + (["", *notes] if notes else [])


def _localization(report: ParityReport, loc: Localization) -> list[str]:
    """The localization: its summary, then a table of every captured value in order."""
    heading = "### Localization"
    if loc.sample is not None:
        heading += f" (sample {loc.sample}, the worst of output {_code(loc.output)})"
    lines = [heading, "", _cell(loc.summary)]
    if not loc.entries:
        return lines
    lines += [
        "",
        f"| value | stage | module | result | max abs diff | {_cell(report.reference)} "
        f"| {_cell(report.candidate)} |",
        "|---|---|---|---|---:|---|---|",
    ]
    for e in loc.entries:
        result = "pass" if e.passed else f"**beyond** ({_cell(e.cause)})"
        sides = [
            "absent"
            if dtype is None
            else f"{_cell(dtype)} {'x'.join(map(str, shape or ())) or 'scalar'}"
            for dtype, shape in (
                (e.reference_dtype, e.reference_shape),
                (e.candidate_dtype, e.candidate_shape),
            )
        ]
        diff = "-" if e.max_abs_diff is None else f"{e.max_abs_diff:.4g}"
        lines.append(
            f"| {_code(e.name)} | {_cell(e.stage)} | {_cell(e.module_class or '-')} | "
            f"{result} | {diff} | {sides[0]} | {sides[1]} |"
        )
    return lines


def _would_pass(o: OutputComparison) -> str:
    """What would pass, in the policy's terms: the smallest atol (at its rtol) or rtol (at
    its atol) for allclose, the policy's own setting for the others ("-": none)."""
    if o.max_abs_diff == 0:
        return "identical"
    if not advises_tolerances(o):
        return _cell(would_pass(o) or "-")
    atol = f"atol ≥ {o.atol_to_pass:.4g}"
    return atol if o.rtol_to_pass == float("inf") else f"{atol} or rtol ≥ {o.rtol_to_pass:.4g}"


def _measure(o: OutputComparison) -> str | None:
    measure = policy_measure(o)
    return " ".join(measure) if measure else None
