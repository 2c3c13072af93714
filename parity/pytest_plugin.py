"""A pytest plugin: parity checks inside a project's own test suite.

Registered through the `pytest11` entry point, so every pytest run in an environment
where envlock-parity is installed loads this module: it imports only pytest and the
standard library at start-up, and parity's own modules only when a test asks for a check.
A suite that never uses it pays for three options, one marker and one fixture that does
nothing.

    def test_infer_matches_train(parity_check):
        parity_check("parity.toml")                 # fails the test with the report's reasons

    @pytest.mark.parity(config="parity.toml")
    def test_serving_side():
        ...                                          # runs after the check passed

A check runs the config's two environments (`parity.run_check`), or checks the candidate
against a golden bundle (`parity.check_against`) when there is one: `bundle=` names it,
`--parity-against BUNDLE` names one for every check, and otherwise the test's own default
bundle is used where it exists (`<test file's folder>/<test file's stem>/<test name>.bundle`,
pytest-regressions' layout). `--parity-record` records that bundle from the reference
environment (replacing what was there: pytest-regressions' `--force-regen`), then checks the
candidate against it. Every check writes its JSON and HTML reports (into
`--parity-reports DIR`, else the session's temporary folder), attaches their paths to the
test as junit properties (`record_property`) and lists them in the terminal summary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from parity.report import ParityReport

MARKER = "parity"
_SUMMARY = pytest.StashKey[list["CheckRecord"]]()
_MARKED = pytest.StashKey[tuple["ParityReport", "ParityChecker"]]()
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "parity checks (envlock-parity)")
    group.addoption(
        "--parity-record",
        action="store_true",
        default=False,
        help="Record each parity check's golden bundle from its reference environment "
        "(replacing the one there), then check the candidate against it.",
    )
    group.addoption(
        "--parity-against",
        metavar="BUNDLE",
        default=None,
        help="Check every parity check's candidate against this golden bundle (a folder, "
        ".tar.gz, .tgz or .zip) instead of its default bundle or its reference environment.",
    )
    group.addoption(
        "--parity-reports",
        metavar="DIR",
        default=None,
        help="Write each parity check's JSON and HTML report here (default: the session's "
        "temporary folder).",
    )
    group.addoption(
        "--parity-cache-dir",
        metavar="DIR",
        default=None,
        help="Environment cache for parity checks (default: $ENVLOCK_CACHE_DIR or "
        "~/.cache/envlock).",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "parity(config='parity.toml', bundle=None, env=None): run a parity check of the "
        "config before the test; the test fails with the report's reasons unless it passes.",
    )
    config.stash[_SUMMARY] = []


@dataclass
class CheckRecord:
    """One check of the session, as the terminal summary lists it."""

    nodeid: str
    verdict: str
    reports: list[Path]
    bundle: Path | None = None
    recorded: bool = False


@dataclass
class ParityChecker:
    """The `parity_check` fixture: call it with a config to run a check in this test.

    `bundle` names a golden bundle to check against (relative to the test file), `env`
    the environment checked against a bundle (default: the one that is not
    `run.reference`). Returns the `ParityReport` when the check passes; otherwise fails
    the test with the report's reasons (a verdict `fail` or `error`) and the reports'
    paths; a check that cannot run (a config or bundle that cannot be read) fails it with
    its error."""

    request: pytest.FixtureRequest
    reports_dir: Path
    reports: list[ParityReport] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)  # the last check's reports

    def __call__(
        self,
        config: str | Path = "parity.toml",
        *,
        bundle: str | Path | None = None,
        env: str | None = None,
    ) -> ParityReport:
        report = self.run(config, bundle=bundle, env=env)
        if report.verdict != "pass":
            pytest.fail(failure_message(report, self.paths), pytrace=False)
        return report

    def run(
        self,
        config: str | Path = "parity.toml",
        *,
        bundle: str | Path | None = None,
        env: str | None = None,
    ) -> ParityReport:
        """Run the check and write its reports, whatever its verdict; the report. A check
        that cannot run (a bad config, a missing or altered bundle, an environment that
        cannot be built) fails the test with its one-line error, as `parity check` exits
        with it."""
        from envlock.envvars import redactor
        from envlock.errors import EnvlockError
        from parity.errors import ParityError

        try:
            return self._run(config, bundle, env)
        except (ParityError, EnvlockError) as e:
            message = f"parity check could not run: {type(e).__name__}: {e}"
            pytest.fail(redactor().redact(message), pytrace=False)

    def _run(self, config: str | Path, bundle: str | Path | None, env: str | None) -> ParityReport:
        from envlock.envvars import redactor
        from parity.bundle import load_bundle, record_bundle
        from parity.check import check_against, run_check
        from parity.config import load_config

        options = self.request.config.option
        node = self.request.node
        path = self._path(config)
        cache_dir = Path(options.parity_cache_dir) if options.parity_cache_dir else None
        golden, explicit = self._bundle(bundle)
        lines: list[str] = []
        say = lines.append
        recorded = False
        if options.parity_record:
            parsed = load_config(path)
            with record_bundle(
                parsed,
                parsed.reference,
                golden,
                cache_dir=cache_dir,
                progress=say,
                overwrite=True,
                archive=golden.name.endswith((".tar.gz", ".tgz", ".zip")),
            ):
                recorded = True
        used: Path | None = golden
        if recorded or golden.exists():
            parsed = load_config(path, against=True)
            with load_bundle(golden) as opened:
                report = check_against(
                    parsed, opened, env_name=env, cache_dir=cache_dir, progress=say
                )
        elif explicit:
            from parity.errors import BundleError

            raise BundleError(
                f"{golden}: no golden bundle there (record it with pytest --parity-record)"
            )
        else:
            report = run_check(load_config(path), cache_dir=cache_dir, progress=say)
            used = None
        written = self._write(report)
        self.paths = written
        self.reports.append(report)
        node.user_properties.append(("parity_verdict", report.verdict))
        for p in written:
            node.user_properties.append((f"parity_report_{p.suffix.lstrip('.')}", str(p)))
        if used is not None:
            node.user_properties.append(("parity_bundle", str(used)))
        if lines:
            text = redactor().redact("\n".join(lines))
            node.add_report_section("call", "parity progress", text)
        self.request.config.stash[_SUMMARY].append(
            CheckRecord(node.nodeid, report.verdict, written, used, recorded)
        )
        return report

    def _path(self, config: str | Path) -> Path:
        """A relative config is found from the test file's folder, else from the rootdir."""
        path = Path(config)
        if path.is_absolute():
            return path
        here = self.request.path.parent / path
        return here if here.exists() else self.request.config.rootpath / path

    def _bundle(self, bundle: str | Path | None) -> tuple[Path, bool]:
        """The golden bundle of this check, and whether it was named (not the default)."""
        against = self.request.config.option.parity_against
        if against:
            return Path(against), True
        if bundle is not None:
            path = Path(bundle)
            return (path if path.is_absolute() else self.request.path.parent / path), True
        test = self.request.path
        name = _UNSAFE.sub("_", self.request.node.name).strip("_") or "check"
        return test.parent / test.stem / f"{name}.bundle", False

    def _write(self, report: ParityReport) -> list[Path]:
        """The JSON and HTML reports, redacted like every report parity writes."""
        from envlock.envvars import redactor, scrub
        from parity.render.html import render_html

        secrets = redactor()
        report = scrub(report, secrets)
        stem = _UNSAFE.sub("_", self.request.node.nodeid).strip("_") or "check"
        if len(self.reports):
            stem = f"{stem}-{len(self.reports) + 1}"
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for suffix, text in ((".json", report.to_json()), (".html", render_html(report))):
            path = self.reports_dir / f"{stem}{suffix}"
            path.write_text(secrets.redact(text), encoding="utf-8")
            written.append(path)
        return written


def failure_message(report: ParityReport, paths: list[Path]) -> str:
    """What a failing test says: the verdict, the reasons the terminal report gives (and
    the errors, when an environment failed) and where the reports are."""
    from envlock.envvars import redactor

    word = {"fail": "failed", "error": "ended in an error"}.get(report.verdict, report.verdict)
    lines = [
        f"parity check {word} ({report.config}: {report.candidate} against {report.reference})"
    ]
    lines += [f"  - {reason}" for reason in report.reasons]
    lines += [f"  error: {error}" for error in report.errors if error not in report.reasons]
    lines += [f"report: {p}" for p in paths]
    return redactor().redact("\n".join(lines))


def _reports_dir(config: pytest.Config, factory: pytest.TempPathFactory) -> Path:
    chosen = config.option.parity_reports
    return Path(chosen).resolve() if chosen else factory.getbasetemp() / "parity-reports"


@pytest.fixture
def parity_check(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> ParityChecker:
    """Run a parity check in this test: `parity_check("parity.toml")` fails the test with
    the report's reasons unless the check passes, and returns the report."""
    return ParityChecker(request, _reports_dir(request.config, tmp_path_factory))


@pytest.fixture(autouse=True)
def _parity_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run the check of a test marked `@pytest.mark.parity(...)` (nothing for the others)."""
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        checker: ParityChecker = request.getfixturevalue("parity_check")
        request.node.stash[_MARKED] = (checker.run(*marker.args, **marker.kwargs), checker)
    yield


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """A marked test whose check did not pass fails here, before its body runs."""
    marked = item.stash.get(_MARKED, None)
    if marked is not None and marked[0].verdict != "pass":
        pytest.fail(failure_message(marked[0], marked[1].paths), pytrace=False)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    records = config.stash.get(_SUMMARY, [])
    if not records:
        return
    terminalreporter.section("parity")
    for r in records:
        where = f" (recorded {r.bundle})" if r.recorded else ""
        if r.bundle is not None and not r.recorded:
            where = f" (against {r.bundle})"
        terminalreporter.write_line(f"{r.nodeid}: {r.verdict}{where}")
        for p in r.reports:
            terminalreporter.write_line(f"  report: {p}")
