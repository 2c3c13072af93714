"""conda-lock.yml: read through conda-lock's own models, and conda environments verified."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from condalock_files import conda, reference_packages, write_lock
from conftest import run_cli

from envlock import read_lock
from envlock.diff import Side, diff, from_lock


def test_read_groups_platforms_and_managers(tmp_path: Path) -> None:
    lock = read_lock(write_lock(tmp_path / "conda-lock.yml"))
    assert lock.flavor == "conda-lock" and lock.groups == ("main", "train")
    assert lock.requires_python == "==3.11.*"
    linux = {"sys_platform": "linux", "platform_machine": "x86_64"}
    assert lock.versions("main", linux) == {
        "numpy": "2.1.3",
        "python": "3.11.9",
        "safetensors": "0.4.5",
    }
    assert lock.versions("train", linux)["tqdm"] == "4.66.5"
    windows = {"sys_platform": "win32", "platform_machine": "AMD64"}
    assert lock.versions("main", windows) == {}
    numpy = next(p for p in lock.packages_in("main", linux) if p.name == "numpy")
    assert (numpy.manager, numpy.build, numpy.channel) == ("conda", "py311_0", "conda-forge")
    assert {p.manager for p in lock.packages_in("main", linux)} == {"conda", "pip"}


def test_diff_two_conda_locks(tmp_path: Path) -> None:
    a = read_lock(write_lock(tmp_path / "a.conda-lock.yml"))
    b = read_lock(write_lock(tmp_path / "b.conda-lock.yml", reference_packages(numpy="1.26.4")))
    found = diff(Side("a", from_lock(a, "main"), "lock"), Side("b", from_lock(b, "main"), "lock"))
    assert [(d.component, d.a, d.b, d.severity) for d in found] == [
        ("package numpy", "2.1.3", "1.26.4", "numerics")
    ]


def make_prefix(root: Path, packages: dict[str, tuple[str, str]], pip: dict[str, str]) -> Path:
    """A conda environment as conda leaves it: conda-meta records and site-packages."""
    (root / "conda-meta").mkdir(parents=True)
    for name, (version, build) in packages.items():
        record = {"name": name, "version": version, "build": build, "channel": "conda-forge"}
        (root / "conda-meta" / f"{name}-{version}-{build}.json").write_text(json.dumps(record))
    site = root / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    for name, version in {**pip, "numpy": packages.get("numpy", ("", ""))[0]}.items():
        if version:
            (site / f"{name}-{version}.dist-info").mkdir()
    return root


def test_verify_a_conda_environment(tmp_path: Path) -> None:
    lock = write_lock(tmp_path / "conda-lock.yml")
    good = make_prefix(
        tmp_path / "good",
        {"python": ("3.11.9", "h_cpython"), "numpy": ("2.1.3", "py311_0")},
        {"safetensors": "0.4.5"},
    )
    ok = run_cli("envlock", "verify", "--prefix", str(good), "--lock", str(lock))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    train = run_cli(
        "envlock",
        "verify",
        "--prefix",
        str(good),
        "--lock",
        str(lock),
        "--group",
        "train",
        "--json",
    )
    assert train.returncode == 1
    assert json.loads(train.stdout) == [
        {
            "name": "tqdm",
            "problem": "missing",
            "locked": "4.66.5",
            "installed": None,
            "benign": False,
        }
    ]
    bad = make_prefix(
        tmp_path / "bad",
        {"python": ("3.11.9", "h_other"), "numpy": ("1.26.4", "py311_0")},
        {"safetensors": "0.4.4"},
    )
    drift = run_cli("envlock", "verify", "--prefix", str(bad), "--lock", str(lock), "--json")
    assert drift.returncode == 1
    assert {(p["name"], p["problem"]) for p in json.loads(drift.stdout)} == {
        ("numpy", "version"),
        ("python", "build"),
        ("safetensors", "version"),
    }


def test_a_folder_that_is_not_conda_is_refused(tmp_path: Path) -> None:
    lock = write_lock(tmp_path / "conda-lock.yml")
    result = run_cli("envlock", "verify", "--prefix", str(tmp_path), "--lock", str(lock))
    assert result.returncode == 3
    assert f"{tmp_path} is not a conda environment (no conda-meta folder)" in result.stderr


def test_duplicate_conda_package_is_refused(tmp_path: Path) -> None:
    packages = [*reference_packages(), conda("numpy", "1.26.4", "py311_1", "linux-64")]
    path = write_lock(tmp_path / "conda-lock.yml", packages)
    result = run_cli("envlock", "show", str(path))
    assert result.returncode == 2
    assert "conda package 'numpy' is locked twice for linux-64" in result.stderr


@pytest.mark.skipif(shutil.which("conda") is None, reason="needs a conda executable")
def test_a_real_conda_environment_matches_what_conda_reports(tmp_path: Path) -> None:
    # Where conda exists: its own view of the base environment agrees with conda-meta.
    listed = json.loads(
        subprocess.run(
            ["conda", "list", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    prefix = Path(
        json.loads(
            subprocess.run(
                ["conda", "info", "--json"], capture_output=True, text=True, check=True
            ).stdout
        )["active_prefix"]
    )
    from envlock.probe import conda_packages

    ours = {p["name"]: p["version"] for p in conda_packages(str(prefix)) or []}
    assert {p["name"]: p["version"] for p in listed if p.get("channel") != "pypi"} == ours


def test_conda_locks_are_not_materialized_as_venvs(tmp_path: Path) -> None:
    lock = write_lock(tmp_path / "conda-lock.yml")
    result = run_cli("envlock", "materialize", str(lock), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2
    assert "the venv backend installs PEP 751 locks (pylock.toml) only" in result.stderr


def test_a_package_in_several_categories_is_one_package_in_all_of_them(tmp_path: Path) -> None:
    # conda-lock writes such a package once per category (here libblas in main and dev).
    libblas = conda("libblas", "3.9.0", "20_linux64_openblas", "linux-64")
    libblas.categories = {"main", "dev"}
    pytest_ = conda("pytest", "8.3.3", "pyhd8ed1ab_0", "linux-64")
    pytest_.categories = {"dev", "test"}
    path = write_lock(tmp_path / "conda-lock.yml", [*reference_packages(), libblas, pytest_])
    assert path.read_text().count("- name: libblas\n") == 2
    lock = read_lock(path)
    assert lock.groups == ("main", "dev", "test", "train")
    linux = {"sys_platform": "linux", "platform_machine": "x86_64"}
    assert lock.versions("main", linux)["libblas"] == "3.9.0"
    assert "pytest" not in lock.versions("main", linux)
    assert lock.versions("dev", linux)["pytest"] == lock.versions("test", linux)["pytest"]
    shown = run_cli("envlock", "show", str(path), "--group", "dev")
    assert shown.returncode == 0, shown.stderr
    assert "  libblas 3.9.0 20_linux64_openblas [conda]\n" in shown.stdout


def test_entries_of_one_package_that_differ_beyond_category_are_refused(tmp_path: Path) -> None:
    main = conda("libblas", "3.9.0", "20_linux64_openblas", "linux-64")
    dev = conda("libblas", "3.9.0", "21_linux64_mkl", "linux-64", category="dev")
    path = write_lock(tmp_path / "conda-lock.yml", [*reference_packages(), main, dev])
    result = run_cli("envlock", "show", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"Error: {path} (package[1]): conda package 'libblas' is locked twice for linux-64 "
        "(also package[0]): build 21_linux64_mkl here, 20_linux64_openblas there; "
        "a different url\n"
    )


def test_a_package_listed_twice_in_one_category_is_refused(tmp_path: Path) -> None:
    # conda-lock's own parser fails on this (an assertion); envlock says what is wrong.
    twice = [*reference_packages(), conda("numpy", "2.1.3", "py311_0", "linux-64")]
    path = write_lock(tmp_path / "conda-lock.yml", twice)
    result = run_cli("envlock", "show", str(path))
    assert result.returncode == 2
    assert "conda package 'numpy' is locked twice for linux-64 in category 'main'" in result.stderr
