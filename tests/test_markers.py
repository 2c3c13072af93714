"""A lock's markers are evaluated for the environment under test, not for the machine reading
the lock: `envlock verify` and `envlock diff` of a lock against a fingerprint choose the
packages the fingerprinted interpreter and platform install.

The lock is uv's (tests/data/locks/markers: `tomli` below Python 3.11, `colorama` on
Windows). The fingerprints are this interpreter's, recorded by `envlock fingerprint`; the
ones of other environments (a Python 3.10, a Windows machine) are that fingerprint with its
markers and interpreter set as such a machine records them, since this machine has only
CPython 3.11 on Linux."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_cli
from packaging.markers import default_environment

import envlock.probe
from envlock import read_lock
from envlock.installable import marker_environment
from envlock.verify import failures, verify_fingerprint

LOCK = ROOT / "tests" / "data" / "locks" / "markers" / "pylock.toml"
SIX = {"name": "six", "version": "1.17.0"}
TOMLI = {"name": "tomli", "version": "2.2.1"}


@pytest.fixture(scope="module")
def here() -> dict[str, Any]:
    """This interpreter's fingerprint, as `envlock fingerprint` records it."""
    result = run_cli("envlock", "fingerprint", "--no-import")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def elsewhere(fp: dict[str, Any], dists: list[dict[str, str]], **markers: str) -> dict[str, Any]:
    """`fp` with these distributions, its markers (and interpreter) as another machine's."""
    other = json.loads(json.dumps(fp))
    other["distributions"] = dists
    other["markers"].update(markers)
    if "python_full_version" in markers:
        other["python"]["version"] = markers["python_full_version"]
    return other


def problems(fp: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m.name, m.problem) for m in failures(verify_fingerprint(fp, read_lock(LOCK), "main"))]


def test_a_fingerprint_records_its_interpreters_markers(here: dict[str, Any]) -> None:
    assert here["markers"] == {k: str(v) for k, v in default_environment().items()}


def test_verify_chooses_the_locked_packages_for_the_fingerprinted_python(
    here: dict[str, Any],
) -> None:
    assert problems(elsewhere(here, [SIX])) == []  # this machine: Python 3.11, Linux
    py310 = {"python_version": "3.10", "python_full_version": "3.10.14"}
    assert problems(elsewhere(here, [SIX], **py310)) == [("tomli", "missing")]
    assert problems(elsewhere(here, [SIX, TOMLI], **py310)) == []
    # On this machine's Python, tomli is not the lock's: installed, it is extra.
    assert problems(elsewhere(here, [SIX, TOMLI])) == [("tomli", "extra")]


def test_verify_chooses_the_locked_packages_for_the_fingerprinted_platform(
    here: dict[str, Any],
) -> None:
    windows = {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt"}
    assert problems(elsewhere(here, [SIX], **windows)) == [("colorama", "missing")]


def test_a_fingerprint_without_markers_is_read_by_its_interpreter_and_platform(
    here: dict[str, Any],
) -> None:
    """Fingerprints recorded before they had `markers`: their python and platform sections."""
    old = elsewhere(here, [SIX])
    del old["markers"]
    assert problems(old) == []
    old["python"]["version"] = "3.10.14"
    assert problems(old) == [("tomli", "missing")]
    old["python"]["version"] = "3.11.7"
    old["platform"]["system"] = "Windows"
    assert problems(old) == [("colorama", "missing")]


def test_diff_of_a_lock_and_a_fingerprint_uses_the_fingerprints_markers(
    here: dict[str, Any], tmp_path: Path
) -> None:
    py310 = tmp_path / "py310.json"
    py310.write_text(
        json.dumps(elsewhere(here, [SIX], python_version="3.10", python_full_version="3.10.14"))
    )
    result = run_cli("envlock", "diff", str(LOCK), str(py310), "--json")
    assert result.returncode == 1, result.stderr
    packages = [
        (d["key"], d["a"], d["b"]) for d in json.loads(result.stdout) if d["section"] == "package"
    ]
    assert packages == [("tomli", "2.2.1", None)]
    # Both ways round, and with this machine's markers nothing differs in packages.
    back = run_cli("envlock", "diff", str(py310), str(LOCK), "--json")
    assert [
        (d["key"], d["a"], d["b"]) for d in json.loads(back.stdout) if d["section"] == "package"
    ] == [("tomli", None, "2.2.1")]
    same = tmp_path / "here.json"
    same.write_text(json.dumps(elsewhere(here, [SIX])))
    result = run_cli("envlock", "diff", str(LOCK), str(same), "--json")
    assert [d for d in json.loads(result.stdout) if d["section"] == "package"] == []


def test_an_interpreters_markers_are_read_by_the_fingerprint_probe(
    here: dict[str, Any], tmp_path: Path
) -> None:
    """`parity bisect` evaluates markers for the reference's interpreter as its fingerprint
    records them: the probe's one definition, run by that interpreter."""
    calls = tmp_path / "calls.txt"
    python = tmp_path / "python"  # the interpreter, saying how it was run
    python.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    assert marker_environment(python) == here["markers"]
    assert calls.read_text().split() == ["-s", envlock.probe.__file__, "--markers"]
