"""The mlserver example, as its users run it: a real MLServer (1.7.1) in a venv envlock
builds from the example's lock, serving the reference model through a custom runtime on
127.0.0.1 (free ports, one process, metrics off), checked against the training venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, assert_valid_report

EXAMPLE = ROOT / "examples" / "mlserver"
pytestmark = pytest.mark.slow


def run_example(
    tmp_path: Path, cache: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], dict]:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "check.py"), "--cache-dir", str(cache),
         "--out", str(tmp_path), *args, "--", "--json", str(report)],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    data = json.loads(report.read_text()) if report.exists() else {}
    if data:
        assert_valid_report(data)
    return done, data


def _no_server_left(tmp_path: Path) -> None:
    """Nothing the example started is still running (it names its models folder)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert not [line for line in ps.stdout.splitlines() if str(EXAMPLE / "models") in line]


def test_mlserver_serving_the_reference_model_passes(tmp_path: Path, shared_cache: Path) -> None:
    done, report = run_example(tmp_path, shared_cache)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["verdict"] == "pass"
    served = report["environments"]["served"]
    assert served["backend"] == "endpoint" and served["fingerprinted"] is True
    assert served["packages"]["mlserver"] == "1.7.1"
    assert all(o["passed"] and o["mismatched"] == 0 for o in report["outputs"])
    assert "tensors travel as JSON" in done.stderr
    # what MLServer brings runs the server: reported, expected, never failing the check
    mlserver = next(v for v in report["version_diffs"] if v["name"] == "mlserver")
    assert mlserver["expected"] and "serving stack" in mlserver["note"]
    assert not any(v["fails"] for v in report["version_diffs"])
    _no_server_left(tmp_path)


def test_mlserver_built_from_the_numpy_drift_lock_fails_naming_numpy(
    tmp_path: Path, shared_cache: Path
) -> None:
    lock = EXAMPLE / "numpy-drift" / "pylock.toml"
    done, report = run_example(tmp_path, shared_cache, "--lock", str(lock))
    assert done.returncode == 1, done.stdout + done.stderr
    assert report["verdict"] == "fail"
    numpy = next(v for v in report["version_diffs"] if v["name"] == "numpy")
    assert numpy["versions"] == {"train": "2.4.6", "served": "1.26.4"} and numpy["fails"]
    assert any(
        r.startswith("numpy differs: 2.4.6 (train), 1.26.4 (served)") for r in report["reasons"]
    )
    assert not all(o["passed"] for o in report["outputs"])  # NEP 50: the numbers change too
    _no_server_left(tmp_path)
