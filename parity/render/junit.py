"""The report as JUnit XML: one testcase per output, per difference and per failing warning,
so CI shows them."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from parity.comparison import describe_disagreements
from parity.policies import advises_tolerances, reads_difference, would_pass
from parity.report import ParityReport

if TYPE_CHECKING:
    from parity.comparison import OutputComparison
    from parity.judging.caught import WarningFinding

# Characters XML 1.0 forbids even as references. A worker's log tail (in an error message)
# can hold them: the ESC of a coloured traceback, which ElementTree writes through so the
# file fails to parse in CI, or a lone surrogate from undecodable bytes, which cannot be
# written as UTF-8 at all.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def render_junit(report: ParityReport) -> str:
    """JUnit XML for `report` (testsuites > testsuite > testcase, failure/error children)."""
    cases: list[ET.Element] = []
    for o in report.outputs:
        case = ET.Element("testcase", classname="parity.outputs", name=o.name)
        if o.passed:
            ET.SubElement(case, "system-out").text = _evidence(report, o)
        else:
            failure = ET.SubElement(
                case,
                "failure",
                message=o.reason or "beyond tolerance",
                type=o.cause or "tolerance",
            )
            failure.text = _evidence(report, o)
        cases.append(case)
    roots = {d.name: d for d in report.version_diffs if d.caused_by is None}
    for d in report.version_diffs:
        cause = roots.get(d.caused_by or "")
        case = ET.Element("testcase", classname="parity.versions", name=d.name)
        shown = ", ".join(f"{v or 'absent'} ({k})" for k, v in d.versions.items())
        derived = [x for x in report.version_diffs if x.caused_by == d.name and cause is None]
        if cause is not None and (cause.fails or not d.fails):
            # Follows from a root cause: its failure (if any) is counted in that testcase.
            out = ET.SubElement(case, "system-out")
            out.text = f"{shown} [with {cause.name}] {d.note}"
        elif d.fails:
            failure = ET.SubElement(case, "failure", message=f"{d.name} differs: {shown}")
            failure.text = f"[{d.severity}] {d.note}" + "".join(
                f"\n  with {x.name}: {x.note}" for x in derived
            )
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"{shown} [{'expected' if d.expected else d.severity}] {d.note}"
        cases.append(case)
    cases += _warning_cases(report)
    for message in report.errors:
        case = ET.Element("testcase", classname="parity.environments", name="environment")
        error = ET.SubElement(case, "error", message=message.splitlines()[0])
        error.text = message
        # Said, so that a suite without version testcases is not read as "no differences".
        out = ET.SubElement(case, "system-out")
        out.text = f"version differences: unknown ({report.versions_unknown_why})"
        cases.append(case)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    errors = sum(1 for c in cases if c.find("error") is not None)
    suite = ET.Element(
        "testsuite",
        name=f"parity {report.config}",
        tests=str(len(cases)),
        failures=str(failures),
        errors=str(errors),
        skipped=str(sum(1 for c in cases if c.find("skipped") is not None)),
        time=f"{report.seconds.get('total', 0.0):.3f}",
    )
    suite.extend(cases)
    others = _other_warnings(report)
    if others is not None:
        ET.SubElement(suite, "system-out").text = others
    root = ET.Element(
        "testsuites",
        name="parity",
        tests=str(len(cases)),
        failures=str(failures),
        errors=str(errors),
    )
    root.append(suite)
    ET.indent(root)
    body = _NOT_XML_CHAR.sub(_escaped, ET.tostring(root, encoding="unicode"))
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


def _warning_cases(report: ParityReport) -> list[ET.Element]:
    """A failing testcase for each warning the policy fails on."""
    cases = []
    for w in report.warnings:
        if not w.fails:
            continue
        case = ET.Element(
            "testcase", classname="parity.warnings", name=f"{w.environment}: {w.category}"
        )
        failure = ET.SubElement(
            case, "failure", message=w.reason().splitlines()[0], type=w.rule or w.category
        )
        failure.text = _shown(w)
        cases.append(case)
    return cases


def _other_warnings(report: ParityReport) -> str | None:
    """The warnings that fail nothing, for the suite's system-out (a testcase each would
    change the suite's counts with every noisy library); None when there are none."""
    lines = [f"[{w.environment}] {_shown(w)}" for w in report.warnings if not w.fails]
    lines += [
        f"[{env}] {n} more warnings past the worker's limit (not listed)"
        for env, n in report.warnings_dropped.items()
    ]
    return "warnings caught:\n\n" + "\n\n".join(lines) if lines else None


def _shown(w: WarningFinding) -> str:
    level = f" [{w.level}]" if w.level else ""
    only = ", only here" if w.only_here else ""
    return f"{w.category}{level}: {w.message}\n({w.count} times{only}, first at {w.first})"


def _evidence(report: ParityReport, o: OutputComparison) -> str:
    """What a CI reader needs to judge one output: policy, cause, statistics, noise."""
    rtol = "none" if o.rtol_to_pass == float("inf") else f"{o.rtol_to_pass:.6g}"
    lines = [
        f"policy: {o.policy_description}",
        *([f"cause: {o.cause}"] if o.cause else []),
        f"mismatched: {o.mismatched} of {o.total} {o.unit} ({100 * o.mismatched_fraction:.3g}%)",
        f"abs diff: max {o.max_abs_diff:.6g}, median {o.median_abs_diff:.6g}, "
        f"p99 {o.p99_abs_diff:.6g}",
        f"rel diff: max {o.max_rel_diff:.6g}, median {o.median_rel_diff:.6g}, "
        f"p99 {o.p99_rel_diff:.6g}",
    ]
    if advises_tolerances(o):
        lines.append(
            f"would pass: atol >= {o.atol_to_pass:.6g} (at rtol={o.rtol:g}), "
            f"rtol >= {rtol} (at atol={o.atol:g})"
        )
    elif (advice := would_pass(o)) is not None:
        lines.append(f"would pass: {advice}")
    if o.max_ulp_diff is not None:
        lines.append(f"max ULP diff: {o.max_ulp_diff}")
    if o.agreement is not None:
        lines.append(f"agreement: {o.agreement:.6g}")
    if o.psnr_db is not None:
        lines.append(f"PSNR: {o.psnr_db:.4g} dB")
    if not reads_difference(o):
        lines += describe_disagreements(o, report.reference, report.candidate)
    elif o.worst_index is not None:
        lines.append(
            f"worst at {list(o.worst_index)}: {o.worst_reference:.6g} ({report.reference}) "
            f"vs {o.worst_candidate:.6g} ({report.candidate})"
        )
    lines += [
        f"nondeterministic: {env} disagrees with itself (max abs diff {n.max_abs_diff:.6g} "
        f"between two runs, {n.mismatched} of {n.total} elements)"
        for env, n in o.noise.items()
        if n.mismatched
    ]
    where = report.localization
    if where is not None and not o.passed and where.output in (o.name, None):
        lines.append(f"localized: {where.summary}")
    return "\n".join(lines)


def _escaped(match: re.Match[str]) -> str:
    """The forbidden character as visible text (`\\x1b`, `\\udcff`), so none is lost unseen."""
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
