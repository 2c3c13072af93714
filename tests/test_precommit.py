"""The pre-commit hook this repository offers (`.pre-commit-hooks.yaml`), run by the real
pre-commit in a temporary git repository: pre-commit installs envlock from this
repository's commit (as it would from its URL) into a hook environment of its own, and the
hook passes on a current lock and refuses a commit whose lock spec changed without the lock.

Slow: pre-commit builds the package and installs its dependencies from PyPI (a minute)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

PRE_COMMIT = Path(sys.executable).parent / "pre-commit"


def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_hook_passes_a_current_lock_and_refuses_a_commit_of_a_stale_one(
    tmp_path: Path,
) -> None:
    if not PRE_COMMIT.exists():
        pytest.skip("pre-commit is not installed (the dev group has it)")
    ours = git(ROOT, "rev-parse", "HEAD").stdout.strip()
    hooks = git(ROOT, "show", f"{ours}:.pre-commit-hooks.yaml")
    assert hooks.returncode == 0, "commit .pre-commit-hooks.yaml: pre-commit reads it at a rev"
    repo = tmp_path / "project"
    (repo / "locks").mkdir(parents=True)
    for name in ("pyproject.toml", "pylock.toml"):  # a spec and the lock solved from it
        shutil.copy(ROOT / "locks" / name, repo / "locks" / name)
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {ROOT}\n    rev: {ours}\n    hooks:\n"
        "      - id: envlock-lock-check\n        args: [--spec, locks/pyproject.toml]\n"
    )
    assert git(repo, "init", "-q").returncode == 0
    git(repo, "add", "-A")
    assert git(repo, "commit", "-q", "-m", "a project with a lock").returncode == 0
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-cache")}
    env.pop("VIRTUAL_ENV", None)

    def pre_commit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PRE_COMMIT), *args],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    current = pre_commit("run", "--all-files")
    assert current.returncode == 0, current.stdout + current.stderr
    assert "envlock lock --check (the shared lock is current)" in current.stdout
    assert "Passed" in current.stdout

    # The spec changes, the lock does not: the commit is refused, saying why.
    assert pre_commit("install").returncode == 0
    spec = repo / "locks" / "pyproject.toml"
    spec.write_text(spec.read_text().replace("dependencies = [", 'dependencies = [\n  "six",', 1))
    git(repo, "add", "-A")
    commit = git(repo, "commit", "-q", "-m", "a new dependency, not locked")
    assert commit.returncode != 0
    assert "Failed" in commit.stdout + commit.stderr
    assert "is stale" in commit.stdout + commit.stderr
    assert git(repo, "log", "--oneline").stdout.count("\n") == 1  # nothing committed
