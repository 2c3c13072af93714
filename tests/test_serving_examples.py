"""The serving examples, as their users run them: a real MLServer (1.7.1, the Open
Inference Protocol) and a real BentoML (1.4, its own HTTP API), each in a venv envlock
builds from the example's lock, serving the reference model on 127.0.0.1, checked against
the training venv: the reference lock passes, the numpy-drift lock fails naming numpy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, assert_valid_report

pytestmark = pytest.mark.slow
SERVERS = {
    # example -> what its server's processes carry in their command lines, and its package
    "mlserver": (str(ROOT / "examples" / "mlserver" / "models"), "mlserver", "1.7.1"),
    "bentoml": ("service:Espcn", "bentoml", "1.4.40"),
}


def run_example(
    example: str, tmp_path: Path, cache: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], dict]:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example / "check.py"),
         "--cache-dir", str(cache), "--out", str(tmp_path), *args,
         "--", "--json", str(report)],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    data = json.loads(report.read_text()) if report.exists() else {}
    if data:
        assert_valid_report(data)
    return done, data


def assert_no_server_left(example: str) -> None:
    """Nothing the example started still runs (the server, its workers)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    marker = SERVERS[example][0]
    assert not [line for line in ps.stdout.splitlines() if marker in line]


@pytest.mark.parametrize("example", SERVERS)
def test_the_served_reference_model_passes(
    example: str, tmp_path: Path, shared_cache: Path
) -> None:
    done, report = run_example(example, tmp_path, shared_cache)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["verdict"] == "pass"
    served = report["environments"]["served"]
    _, package, version = SERVERS[example]
    assert served["backend"] == "endpoint" and served["fingerprinted"] is True
    assert served["packages"][package] == version
    assert all(o["passed"] and o["mismatched"] == 0 for o in report["outputs"])
    assert "tensors travel as JSON" in done.stderr
    # what the server brings runs the server: reported, expected, never failing the check
    server = next(v for v in report["version_diffs"] if v["name"] == package)
    assert server["expected"] and "serving stack" in server["note"]
    assert not any(v["fails"] for v in report["version_diffs"])
    assert_no_server_left(example)


@pytest.mark.parametrize("example", SERVERS)
def test_a_server_built_from_the_numpy_drift_lock_fails_naming_numpy(
    example: str, tmp_path: Path, shared_cache: Path
) -> None:
    lock = ROOT / "examples" / example / "numpy-drift" / "pylock.toml"
    done, report = run_example(example, tmp_path, shared_cache, "--lock", str(lock))
    assert done.returncode == 1, done.stdout + done.stderr
    assert report["verdict"] == "fail"
    numpy = next(v for v in report["version_diffs"] if v["name"] == "numpy")
    assert numpy["versions"] == {"train": "2.4.6", "served": "1.26.4"} and numpy["fails"]
    said = "numpy differs: 2.4.6 (train), 1.26.4 (served)"
    assert any(r.startswith(said) for r in report["reasons"])
    assert not all(o["passed"] for o in report["outputs"])  # NEP 50: the numbers change too
    assert_no_server_left(example)
