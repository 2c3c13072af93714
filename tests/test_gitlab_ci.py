"""The GitLab CI template (`ci/gitlab/parity.gitlab-ci.yml`): valid against GitLab's CI
schema (as check-jsonschema vendors it from SchemaStore), and its job's script run as a
GitLab runner's bash shell runs it (the job's variables in the environment, every script
entry in one `bash -eo pipefail` session in the project's folder) in a project of a
user's, passing and failing, with the artifacts GitLab would collect checked."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BIN, ROOT
from conftest import scaled_project as project

TEMPLATE = ROOT / "ci" / "gitlab" / "parity.gitlab-ci.yml"


def template() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())
    return data


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_template_is_valid_gitlab_ci(tmp_path: Path) -> None:
    result = validate(TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr
    # The schema leaves hidden jobs (`.parity`) alone: validate the job as `extends` makes it.
    resolved = template()
    resolved["parity"] = resolved[".parity"] | {
        k: v for k, v in resolved["parity"].items() if k != "extends"
    }
    (tmp_path / "resolved.yml").write_text(yaml.safe_dump(resolved))
    result = validate(tmp_path / "resolved.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # ...and the schema does check what GitLab checks: a wrong value is refused.
    resolved["parity"]["artifacts"] = resolved["parity"]["artifacts"] | {"when": "sometimes"}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(resolved))
    refused = validate(tmp_path / "broken.yml")
    assert refused.returncode == 1, refused.stdout
    assert "sometimes" in refused.stdout


def test_the_job_collects_what_its_script_writes() -> None:
    data = template()
    assert data["parity"] == {"extends": ".parity"}
    job = data[".parity"]
    assert job["stage"] == "test" and job["image"].startswith("python:")
    script = "\n".join(job["script"])
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always"  # the reports of a failing check are kept too
    assert artifacts["paths"] == ["parity-reports/"]
    for kind, path in artifacts["reports"].items():
        assert path.startswith("parity-reports/"), kind
        assert path in script, kind  # the script writes it
    assert artifacts["reports"]["junit"] == "parity-reports/parity.xml"
    assert artifacts["reports"]["dotenv"] == "parity-reports/parity.env"
    for variable in job["variables"]:
        assert f"${variable}" in script or variable.startswith("PIP_"), variable


def run_job(project: Path, path_first: Path, variables: dict[str, str]) -> tuple[int, str]:
    """The job `parity` as a runner runs it: its exit status and its log."""
    data = template()
    job = data[data["parity"]["extends"]] | {k: v for k, v in data["parity"].items()}
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update({k: str(v) for k, v in job["variables"].items()})
    env.update(variables)
    env.update(
        CI="true",
        GITLAB_CI="true",
        CI_JOB_NAME="parity",
        CI_PROJECT_DIR=str(project),
        PATH=f"{path_first}{os.pathsep}{env['PATH']}",
    )
    script = project.parent / f"{project.name}-job.sh"
    script.write_text("\n".join(job["script"]) + "\n")
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def dotenv(project: Path) -> dict[str, str]:
    """parity.env as GitLab reads a dotenv report: KEY=VALUE lines, names it accepts."""
    lines = (project / "parity-reports" / "parity.env").read_text().splitlines()
    pairs = dict(line.split("=", 1) for line in lines)
    assert all(k.isidentifier() and k.isupper() for k in pairs), pairs
    return pairs


def junit_failures(project: Path) -> int:
    root = ET.parse(project / "parity-reports" / "parity.xml").getroot()
    assert list(root.iter("testcase")), "a test report with testcases"
    return len(list(root.iter("failure")))


def test_the_job_passes_a_passing_check_and_fails_a_failing_one(tmp_path: Path) -> None:
    # `parity` already on PATH (an image that has it): PARITY_PACKAGE empty skips the install.
    installed = {"PARITY_PACKAGE": ""}
    same = project(tmp_path / "same", "1")
    status, log = run_job(same, BIN, installed)
    assert status == 0, log
    assert "parity check: pass (exit 0)" in log
    assert dotenv(same) == {"PARITY_VERDICT": "pass", "PARITY_EXIT_CODE": "0"}
    assert sorted(p.name for p in (same / "parity-reports").iterdir()) == [
        "parity.env",
        "parity.html",
        "parity.json",
        "parity.md",
        "parity.xml",
    ]
    assert junit_failures(same) == 0

    drifted = project(tmp_path / "drifted", "1.01")
    status, log = run_job(drifted, BIN, installed)
    assert status == 1, log  # the job fails with the check's status
    assert "parity check: fail (exit 1)" in log
    assert dotenv(drifted) == {"PARITY_VERDICT": "fail", "PARITY_EXIT_CODE": "1"}
    assert junit_failures(drifted) >= 1

    status, log = run_job(drifted, BIN, installed | {"PARITY_CONFIG": "missing.toml"})
    assert status == 2, log
    assert dotenv(drifted) == {"PARITY_VERDICT": "error", "PARITY_EXIT_CODE": "2"}

    status, log = run_job(drifted, BIN, installed | {"PARITY_ARGS": "--calibrate --quiet"})
    assert status == 1, log
    assert '"calibrated": true' in (drifted / "parity-reports" / "parity.json").read_text()


@pytest.mark.slow
def test_the_job_installs_envlock_parity_and_runs_the_check(tmp_path: Path) -> None:
    # What the python image gives: a Python first on PATH with nothing installed; the job
    # installs envlock-parity (from this checkout: PARITY_PACKAGE takes a path) into it.
    venv = tmp_path / "image-python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    same = project(tmp_path / "same", "1")
    env = {"PARITY_PACKAGE": str(ROOT), "PYTHONPATH": ""}
    status, log = run_job(same, venv / "bin", env)
    assert status == 0, log
    assert (venv / "bin" / "parity").exists()
    assert dotenv(same) == {"PARITY_VERDICT": "pass", "PARITY_EXIT_CODE": "0"}
