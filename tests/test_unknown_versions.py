"""A failed environment's versions are unknown, and every report says so: never "none",
never "0 distributions", which would read as evidence that nothing differs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from conftest import LOCAL_CONFIG, assert_valid_report, run_cli

# The failing side fails 5 s late: the other side (12 samples) has finished by then, and so
# is not stopped before its fingerprint is taken (a side's failure stops the other).
RAISING = """\
import os
import time

def predict(inputs):
    if os.environ.get("BOOM"):
        time.sleep(5)
        raise RuntimeError("no weights")
    return {"y": inputs["x"]}
"""


def test_a_failed_candidate_leaves_its_versions_unknown_in_every_report(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    config = LOCAL_CONFIG.format(timeout=120) + '\n[environments.infer.env]\nBOOM = "1"\n'
    cfg = write_project(RAISING, config)
    files = {k: tmp_path / f"r.{k}" for k in ("json", "xml", "md", "html", "metrics")}
    result = run_cli(
        "parity", "check", "--config", str(cfg), "--json", str(files["json"]),
        "--junit", str(files["xml"]), "--markdown", str(files["md"]),
        "--html", str(files["html"]), "--metrics", str(files["metrics"]),
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    why = "infer failed before its fingerprint was taken"

    assert f"version differences: unknown ({why})" in result.stdout
    assert "version differences: none" not in result.stdout
    infer_row = next(line for line in result.stdout.splitlines() if "infer (candidate)" in line)
    assert " unknown " in infer_row and " 0 " not in infer_row

    report = json.loads(files["json"].read_text())
    assert_valid_report(report)
    assert report["verdict"] == "error" and report["versions_known"] is False
    assert report["environments"]["infer"]["fingerprinted"] is False
    assert report["environments"]["train"]["fingerprinted"] is True

    assert f"Version differences: unknown ({why})." in files["md"].read_text()
    html = files["html"].read_text()
    assert f"Unknown ({why})." in html and "None.</p>" not in html
    assert '<td class="num">unknown</td>' in html
    junit = files["xml"].read_text()
    assert f"version differences: unknown ({why})" in junit
    assert json.loads(files["metrics"].read_text())["version_diffs"] == "unknown"


def test_a_passing_check_still_says_none(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(RAISING, LOCAL_CONFIG.format(timeout=120))
    out = tmp_path / "r.json"
    result = run_cli("parity", "check", "--config", str(cfg), "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "version differences: none" in result.stdout
    report = json.loads(out.read_text())
    assert_valid_report(report)
    assert "versions_known" not in report  # absent when known
    assert all(e["fingerprinted"] for e in report["environments"].values())


# infer fails at once; train would take a minute, and is stopped when infer fails.
FAILS_FAST = """\
import os
import time

def predict(inputs):
    if os.environ.get("BOOM"):
        raise RuntimeError("no weights")
    time.sleep(60)
    return {"y": inputs["x"]}
"""


def test_the_side_stopped_by_a_failure_is_said_stopped_not_failed(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    config = LOCAL_CONFIG.format(timeout=120) + '\n[environments.infer.env]\nBOOM = "1"\n'
    cfg = write_project(FAILS_FAST, config)
    out = tmp_path / "r.json"
    md = tmp_path / "r.md"
    result = run_cli(
        "parity", "check", "--config", str(cfg), "--json", str(out), "--markdown", str(md),
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    why = "infer failed, and train was stopped, before their fingerprints were taken"
    assert f"version differences: unknown ({why})" in result.stdout
    assert f"Version differences: unknown ({why})." in md.read_text()
    report = json.loads(out.read_text())
    assert_valid_report(report)
    assert report["versions_known"] is False
    assert not any(e["fingerprinted"] for e in report["environments"].values())
    assert "environment 'train': stopped: environment 'infer' failed first" in report["errors"]
