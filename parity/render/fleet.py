"""`parity fleet`'s report: the summary table on the terminal, JUnit XML (one testsuite,
one testcase per config) and Markdown. They format a `FleetReport`; they compute nothing."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from rich.text import Text

from parity.fleet import FleetEntry, FleetReport
from parity.render.junit import _NOT_XML_CHAR
from parity.render.junit import _escaped as _xml_escaped
from parity.render.markdown import _cell, _code
from parity.render.terminal import _VERDICT, _table, _Trimmed, literal

if TYPE_CHECKING:
    from rich.console import Console

_MARK = {"pass": "PASS", "fail": "FAIL", "error": "ERROR"}
REASON = 160  # characters of a row's key reason in the table; the JSON report has them all


def _diff(e: FleetEntry) -> str:
    return "-" if e.max_abs_diff is None else f"{e.max_abs_diff:.3g}"


def _short(text: str, limit: int = REASON) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def render_fleet(report: FleetReport, console: Console) -> None:
    """Print the fleet's verdict, then one row per config: config, name, verdict, key
    reason, max abs diff, seconds, where it ran."""
    word, style = _VERDICT[report.verdict]
    c = report.counts
    where = f"Ray at {report.address}" if report.address else f"{report.jobs} at a time, here"
    console.print(
        Text.assemble(
            "parity fleet: ",
            (word, style),
            f"  ({len(report.entries)} configs: {c['pass']} passed, {c['fail']} failed, "
            f"{c['error']} could not be checked; {where}, {report.seconds:.1f} s)",
        ),
        soft_wrap=True,
    )
    table = _table(
        "config",
        "name",
        "verdict",
        "reason",
        "max abs diff",
        "seconds",
        "where",
        right=("max abs diff", "seconds"),
        names=("config", "name", "verdict", "where"),
    )
    for e in report.entries:
        mark, mark_style = _VERDICT[e.verdict]
        table.add_row(
            literal(e.config),
            literal(e.name),
            Text(mark, style=mark_style),
            literal(_short(e.reason)),
            _diff(e),
            f"{e.seconds:.1f}",
            literal(e.where),
        )
    console.print()
    console.print(_Trimmed(table))


def render_fleet_junit(report: FleetReport) -> str:
    """JUnit XML: one testsuite `parity fleet`, one testcase per config (classname
    `parity.fleet`, name the config's path): a `failure` for a failed check, an `error`
    for one that could not be made, its reasons as the element's text."""
    cases = []
    for e in report.entries:
        case = ET.Element(
            "testcase", classname="parity.fleet", name=e.config, time=f"{e.seconds:.3f}"
        )
        detail = "\n".join(
            [
                f"name: {e.name}",
                f"where: {e.where}",
                f"exit code: {e.exit_code}",
                *(["max abs diff: " + _diff(e)] if e.max_abs_diff is not None else []),
                *(f"- {r}" for r in e.reasons),
                *([f"report: {e.report_path}"] if e.report_path else []),
            ]
        )
        if e.verdict == "pass":
            ET.SubElement(case, "system-out").text = detail
        else:
            kind = "failure" if e.verdict == "fail" else "error"
            message = (e.reason or e.verdict).splitlines()[0] if e.reason else e.verdict
            element = ET.SubElement(case, kind, message=message, type=f"parity.{e.verdict}")
            element.text = detail
            if e.stderr and e.verdict == "error":
                ET.SubElement(case, "system-err").text = e.stderr
        cases.append(case)
    c = report.counts
    suite = ET.Element(
        "testsuite",
        name="parity fleet",
        tests=str(len(cases)),
        failures=str(c["fail"]),
        errors=str(c["error"]),
        skipped="0",
        time=f"{report.seconds:.3f}",
    )
    suite.extend(cases)
    root = ET.Element(
        "testsuites",
        name="parity fleet",
        tests=str(len(cases)),
        failures=str(c["fail"]),
        errors=str(c["error"]),
    )
    root.append(suite)
    ET.indent(root)
    body = _NOT_XML_CHAR.sub(_xml_escaped, ET.tostring(root, encoding="unicode"))
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


def render_fleet_markdown(report: FleetReport) -> str:
    """A Markdown summary: the fleet's verdict, then a table of every config."""
    c = report.counts
    where = f"on the Ray cluster at {_code(report.address)}" if report.address else "locally"
    lines = [
        f"## Parity fleet: {_MARK[report.verdict]}",
        "",
        f"{len(report.entries)} configs checked {where}: {c['pass']} passed, {c['fail']} "
        f"failed, {c['error']} could not be checked ({report.seconds:.1f} s).",
        "",
        "| config | name | verdict | reason | max abs diff | seconds | where |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for e in report.entries:
        verdict = _MARK[e.verdict] if e.verdict == "pass" else f"**{_MARK[e.verdict]}**"
        lines.append(
            f"| {_code(e.config)} | {_cell(e.name)} | {verdict} | {_cell(_short(e.reason))} | "
            f"{_diff(e)} | {e.seconds:.1f} | {_cell(e.where)} |"
        )
    return "\n".join(lines) + "\n"
