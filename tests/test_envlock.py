"""envlock with real uv: lock a spec, tell a stale lock, materialize once, build safely in parallel.

A tiny spec (one small pure-Python package from PyPI) keeps these quick; the reference
model's torch environments are exercised in test_reference_model.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, lock_tiny_spec, run_cli

from envlock import LockFileError, read_lock
from envlock.backends import VenvBackend


@pytest.fixture(scope="module")
def tiny_lock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lock_tiny_spec(tmp_path_factory.mktemp("tiny"), "tiny-env")


def test_lock_has_one_version_per_package_and_group_markers(tiny_lock: Path) -> None:
    lock = read_lock(tiny_lock)
    assert lock.groups == ("main", "train")
    assert lock.versions("main") == {"six": "1.17.0"}
    assert lock.versions("train") == {"six": "1.17.0", "iniconfig": "2.1.0"}
    assert lock.group_of("iniconfig") == "train"
    assert all(f.sha256 for p in lock.packages for f in p.wheels)
    assert lock.spec_sha256 and lock.spec_path == tiny_lock.with_name("pyproject.toml")


def test_lock_check_tells_a_stale_lock_without_solving(tiny_lock: Path, tmp_path: Path) -> None:
    spec = tmp_path / "pyproject.toml"
    shutil.copy(tiny_lock.with_name("pyproject.toml"), spec)
    shutil.copy(tiny_lock, tmp_path / "pylock.toml")
    fresh = run_cli(
        "envlock", "lock", "--check", "--spec", str(spec), env={"ENVLOCK_UV": "/nonexistent/uv"}
    )
    assert fresh.returncode == 0, fresh.stderr
    assert "is up to date" in fresh.stdout
    spec.write_text(spec.read_text().replace("six==1.17.0", "six==1.16.0"))
    stale = run_cli(
        "envlock", "lock", "--check", "--spec", str(spec), env={"ENVLOCK_UV": "/nonexistent/uv"}
    )
    assert stale.returncode == 1
    assert (
        f"Error: {tmp_path / 'pylock.toml'} is stale: {spec} changed since it was locked"
        in stale.stderr
    )


def test_committed_locks_are_fresh(repo: Path) -> None:
    for spec in ("locks/pyproject.toml", "examples/numpy-drift/locks/pyproject.toml"):
        result = run_cli("envlock", "lock", "--check", "--spec", spec)
        assert result.returncode == 0, result.stderr


def test_second_materialization_installs_nothing(tiny_lock: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run_cli(
        "envlock", "materialize", str(tiny_lock), "--group", "train", "--cache-dir", str(cache)
    )
    assert first.returncode == 0, first.stderr
    assert "created:" in first.stderr
    python = Path(first.stdout.strip())
    probe = subprocess.run(
        [python, "-c", "import six, iniconfig; print(six.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "1.17.0"
    venv = python.parent.parent
    before = {p: p.stat().st_mtime_ns for p in venv.rglob("*")}
    # With uv unreachable, a second run can only succeed by installing nothing.
    second = run_cli(
        "envlock",
        "materialize",
        str(tiny_lock),
        "--group",
        "train",
        "--cache-dir",
        str(cache),
        env={"ENVLOCK_UV": "/nonexistent/uv"},
    )
    assert second.returncode == 0, second.stderr
    assert "cached:" in second.stderr
    assert Path(second.stdout.strip()) == python
    assert {p: p.stat().st_mtime_ns for p in venv.rglob("*")} == before
    main_only = VenvBackend(cache).materialize(read_lock(tiny_lock), "main")
    assert main_only.created and main_only.root != venv
    assert (
        subprocess.run(
            [main_only.python, "-c", "import iniconfig"], check=False, capture_output=True
        ).returncode
        == 1
    )


def test_concurrent_materializations_do_not_corrupt_the_cache(
    tiny_lock: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [str(BIN / "envlock"), "materialize", str(tiny_lock), "--cache-dir", str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    assert sum("created:" in err for _, err in results) == 1
    assert sum("cached:" in err for _, err in results) == 3
    venvs = cache / "venvs"
    assert sorted(p.name for p in venvs.iterdir() if not p.name.startswith(".")) == [
        VenvBackend(cache).key(read_lock(tiny_lock), "main")
    ]
    assert list((venvs / ".building").iterdir()) == []
    marker = json.loads((Path(paths.pop()).parent.parent / ".envlock.json").read_text())
    assert marker["group"] == "main"


def test_failed_build_leaves_nothing_in_place(tmp_path: Path) -> None:
    lock_path = tmp_path / "pylock.toml"
    lock_path.write_text(
        'lock-version = "1.0"\ncreated-by = "t"\n\n[[packages]]\nname = "six"\nversion = "1.17.0"\n'
        '[[packages.wheels]]\nurl = "file:///nonexistent/six-1.17.0-py2.py3-none-any.whl"\n'
        'hashes = {sha256 = "' + "0" * 64 + '"}\n'
    )
    result = run_cli("envlock", "materialize", str(lock_path), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 3
    assert "Error: uv failed" in result.stderr
    venvs = tmp_path / "c" / "venvs"
    assert [p.name for p in venvs.iterdir() if not p.name.startswith(".")] == []
    assert list((venvs / ".building").iterdir()) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'lock-version = "2.0"\ncreated-by = "x"\npackages = []\n',
            "(lock-version): pylock version 2.0 is not supported",
        ),
        (
            'lock-version = "1.0"\ncreated-by = "x"\n[[packages]]\nname = "a"\nversion = 3\n',
            "(packages[0].version): Unexpected type int (expected str)",
        ),
        (
            'lock-version = "1.0"\ncreated-by = "x"\n[[packages]]\nname = "a"\nversion = "1"\n'
            '[[packages.wheels]]\nurl = "https://x/a-1-py3-none-any.whl"\nhashes = {md5 = "00"}\n',
            "(packages[0].wheels[0].hashes): no hash envlock can check this file by: "
            "md5 is too weak",
        ),
        (
            'lock-version = "1.0"\ncreated-by = "x"\n[[packages]]\nname = "a"\nversion = "1"\n'
            'wheels = [{url = "https://x/a-1-py3-none-any.whl", hashes = {sha256 = "00"}}]\n'
            '[[packages]]\nname = "a"\nversion = "2"\n'
            'wheels = [{url = "https://x/a-2-py3-none-any.whl", hashes = {sha256 = "00"}}]\n',
            "(packages[1]): package 'a' is locked twice under the same marker",
        ),
        ('lock-version = "1.0"\ncreated-by = "x"\npackages = [\n', "not valid TOML"),
    ],
)
def test_malformed_lock_names_file_and_place(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "pylock.toml"
    path.write_text(text)
    with pytest.raises(LockFileError) as info:
        read_lock(path)
    assert str(info.value).startswith(f"{path} ") or str(info.value).startswith(f"{path}:")
    assert message in str(info.value)
    result = run_cli("envlock", "materialize", str(path), "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 2
    assert message in result.stderr
