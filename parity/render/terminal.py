"""The report on a terminal (rich): verdict, environments, outputs, version differences.

Like every renderer this formats numbers the report holds and computes none. Text that
comes from the environments (package names, notes, worker logs) is printed as `Text`, never
parsed as markup, and its control characters are shown as escapes, so a log line cannot
restyle, relink or overwrite the report.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from io import StringIO
from typing import TYPE_CHECKING, TypeVar

import click
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.padding import Padding
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from envlock.envvars import redactor
from envlock.progress import Progress
from parity.comparison import describe_disagreements
from parity.inputs.seeded import describe_label
from parity.policies import advises_tolerances, reads_difference, would_pass
from parity.policies import measure as policy_measure

if TYPE_CHECKING:
    from parity.comparison import OutputComparison
    from parity.investigations.localize import Localization
    from parity.report import ParityReport
    from parity.runs.replay import EnvironmentSummary

T = TypeVar("T")
WIDTH = 120  # where no terminal says otherwise (logs, pipes, strings)
LOCALIZATION_ROWS = 40  # values of a localization shown; the JSON report has them all
WARNING_TEXT = 400  # characters of a warning's message shown; the JSON report has it all
_VERDICT = {
    "pass": ("PASS", "bold green"),
    "fail": ("FAIL", "bold red"),
    "error": ("ERROR", "bold red"),
}
# C0 and C1 controls but tab and newline (ESC would start an escape sequence, CR would
# overwrite the line), and lone surrogates (undecodable bytes that cannot be printed).
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def stdout_console() -> Console:
    """A console on stdout: colour only on a terminal (rich reads NO_COLOR, FORCE_COLOR),
    and a fixed width when stdout is a pipe or a file, whatever terminal started it."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = WIDTH
    return console


def terminal_progress() -> Progress:
    """`parity.render.progress.progress_printer(quiet=False)`: `parity: message` lines on
    stderr, each with a dim timestamp when stderr is a terminal; no value of a
    secret-looking variable of ours is printed (`envlock.envvars`)."""
    console = Console(stderr=True, highlight=False)
    # A message can hold a model's error or an output's name; the secrets are looked up
    # per message, since a config read after this point can declare more (`[run.env]`).
    if not console.is_terminal:
        return lambda message: click.echo(f"parity: {redactor().redact(message)}", err=True)

    def show(message: str) -> None:
        message = redactor().redact(message)
        line = Text.assemble((time.strftime("%H:%M:%S"), "dim"), " parity: ", literal(message))
        console.print(line, soft_wrap=True)

    return show


def render_terminal(report: ParityReport, console: Console) -> None:
    """Print `report` on `console`: verdict first, then the evidence, then the reasons."""
    word, style = _VERDICT[report.verdict]
    console.print(
        Text.assemble("parity check: ", (word, style), "  (", literal(report.config), ")"),
        soft_wrap=True,
    )
    inputs = report.inputs
    console.print(
        Text(f"inputs: {describe_label(inputs)}, {str(inputs.get('digest', ''))[:23]}…"),
        soft_wrap=True,
    )
    if report.against is not None:
        a = report.against
        console.print(
            Text.assemble(
                "against: bundle ",
                literal(a.path),
                f" ({a.environment}, recorded {a.created}, manifest {a.manifest_digest[:23]}…)",
            ),
            soft_wrap=True,
        )
    if report.execution_line is not None:
        console.print(Text(report.execution_line), soft_wrap=True)
        for note in (report.execution or {}).get("notes") or []:
            console.print(Text.assemble("  note: ", literal(str(note))), soft_wrap=True)
    if report.environments:
        console.print()
        console.print(Text("environments:", style="bold"))
        console.print(_Trimmed(_environments(report)))
    if report.outputs:
        console.print()
        heading = f"outputs ({report.candidate} against {report.reference}):"
        console.print(Text(heading, style="bold"))
        console.print(_Trimmed(_outputs(report)))
        _output_notes(report, console)
        if report.calibrated:
            console.print()
            console.print(
                Text("noise (each environment against a second run of itself):", style="bold")
            )
            console.print(_Trimmed(_noise(report)))
    if report.localization is not None:
        console.print()
        _localization(report, report.localization, console)
    console.print()
    if report.version_diffs:
        console.print(Text("version differences:", style="bold"))
        console.print(_Trimmed(_version_diffs(report)))
    elif not report.versions_known:
        console.print(
            Text("version differences: unknown (") + literal(report.versions_unknown_why) + ")"
        )
    else:
        console.print(Text("version differences: none"))
    if report.warnings or report.warnings_dropped:
        console.print()
        _warnings(report, console)
    if report.errors:
        console.print()
        console.print(Text("errors:", style="bold red"))
        seen: dict[str, str] = {}
        for error in report.errors:
            console.print(Text("  ") + literal(_once(error, seen)), soft_wrap=True)
    if report.reasons:
        console.print()
        console.print(Text("why:", style="bold"))
        for reason in report.reasons:
            console.print(Text("  - ") + literal(reason), soft_wrap=True)


_ENVIRONMENT = re.compile(r"environment '([^'\n]*)': ")


def _once(error: str, seen: dict[str, str]) -> str:
    """`error`, or only its first line when an earlier environment's error began with the
    same one (`seen`: each first line, without its environment, and whose it was): both
    ran the same model on the same inputs, and the traceback would only say it again."""
    match = _ENVIRONMENT.match(error)
    if match is None:
        return error
    first, _, rest = error.partition("\n")
    earlier = seen.setdefault(first[match.end() :], match.group(1))
    if earlier == match.group(1) or not rest.strip():
        return error
    return f"{first}\n    (the same traceback as environment {earlier!r})"


def _table(
    *headers: str,
    right: tuple[str, ...] = (),
    no_wrap: tuple[str, ...] = (),
    names: tuple[str, ...] = (),
) -> Table:
    """A report table. Columns in `names` hold names (an output, a package, an environment,
    a stage) or short values a reader copies whole: never broken, each on one line, with
    "…" only where a very long one cannot fit; the table narrows the other (prose) columns
    first, which wrap at spaces (a word longer than the column folds)."""
    table = Table(
        box=box.SIMPLE_HEAD,
        header_style="bold",
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    for header in headers:
        whole = header in names
        table.add_column(
            header,
            justify="right" if header in right else "left",
            overflow="ellipsis" if whole else "fold",
            no_wrap=whole or header in no_wrap,
        )
    return table


class _Trimmed:
    """A table without the spaces it pads its last column with (clean logs); on a console
    too narrow for it (its names whole, each prose column as wide as its longest word), its
    rows as records instead: the row's first cell on a line, then `header: value` lines,
    so that no name is broken to fit."""

    def __init__(self, renderable: Table) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        renderable: RenderableType = self.renderable
        if not _fit(self.renderable, console, options):
            renderable = _records(self.renderable)
        for line in console.render_lines(renderable, options, pad=False):
            while line and not line[-1].text.strip(" "):
                line.pop()
            if line:
                last = line.pop()
                line.append(Segment(last.text.rstrip(" "), last.style, last.control))
            yield from line
            yield Segment.line()


def _fit(table: Table, console: Console, options: ConsoleOptions) -> bool:
    """Give each column of `table` its width on this console, or say it cannot fit: the
    unbroken columns (`no_wrap`) as wide as their widest cell, every other column at least
    as wide as its longest word (headers included), the room left shared among those by
    what each could still use. rich's own narrowing would break words to fit."""
    ranges = []
    for column in table.columns:
        sizes = [Measurement.get(console, options, c) for c in (column.header, *column.cells)]
        widest = max(m.maximum for m in sizes)
        ranges.append((widest if column.no_wrap else max(m.minimum for m in sizes), widest))
    # each column but the last is followed by its padding and the separator: 2 each
    room = options.max_width - sum(low for low, _ in ranges) - 2 * (len(ranges) - 1)
    if room < 0:
        return False
    wanted = sum(high - low for low, high in ranges)
    for column, (low, high) in zip(table.columns, ranges, strict=True):
        share = high - low if wanted <= room else (high - low) * room // wanted
        if column.max_width is not None:
            share = min(share, max(column.max_width - low, 0))
        column.width = low + share
    return True


def _records(table: Table) -> Group:
    """`table`'s rows as records: the first cell, then one `header: value` line for each
    other column (a cell's lines joined), indented; prose wraps at spaces."""
    columns = table.columns
    cells = [list(column.cells) for column in columns]
    lines: list[RenderableType] = []
    for i, row in enumerate(table.rows):
        style = row.style or ""
        lines.append(_one_line(cells[0][i], style))
        for column, column_cells in zip(columns[1:], cells[1:], strict=True):
            header = " ".join(str(column.header).split())
            field = Text.assemble((f"{header}: ", "dim"), _one_line(column_cells[i], style))
            lines.append(Padding(field, (0, 0, 0, 4)))  # a wrapped value stays indented
    return Group(*lines)


def _one_line(cell: RenderableType, style: str | Style) -> Text:
    """A cell's text on one line (its lines joined by spaces)."""
    text = cell.copy() if isinstance(cell, Text) else Text(str(cell))
    parts = text.split("\n")
    joined = Text(" ").join(parts) if len(parts) > 1 else text
    if style:
        joined.stylize(style)
    return joined


def _environments(report: ParityReport) -> Table:
    table = _table(
        "environment",
        "backend",
        "python",
        "platform",
        "distributions",
        "lock",
        "description",
        right=("distributions",),
        names=("environment", "backend", "python", "platform", "distributions"),
    )
    for env in report.environments.values():
        role = "reference" if env.name == report.reference else "candidate"
        lock = "-"
        if env.lock:
            lock = env.lock + (f" [{env.group}]" if env.group else "")
            if env.lock_digest:
                lock += f" {env.lock_digest[:19]}…"
        table.add_row(
            literal(env.name) + Text(f" ({role})", style="dim"),
            literal(env.backend),
            literal(env.python or "-"),
            literal(env.platform or "-"),
            Text(_package_count(env)),
            literal(lock),
            literal(env.description),
        )
    return table


def _package_count(env: EnvironmentSummary) -> str:
    """How many packages an environment has, and whether they were seen."""
    if not env.fingerprinted:
        return "unknown"
    if env.versions_from == "lock":
        return f"{len(env.packages)}, from the lock, not observed"
    return str(len(env.packages))


def _outputs(report: ParityReport) -> Table:
    measured = any(_measure(o) for o in report.outputs)
    numbers = ("max\nabs", "median\nabs", "p99\nabs", "max\nrel")
    table = _table(
        "output",
        "policy",
        "mismatched",
        *numbers,
        *(["measure"] if measured else []),
        "would pass",
        right=("mismatched", *numbers),
        no_wrap=("policy",),
        names=("output", *numbers, "would pass"),
    )
    for o in report.outputs:
        # |a - b| statistics mean nothing for a rule that decides on classes (decision)
        stats = (o.max_abs_diff, o.median_abs_diff, o.p99_abs_diff, o.max_rel_diff)
        shown = [f"{x:.3g}" for x in stats] if reads_difference(o) else ["-"] * len(stats)
        table.add_row(
            Text.assemble(("✓ ", "green") if o.passed else ("✗ ", "bold red"), literal(o.name)),
            # one setting a line keeps the column narrow enough for the numbers beside it
            literal(o.policy_description.replace(", ", ",\n")),
            Text(f"{o.mismatched}/{o.total} {o.unit}\n({100 * o.mismatched_fraction:.3g}%)"),
            *(Text(x) for x in shown),
            *([Text(_measure(o) or "-")] if measured else []),
            _would_pass(o),
        )
    return table


def _noise(report: ParityReport) -> Table:
    """Each output's noise: how much each environment disagrees with a second run of itself."""
    names = list(dict.fromkeys(env for o in report.outputs for env in o.noise))
    table = _table("output", *names, names=("output",))
    for o in report.outputs:
        cells = []
        for env in names:
            n = o.noise.get(env)
            if n is None:
                cells.append(Text("-"))
            elif n.mismatched:
                cells.append(
                    Text(
                        f"max abs {n.max_abs_diff:.3g}, {n.mismatched}/{n.total} elements differ",
                        style="yellow",
                    )
                )
            else:
                cells.append(Text("bitwise identical", style="dim"))
        table.add_row(literal(o.name), *cells)
    return table


def _measure(o: OutputComparison) -> str | None:
    measure = policy_measure(o)
    return "\n".join(measure) if measure else None


def _would_pass(o: OutputComparison) -> Text:
    """The smallest atol (at the policy's rtol) and rtol (at its atol) that would pass; for
    a policy that is not an atol/rtol bound, its own setting that would ("-": none)."""
    if o.max_abs_diff == 0:
        return Text("identical", style="dim")
    if not advises_tolerances(o):
        return Text((would_pass(o) or "-").replace(" ≤ ", "\n≤ "))
    rtol = "no rtol" if o.rtol_to_pass == float("inf") else f"rtol ≥ {o.rtol_to_pass:.3g}"
    return Text(f"atol ≥ {o.atol_to_pass:.3g}\n{rtol}")


def _output_notes(report: ParityReport, console: Console) -> None:
    """Each failing output's reason and worst element; each noisy output's noise."""
    lines: list[Text] = []
    for o in report.outputs:
        if not o.passed:
            line = Text.assemble(
                ("  ✗ ", "bold red"),
                literal(o.name),
                f" ({o.cause})" if o.cause else "",
                ": ",
                literal(o.reason or "beyond tolerance"),
            )
            lines.append(line)
            if not reads_difference(o):
                lines += [
                    literal(f"      {line}")
                    for line in describe_disagreements(o, report.reference, report.candidate)
                ]
            elif o.worst_index is not None:
                lines.append(
                    Text(
                        f"      worst at {list(o.worst_index)}: {o.worst_reference:.6g} "
                        f"({report.reference}) vs {o.worst_candidate:.6g} ({report.candidate})"
                    )
                )
        if o.nondeterministic and o.passed:
            lines += [
                Text.assemble(
                    ("  ~ ", "yellow"),
                    literal(
                        f"{o.name}: nondeterministic: {env} disagrees with itself (max abs "
                        f"diff {n.max_abs_diff:.3g} between two runs, {n.mismatched}/{n.total} "
                        "elements)"
                    ),
                )
                for env, n in o.noise.items()
                if n.mismatched
            ]
    if lines:
        console.print()
        for line in lines:
            console.print(line, soft_wrap=True)


def _localization(report: ParityReport, loc: Localization, console: Console) -> None:
    """Where the sample first diverges: the summary line, then each captured value."""
    heading = "localization"
    if loc.sample is not None:
        heading += f" (sample {loc.sample}, the worst of output {loc.output!r})"
    console.print(Text(heading + ":", style="bold"))
    style = "yellow" if loc.error else ""
    console.print(Text("  ") + literal(loc.summary), style=style, soft_wrap=True)
    if not loc.entries:
        return
    table = _table(
        "value",
        "stage",
        "module",
        "max abs",
        report.reference,
        report.candidate,
        "cause",
        right=("max abs",),
        names=("value", "stage", "module", "max abs", report.reference, report.candidate),
    )
    firsts = {"stage": loc.first_stage, "module": loc.first_module, "step": loc.first_step}
    marked: set[str] = set()  # the first stage, module and step get the mark once
    for e in loc.entries[:LOCALIZATION_ROWS]:
        first = not e.passed and e.kind not in marked
        first = first and (e.stage if e.kind == "stage" else e.module) == firsts.get(e.kind)
        if first:
            marked.add(e.kind)
        table.add_row(
            Text.assemble(
                ("✓ ", "green") if e.passed else ("✗ ", "bold red"),
                literal(e.name),
                (" ◀ first", "bold") if first else "",
            ),
            literal(e.stage),
            literal(e.module_class or "-"),
            Text("-" if e.max_abs_diff is None else f"{e.max_abs_diff:.3g}"),
            literal(_side(e.reference_dtype, e.reference_shape)),
            literal(_side(e.candidate_dtype, e.candidate_shape)),
            literal(e.cause or "-"),
        )
    console.print(_Trimmed(table))
    more = len(loc.entries) - LOCALIZATION_ROWS
    if more > 0:
        console.print(Text(f"  … {more} more in the JSON report", style="dim"))
    if loc.dropped:
        console.print(
            Text(f"  {loc.dropped} values past the worker's limit were not captured", style="dim")
        )


def _side(dtype: str | None, shape: tuple[int, ...] | None) -> str:
    if dtype is None or shape is None:
        return "absent"
    return f"{dtype} {'x'.join(map(str, shape)) or 'scalar'}"


def _version_diffs(report: ParityReport) -> Table:
    names = list(report.environments) or list(
        dict.fromkeys(n for v in report.version_diffs for n in v.versions)
    )
    table = _table(
        "package", *names, "severity", "counts", "note", names=("package", "severity", "counts")
    )
    for column in table.columns[1 : 1 + len(names)]:
        # a long version (a SIMD list) wraps at its spaces, so the note keeps its room
        column.max_width = max(24, len(str(column.header)))
    roots = {v.name: v for v in report.version_diffs if v.caused_by is None}
    for v in report.version_diffs:
        root = roots.get(v.caused_by or "")
        if root is not None and (root.fails or not v.fails):
            # It follows from a root cause listed just above: counted with that one.
            style, counts = "dim", Text(f"with {root.name}", style="dim")
        elif v.fails:
            style, counts = "bold red", Text("fails", style="bold red")
        elif v.expected:
            style, counts = "dim", Text("expected", style="cyan")
        else:
            style, counts = "", Text("reported", style="yellow")
        table.add_row(
            literal(f"  ↳ {v.name}" if root is not None else v.name),
            # a list (numpy's SIMD features) wraps after its commas, never inside a name
            *(literal((v.versions.get(n) or "-").replace(",", ", ")) for n in names),
            literal(v.severity),
            counts,
            literal(v.note),
            style=style,
        )
    return table


def _warnings(report: ParityReport, console: Console) -> None:
    """The warnings each environment caught: those only one caught first, then a table."""
    console.print(Text("warnings (caught while the model loaded and predicted):", style="bold"))
    only: dict[str, list[str]] = {}
    for w in report.warnings_only_here:
        only.setdefault(w.environment, [])
        if w.category not in only[w.environment]:
            only[w.environment].append(w.category)
    for env, categories in only.items():
        console.print(
            Text.assemble(
                ("  ! ", "bold yellow"),
                (f"only in {env}: ", "bold yellow"),
                literal(", ".join(categories)),
            ),
            soft_wrap=True,
        )
    for w in report.warnings:
        notes = ["once" if w.count == 1 else f"{w.count} times"]
        if w.only_here:
            notes.append("only here")
        if w.fails:
            mark, style = ("  ✗ ", "bold red"), "bold red"
            notes.append("fails" if w.rule == w.category else f"fails: {w.rule}")
        else:
            mark, style = ("  - ", "yellow" if w.only_here else "dim"), ""
        console.print(
            Text.assemble(
                mark,
                f"[{w.environment}] ",
                literal(w.category + (f" [{w.level}]" if w.level else "")),
                f" ({', '.join(notes)})",
                style=style,
            ),
            soft_wrap=True,
        )
        message = w.message.strip()
        if len(message) > WARNING_TEXT:
            message = message[:WARNING_TEXT] + "…"
        for line in message.splitlines() or [""]:
            console.print(Text("      ") + literal(line), soft_wrap=True)
        console.print(Text("      first at ") + literal(w.first), style="dim", soft_wrap=True)
    for env, n in report.warnings_dropped.items():
        console.print(
            Text(
                f"  {n} more warnings in {env}, past the worker's limit of distinct warnings "
                "(counted, not listed)",
                style="dim",
            )
        )


def literal(text: str) -> Text:
    """`text` exactly as written: no markup, no emoji codes, control characters escaped."""

    def escaped(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return Text(_UNPRINTABLE.sub(escaped, text))


def render_text(report: ParityReport, color: bool | None = None) -> str:
    """The check's terminal rendering as a string (see `as_text`)."""
    return as_text(render_terminal, report, color)


def as_text(render: Callable[[T, Console], None], value: T, color: bool | None = None) -> str:
    """What `render` prints for `value`, as a string: coloured when `color` is True, plain
    when False, and when None as the environment says (FORCE_COLOR, NO_COLOR; a string is
    no terminal, so plain unless forced)."""
    out = StringIO()
    console = Console(
        file=out,
        width=WIDTH,
        force_terminal=color,
        no_color=None if color is None else not color,
        highlight=False,
    )
    render(value, console)
    return out.getvalue()
