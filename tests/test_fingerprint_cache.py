"""A venv's fingerprint is taken once per state of the environment and reused while it is
unchanged (issue 17): what it holds is probed by the host with the environment's own
interpreter, cached in the tool's cache, and probed again when a distribution is installed,
uninstalled or its metadata edited; a model cannot change what the report says the
environment holds."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from conftest import assert_valid_report, run_cli

from envlock.backends.base import Environment
from envlock.fingerprints import static_fingerprint

ADAPTER = """\
import numpy as np

def predict(inputs):
    return {"y": inputs["x"] * 2}
"""

CONFIG = """\
[model]
adapter = "adapter:predict"
paths = ["src"]

[inputs]
seed = 3
count = 4
batch_size = 4

[inputs.arrays.x]
shape = [3]
dtype = "float64"

[environments.a]
backend = "local"
python = "{python}"

[environments.b]
backend = "local"
python = "{python}"
"""


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A real venv (no pip) that sees this interpreter's packages (numpy for the worker)
    through a .pth file; its site-packages folder."""
    root = tmp_path / "venv"
    subprocess.run(
        [sys._base_executable, "-m", "venv", "--without-pip", str(root)],  # type: ignore[attr-defined]
        check=True,
    )
    site = next((root / "lib").glob("python3*/site-packages"))
    (site / "host-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return site


def install(site: Path, name: str, version: str) -> Path:
    """Install a distribution the way an installer leaves it: its `*.dist-info` with
    METADATA, INSTALLER and RECORD (and its one module)."""
    (site / f"{name}.py").write_text("")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text(
        f"{name}.py,sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0\n"
    )
    return info


def versions(fingerprint: dict[str, object]) -> dict[str, str]:
    dists = fingerprint["distributions"]
    assert isinstance(dists, list)
    return {d["name"]: d["version"] for d in dists}


def test_the_fingerprint_is_reused_while_the_venv_is_unchanged_and_taken_again_after(
    venv: Path, tmp_path: Path
) -> None:
    env = Environment("venv", venv.parents[2] / "bin" / "python", "test venv")
    cache = tmp_path / "cache"
    first = static_fingerprint(env, cache)
    assert first is not None and not first.reused
    assert first.entry.is_file() and first.entry.parent == cache / "fingerprints"
    assert "tinypkg" not in versions(first.sections)
    written = first.entry.stat().st_mtime_ns

    again = static_fingerprint(env, cache)
    assert again is not None and again.reused
    assert again.sections == first.sections
    assert again.entry.stat().st_mtime_ns == written  # not probed: the entry was not rewritten

    info = install(venv, "tinypkg", "1.0")  # installed
    installed = static_fingerprint(env, cache)
    assert installed is not None and not installed.reused
    assert versions(installed.sections)["tinypkg"] == "1.0"

    # its metadata edited in place (the folder's name and listing unchanged)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0.post1\n")
    edited = static_fingerprint(env, cache)
    assert edited is not None and not edited.reused
    assert versions(edited.sections)["tinypkg"] == "1.0.post1"
    assert static_fingerprint(env, cache).reused  # type: ignore[union-attr]

    for f in info.iterdir():  # uninstalled
        f.unlink()
    info.rmdir()
    removed = static_fingerprint(env, cache)
    assert removed is not None and not removed.reused
    assert "tinypkg" not in versions(removed.sections)


def _check(cfg: Path, tmp_path: Path, name: str) -> tuple[dict[str, object], str]:
    report = tmp_path / f"{name}.json"
    result = run_cli(
        "parity", "check", "--config", str(cfg), "--cache-dir", str(tmp_path / "cache"),
        "--json", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert_valid_report(data)
    return data, result.stderr


def _packages(report: dict[str, object], env: str) -> dict[str, str]:
    environments = report["environments"]
    assert isinstance(environments, dict)
    packages = environments[env]["packages"]
    assert isinstance(packages, dict)
    return packages


def test_a_second_check_of_an_unchanged_venv_reuses_its_fingerprint_and_sees_a_change(
    venv: Path, write_project, tmp_path: Path
) -> None:
    python = venv.parents[2] / "bin" / "python"
    cfg = write_project(ADAPTER, CONFIG.format(python=python))
    first, said = _check(cfg, tmp_path, "first")
    assert "[a] fingerprint taken" in said
    assert "tinypkg" not in _packages(first, "a")
    assert "numpy" in _packages(first, "a")

    second, said = _check(cfg, tmp_path, "second")
    assert "[a] fingerprint reused: environment unchanged since it was taken" in said
    assert "[b] fingerprint reused" in said
    assert _packages(second, "a") == _packages(first, "a")

    install(venv, "tinypkg", "2.5")
    third, said = _check(cfg, tmp_path, "third")
    assert "[a] fingerprint taken" in said
    assert _packages(third, "a")["tinypkg"] == "2.5"
    assert _packages(third, "b")["tinypkg"] == "2.5"


def test_a_model_cannot_hide_what_its_environment_holds_and_its_changes_show(
    venv: Path, write_project, tmp_path: Path
) -> None:
    """The model's process hides every distribution from importlib.metadata, and installs
    one into its environment while it loads: the report lists what the environment holds,
    the new one included, as a probe taken after the run would."""
    python = venv.parents[2] / "bin" / "python"
    adapter = textwrap.dedent(f"""\
        import importlib.metadata, os
        import numpy as np

        importlib.metadata.distributions = lambda **kw: iter(())
        site = {str(venv)!r}
        info = os.path.join(site, "sneaky-1.0.dist-info")
        os.makedirs(info, exist_ok=True)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write("Metadata-Version: 2.1\\nName: sneaky\\nVersion: 1.0\\n")

        def predict(inputs):
            return {{"y": inputs["x"] * 2}}
    """)
    cfg = write_project(adapter, CONFIG.format(python=python))
    _check(cfg, tmp_path, "warm")  # the fingerprint cached before the model ran
    (venv / "sneaky-1.0.dist-info" / "METADATA").unlink()
    (venv / "sneaky-1.0.dist-info").rmdir()
    report, _ = _check(cfg, tmp_path, "report")
    packages = _packages(report, "b")
    assert "numpy" in packages
    assert packages["sneaky"] == "1.0"


def test_the_worker_runs_from_bytecode_compiled_once_for_the_interpreter(tmp_path: Path) -> None:
    import platform

    from parity.runs.job import compiled_scripts

    ours = {"version": platform.python_version(), "implementation": "CPython"}
    scripts = compiled_scripts(ours, tmp_path)
    assert scripts is not None
    assert {p.suffix for p in scripts.values()} == {".pyc"}
    made = scripts["worker"].stat().st_mtime_ns
    assert compiled_scripts(ours, tmp_path) == scripts
    assert scripts["worker"].stat().st_mtime_ns == made  # compiled once
    # It runs as the worker does: here, refusing a missing job file.
    ran = subprocess.run(
        [sys.executable, "-s", str(scripts["worker"])], capture_output=True, text=True
    )
    assert ran.returncode == 2 and "usage: worker.py JOB.json" in ran.stderr
    # Another minor version, or a pre-release, reads other bytecode: the sources run.
    assert compiled_scripts({"version": "3.9.18", "implementation": "CPython"}, tmp_path) is None
    assert compiled_scripts({**ours, "version": ours["version"] + "rc1"}, tmp_path) is None
    assert compiled_scripts({**ours, "implementation": "PyPy"}, tmp_path) is None


def test_the_same_worker_in_another_checkout_gets_bytecode_naming_its_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import marshal
    import platform

    from parity.runs import job

    ours = {"version": platform.python_version(), "implementation": "CPython"}
    cache = tmp_path / "cache"
    here = job.compiled_scripts(ours, cache)
    other = tmp_path / "elsewhere" / "worker.py"
    other.parent.mkdir()
    other.write_bytes(job.WORKER.read_bytes())  # the same code, another checkout
    monkeypatch.setattr(job, "WORKER", other)
    there = job.compiled_scripts(ours, cache)
    assert here is not None and there is not None and here["worker"] != there["worker"]
    for scripts, source in ((here, Path(job.__file__).with_name("worker.py")), (there, other)):
        code = marshal.loads(scripts["worker"].read_bytes()[16:])  # our own bytecode
        assert code.co_filename == str(source)  # what a worker's traceback names
