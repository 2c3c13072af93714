"""The pytest plugin, as a user's suite runs it: a real pytest process (pytester) running a
user's test file against real environments, the failure message being the report's reasons,
the reports attached as junit properties and listed in the summary, and golden bundles
recorded with --parity-record and checked against afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import LOCAL_CONFIG, ROOT

pytest_plugins = ("pytester",)

ADAPTER = """\
import os
import numpy as np

def predict(inputs):
    y = inputs["x"] * np.float32(2)
    if os.environ.get("DRIFT"):
        y = y + np.float32(1e-3)
    return {"y": y}
"""
DRIFT = '\n[environments.infer.env]\nDRIFT = "1"\n'
# Until the project is installed again with its entry point, `-p` loads the plugin; once the
# entry point (named like the module) has loaded it, `-p` finds it loaded and does nothing.
PLUGIN = ("-p", "parity.pytest_plugin")


def project(pytester: pytest.Pytester, tests: str, *, drift: bool = False) -> None:
    """A user's project: an adapter, a parity.toml of two local environments, a test file."""
    (pytester.path / "src").mkdir(exist_ok=True)
    (pytester.path / "src" / "adapter.py").write_text(ADAPTER)
    config = LOCAL_CONFIG.format(timeout=120) + (DRIFT if drift else "")
    (pytester.path / "parity.toml").write_text(config)
    pytester.makepyfile(test_model=textwrap.dedent(tests))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    reports = pytester.path / "reports"
    return pytester.runpytest_subprocess(
        *PLUGIN, "--parity-reports", str(reports), "-p", "no:cacheprovider", *args
    )


def properties(junit: Path) -> dict[str, dict[str, str]]:
    """Each testcase's junit properties, by test name."""
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        found[case.get("name", "")] = {
            p.get("name", ""): p.get("value", "") for p in case.iter("property")
        }
    return found


FIXTURE_TEST = """\
def test_infer_matches_train(parity_check):
    report = parity_check("parity.toml")
    assert report.verdict == "pass"
    assert [o.name for o in report.outputs] == ["y"]
"""


def test_a_passing_check_passes_and_attaches_its_reports(pytester: pytest.Pytester) -> None:
    project(pytester, FIXTURE_TEST)
    junit = pytester.path / "junit.xml"
    result = run(pytester, f"--junitxml={junit}")
    result.assert_outcomes(passed=1)
    props = properties(junit)["test_infer_matches_train"]
    assert props["parity_verdict"] == "pass"
    report = json.loads(Path(props["parity_report_json"]).read_text())
    assert report["verdict"] == "pass" and report["candidate"] == "infer"
    assert Path(props["parity_report_html"]).read_text().startswith("<!DOCTYPE html>")
    assert "parity_bundle" not in props  # two environments, no bundle
    result.stdout.fnmatch_lines(
        [
            "*= parity =*",
            "test_model.py::test_infer_matches_train: pass",
            f"  report: {props['parity_report_json']}",
            f"  report: {props['parity_report_html']}",
        ]
    )


def test_a_failing_check_fails_the_test_with_the_reports_reasons(
    pytester: pytest.Pytester,
) -> None:
    project(pytester, FIXTURE_TEST, drift=True)
    junit = pytester.path / "junit.xml"
    result = run(pytester, f"--junitxml={junit}")
    result.assert_outcomes(failed=1)
    props = properties(junit)["test_infer_matches_train"]
    assert props["parity_verdict"] == "fail"
    report = json.loads(Path(props["parity_report_json"]).read_text())
    assert report["reasons"] and report["reasons"][0].startswith("output 'y': 144 of 144 elements")
    # The failure is the reasons the terminal report gives, not a traceback into the plugin.
    result.stdout.fnmatch_lines(
        [
            "*parity check failed (*parity.toml: infer against train)",
            *[f"  - {reason}" for reason in report["reasons"]],
            f"report: {props['parity_report_json']}",
            f"report: {props['parity_report_html']}",
        ]
    )
    assert "pytest_plugin.py" not in result.stdout.str()
    failure = ET.parse(junit).getroot().find(".//failure")
    assert failure is not None and report["reasons"][0] in failure.get("message", "")


MARKED_TEST = """\
import pytest

@pytest.mark.parity(config="parity.toml")
def test_serving_side():
    open("body-ran", "w").close()
"""


@pytest.mark.parametrize("drift", [False, True])
def test_a_marked_test_runs_its_check_first(pytester: pytest.Pytester, drift: bool) -> None:
    project(pytester, MARKED_TEST, drift=drift)
    result = run(pytester, "--strict-markers")
    if drift:
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*parity check failed*", "  - output 'y': 144 of 144*"])
        assert not (pytester.path / "body-ran").exists()
    else:
        result.assert_outcomes(passed=1)
        assert (pytester.path / "body-ran").exists()
    result.stdout.fnmatch_lines(
        [f"test_model.py::test_serving_side: {'fail' if drift else 'pass'}"]
    )


@pytest.mark.slow  # five pytest runs
def test_record_a_golden_bundle_then_check_against_it(pytester: pytest.Pytester) -> None:
    project(pytester, FIXTURE_TEST)
    bundle = pytester.path / "test_model" / "test_infer_matches_train.bundle"

    recorded = run(pytester, "--parity-record")
    recorded.assert_outcomes(passed=1)
    assert (bundle / "manifest.json").exists() or any(bundle.iterdir())
    recorded.stdout.fnmatch_lines([f"*test_infer_matches_train: pass (recorded {bundle})"])

    # The default bundle exists now: a plain run checks the candidate against it.
    junit = pytester.path / "junit.xml"
    against = run(pytester, f"--junitxml={junit}")
    against.assert_outcomes(passed=1)
    props = properties(junit)["test_infer_matches_train"]
    assert props["parity_bundle"] == str(bundle)
    report = json.loads(Path(props["parity_report_json"]).read_text())
    assert report["against"]["path"].endswith("test_infer_matches_train.bundle")
    against.stdout.fnmatch_lines([f"*test_infer_matches_train: pass (against {bundle})"])

    # The candidate drifts: it fails against the recording, with the reasons.
    (pytester.path / "parity.toml").write_text(LOCAL_CONFIG.format(timeout=120) + DRIFT)
    drifted = run(pytester)
    drifted.assert_outcomes(failed=1)
    drifted.stdout.fnmatch_lines(
        ["*parity check failed*infer against train*", "  - output 'y': 144 of 144 elements*"]
    )

    # --parity-against names a bundle for every check; one that is not there is an error.
    missing = run(pytester, "--parity-against", str(pytester.path / "nowhere.tar.gz"))
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(
        [
            "parity check could not run: BundleError: *nowhere.tar.gz: no golden bundle "
            "there (record it with pytest --parity-record)"
        ]
    )
    assert "pytest_plugin.py" not in missing.stdout.str()


def test_an_archive_bundle_named_by_the_test_is_recorded_and_checked(
    pytester: pytest.Pytester,
) -> None:
    project(
        pytester,
        """\
        def test_against_archive(parity_check):
            parity_check("parity.toml", bundle="golden/infer.tar.gz")
        """,
    )
    missing = run(pytester)
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*golden/infer.tar.gz: no golden bundle there*"])
    run(pytester, "--parity-record").assert_outcomes(passed=1)
    assert (pytester.path / "golden" / "infer.tar.gz").is_file()
    run(pytester).assert_outcomes(passed=1)


def test_a_suite_that_does_not_use_it_pays_nothing_for_it(pytester: pytest.Pytester) -> None:
    # Loading the plugin imports neither NumPy nor any of parity's check machinery.
    code = (
        "import sys, parity.pytest_plugin\n"
        "heavy = ['numpy', 'rich', 'click', 'parity.check', 'parity.config', 'envlock.envvars']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = run(pytester, "--strict-markers")
    result.assert_outcomes(passed=1)
    assert "= parity =" not in result.stdout.str()


VENV_CONFIG = """\
[model]
adapter = "adapter:predict"
paths = ["src"]

[inputs]
seed = 7
count = 12
batch_size = 6

[inputs.arrays.x]
shape = [3, 4]
dtype = "float32"

[environments.train]
backend = "venv"
lock = "{root}/examples/sklearn-drift/locks/train/pylock.toml"

[environments.infer]
backend = "venv"
lock = "{root}/examples/sklearn-drift/locks/{infer}/pylock.toml"

[run]
reference = "train"
threads = 1

[policy]
fail_on_version_diffs = ["numerics"]
"""


@pytest.mark.slow
def test_a_numpy_pin_that_differs_between_two_venvs_fails_the_users_test(
    pytester: pytest.Pytester, shared_cache: Path
) -> None:
    # One lock for both venvs passes; the inference lock (NumPy 2.2.6 where training has
    # 1.26.4) fails on the version difference, which the failure message names.
    project(pytester, FIXTURE_TEST)
    config = pytester.path / "parity.toml"
    cache = ("--parity-cache-dir", str(shared_cache))
    config.write_text(VENV_CONFIG.format(root=ROOT, infer="train"))
    run(pytester, *cache).assert_outcomes(passed=1)

    config.write_text(VENV_CONFIG.format(root=ROOT, infer="infer"))
    junit = pytester.path / "junit.xml"
    result = run(pytester, *cache, f"--junitxml={junit}")
    result.assert_outcomes(failed=1)
    report = json.loads(
        Path(properties(junit)["test_infer_matches_train"]["parity_report_json"]).read_text()
    )
    assert report["verdict"] == "fail"
    numpy = [r for r in report["reasons"] if "numpy" in r]
    assert numpy and "1.26.4" in numpy[0] and "2.2.6" in numpy[0]
    result.stdout.fnmatch_lines(
        ["*parity check failed*infer against train*", *[f"  - {r}" for r in report["reasons"]]]
    )
