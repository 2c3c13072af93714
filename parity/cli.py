"""`parity`: check that two environments give the same answers (thin layer over the API)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from envlock.clikit import domain_errors
from envlock.errors import EnvlockError
from parity.check import run_check
from parity.config import load_config
from parity.errors import ParityError
from parity.html import render_html
from parity.junit import render_junit
from parity.markdown import render_markdown
from parity.report import ParityReport
from parity.terminal import progress_printer, render_terminal, stdout_console


@click.group()
@click.version_option(package_name="envlock-parity")
def main() -> None:
    """Replay seeded inputs through two environments and prove they agree."""


@main.command("check")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("parity.toml"),
    show_default=True,
    help="The parity config: model adapter, inputs, environments, tolerances.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Write the JSON report here ('-' for stdout, which then holds only the JSON).",
)
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a JUnit XML report (one testcase per output and difference).",
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a Markdown summary (CI step summaries, PR comments).",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write one self-contained HTML page (histograms, heatmaps; no scripts).",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep inputs, outputs, fingerprints and worker logs in this folder.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Environment cache (default: $ENVLOCK_CACHE_DIR or ~/.cache/envlock).",
)
@click.option(
    "--calibrate/--no-calibrate",
    default=None,
    help="Run each environment twice and report how much it disagrees with itself "
    "(default: the config's run.calibrate).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@domain_errors(ParityError, EnvlockError)
def check_command(
    config_path: Path,
    json_path: Path | None,
    junit_path: Path | None,
    markdown_path: Path | None,
    html_path: Path | None,
    workdir: Path | None,
    cache_dir: Path | None,
    calibrate: bool | None,
    quiet: bool,
) -> None:
    """Check that two environments give the same outputs on the same seeded inputs.

    Exit status: 0 pass, 1 outputs or versions differ beyond the policy, 2 bad
    config or usage, 3 an environment could not be built or its worker failed.

    \b
    Example:
        parity check --config parity.toml --json report.json --junit parity.xml
    """
    config = load_config(config_path)

    progress = progress_printer(quiet)

    report = run_check(
        config, workdir=workdir, cache_dir=cache_dir, progress=progress, calibrate=calibrate
    )
    if json_path is not None and str(json_path) == "-":
        click.echo(report.to_json(), nl=False)
    else:
        render_terminal(report, stdout_console())
    renderings: list[tuple[Path | None, Callable[[ParityReport], str]]] = [
        (json_path, ParityReport.to_json),
        (junit_path, render_junit),
        (markdown_path, render_markdown),
        (html_path, render_html),
    ]
    for path, render in renderings:
        if path is not None and str(path) != "-":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(report), encoding="utf-8")
    raise SystemExit(report.exit_code)
