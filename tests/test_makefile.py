"""The Makefile's stamps: `make parity` syncs only what the commands need, and never again
what a `make test` synced; `make test` syncs the development group whatever ran before; a
changed lock syncs again. Checked with `make -n` (what make would run) on a copy of the
Makefile, its stamps dated as each order of commands leaves them: no uv runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_SYNC = "uv sync --frozen --no-dev --inexact"
FULL_SYNC = "uv sync --frozen --python"
CHECK = ".venv/bin/parity check --config parity.toml"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A checkout as make sees it: the Makefile, the lock, a bootstrap uv."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in ("pyproject.toml", "uv.lock"):
        (tmp_path / name).write_text("")
    (tmp_path / ".cache" / "bootstrap" / "bin").mkdir(parents=True)
    (tmp_path / ".cache" / "bootstrap" / "bin" / "uv").write_text("")
    (tmp_path / ".venv").mkdir()
    stamp(tmp_path, "pyproject.toml", "uv.lock", age=100)
    return tmp_path


def stamp(tree: Path, *names: str, age: int) -> None:
    """Create (or date) files of `tree` as written `age` seconds ago."""
    when = 1_800_000_000 - age
    for name in names:
        (tree / name).touch()
        os.utime(tree / name, (when, when))


def would_run(tree: Path, target: str) -> list[str]:
    """The commands `make target` would run in `tree`."""
    # Not what a make running these tests passes down, nor a PYTHON of the caller's.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHON")
    }
    done = subprocess.run(
        ["make", "-n", target], cwd=tree, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.splitlines()


def test_a_fresh_checkout_syncs_only_the_runtime_for_parity(tree: Path) -> None:
    commands = would_run(tree, "parity")
    assert sum(RUNTIME_SYNC in c for c in commands) == 1
    assert not any(FULL_SYNC in c for c in commands)
    assert not any("compile_runtime.py --all" in c for c in commands)
    assert "touch .venv/.runtime" in commands
    assert commands[-1] == CHECK


def test_parity_after_the_tests_syncs_nothing(tree: Path) -> None:
    # What `make test` leaves: both sync stamps and the compiled one, newer than the lock.
    stamp(tree, ".venv/.synced", ".venv/.runtime", ".venv/.compiled", age=10)
    assert would_run(tree, "parity") == [CHECK]


def test_the_full_sync_stamps_the_runtime_too(tree: Path) -> None:
    commands = would_run(tree, "lint")
    assert any(FULL_SYNC in c for c in commands)
    assert not any(RUNTIME_SYNC in c for c in commands)
    assert "touch .venv/.synced .venv/.runtime" in commands


def test_the_tests_after_parity_sync_the_development_group(tree: Path) -> None:
    stamp(tree, ".venv/.runtime", age=10)  # what `make parity` leaves
    commands = would_run(tree, "test")
    assert sum(FULL_SYNC in c for c in commands) == 1
    assert not any(RUNTIME_SYNC in c for c in commands)
    assert any("compile_runtime.py --all" in c for c in commands)
    assert commands[-1].startswith(".venv/bin/pytest")


def test_a_changed_lock_syncs_again(tree: Path) -> None:
    stamp(tree, ".venv/.synced", ".venv/.runtime", ".venv/.compiled", age=10)
    stamp(tree, "uv.lock", age=5)
    assert any(RUNTIME_SYNC in c for c in would_run(tree, "parity"))
    assert any(FULL_SYNC in c for c in would_run(tree, "test"))


def test_the_bootstrap_uv_is_installed_without_a_pip_of_its_own(tree: Path) -> None:
    (tree / ".cache" / "bootstrap" / "bin" / "uv").unlink()
    commands = would_run(tree, "parity")
    assert commands[0] == "python3.11 -m venv --without-pip .cache/bootstrap"
    assert "-m pip --python .cache/bootstrap/bin/python install" in commands[1]
    assert sum(RUNTIME_SYNC in c for c in commands) == 1
