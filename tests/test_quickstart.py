"""The README's quick start, run as written: the three lines of its first `sh` block under
"Quick start", in a fresh venv where `pip install` installs this checkout, in a project
folder holding what the README says it holds (requirements.txt and mymodel.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def quick_start_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the Quick start section has no sh block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_quick_start_is_pip_install_parity_init_parity_check() -> None:
    lines = quick_start_lines()
    assert [shlex.split(line)[:2] for line in lines] == [
        ["pip", "install"],
        ["parity", "init"],
        ["parity", "check"],
    ]
    assert shlex.split(lines[0])[2:] == ["envlock-parity"]


def user_project(folder: Path) -> Path:
    folder.mkdir()
    (folder / "requirements.txt").write_text(f"numpy=={np.__version__}\n")
    (folder / "mymodel.py").write_text(
        textwrap.dedent(
            """\
            import numpy as np

            WEIGHTS = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)


            def predict(batch):
                return {"scores": np.tanh(batch["x"] @ WEIGHTS)}
            """
        )
    )
    return folder


@pytest.mark.slow
def test_the_quick_start_passes_as_written(tmp_path: Path, shared_cache: Path) -> None:
    venv = tmp_path / "user-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    project = user_project(tmp_path / "project")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["ENVLOCK_CACHE_DIR"] = str(shared_cache)
    for line in quick_start_lines():
        argv = shlex.split(line)
        if argv[:2] == ["pip", "install"]:  # not published yet: this checkout, as it says
            argv = [str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)]
        else:
            argv[0] = str(venv / "bin" / argv[0])  # the console script pip installed
        done = subprocess.run(
            argv, cwd=project, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
    for written in ("parity.toml", "locks/pyproject.toml", "locks/pylock.toml"):
        assert (project / written).is_file(), written
    # the check really compared the model's output in two environments, and said so
    check = subprocess.run(
        [str(venv / "bin" / "parity"), "check", "-q", "--json", "report.json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads((project / "report.json").read_text())
    assert report["verdict"] == "pass"
    assert [o["name"] for o in report["outputs"]] == ["scores"]
    assert len(report["environments"]) == 2
