"""`envlock verify --python` and `envlock.guard()` against real environments."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import BIN, lock_tiny_spec, run_cli

from envlock import read_lock
from envlock.backends import VenvBackend


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guard")
    lock = lock_tiny_spec(root, "tiny-guard-env")
    env = VenvBackend(root / "cache").materialize(read_lock(lock), "main")
    site = next((env.root or root).glob("lib/python*/site-packages"))
    return {"lock": lock, "python": env.python, "site": site, "root": root}


def test_verify_a_venv_against_its_lock(tiny: dict[str, Path]) -> None:
    ok = run_cli("envlock", "verify", "--python", str(tiny["python"]), "--lock", str(tiny["lock"]))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "matches" in ok.stdout and "[main]: 1 packages" in ok.stdout
    lacking = run_cli(
        "envlock",
        "verify",
        "--python",
        str(tiny["python"]),
        "--lock",
        str(tiny["lock"]),
        "--group",
        "train",
        "--json",
    )
    assert lacking.returncode == 1
    assert json.loads(lacking.stdout) == [
        {"name": "iniconfig", "problem": "missing", "locked": "2.1.0", "installed": None}
    ]


def test_verify_finds_installed_files_that_are_not_the_locked_wheel(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    house = run_cli("envlock", "fetch", str(tiny["lock"]), "--dest", str(tmp_path / "wh"))
    assert house.returncode == 0, house.stderr
    venv = tmp_path / "copy"
    root = tiny["python"].parent.parent
    subprocess.run(["cp", "-a", str(root), str(venv)], check=True)

    def verify() -> subprocess.CompletedProcess[str]:
        python = str(venv / "bin" / "python")
        wheelhouse = str(tmp_path / "wh")
        return run_cli(
            "envlock",
            "verify",
            "--python",
            python,
            "--lock",
            str(tiny["lock"]),
            "--wheelhouse",
            wheelhouse,
        )

    clean = verify()
    assert clean.returncode == 0, clean.stdout
    six = next(venv.glob("lib/python*/site-packages/six.py"))
    six.write_text(six.read_text() + "\n# patched in place\n")
    record = next(venv.glob("lib/python*/site-packages/six-*.dist-info/RECORD"))
    # A careful tamperer fixes RECORD too; the hash then no longer matches the wheel's.
    digest = base64.urlsafe_b64encode(hashlib.sha256(six.read_bytes()).digest()).rstrip(b"=")
    lines = [
        f"six.py,sha256={digest.decode()},{six.stat().st_size}"
        if line.startswith("six.py,")
        else line
        for line in record.read_text().splitlines()
    ]
    record.write_text("\n".join(lines) + "\n")
    tampered = verify()
    assert tampered.returncode == 1
    assert "six" in tampered.stdout and "files" in tampered.stdout


def _guard(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "python"), "-W", "always", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_guard_passes_on_the_locked_environment(tiny: dict[str, Path]) -> None:
    result = _guard(f"""
        import envlock
        site = [{str(tiny["site"])!r}]
        assert envlock.guard({str(tiny["lock"])!r}, paths=site, strict=True) == []
        print("ok")
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok" and "Warning" not in result.stderr


def test_guard_warns_or_raises_on_drift(tiny: dict[str, Path]) -> None:
    # Checked as the train group: iniconfig is locked there but not installed.
    warn = _guard(f"""
        import envlock
        found = envlock.guard({str(tiny["lock"])!r}, group="train", paths=[{str(tiny["site"])!r}])
        print([(m.name, m.problem) for m in found])
        """)
    assert warn.returncode == 0, warn.stderr
    assert warn.stdout.strip() == "[('iniconfig', 'missing')]"
    assert "EnvironmentDriftWarning" in warn.stderr
    assert "iniconfig: locked 2.1.0, not installed" in warn.stderr
    strict = _guard(f"""
        import envlock
        envlock.guard({str(tiny["lock"])!r}, group="train", paths=[{str(tiny["site"])!r}],
                      strict=True)
        """)
    assert strict.returncode == 1
    assert (
        "envlock.runtime.EnvironmentDrift" in strict.stderr or "EnvironmentDrift" in strict.stderr
    )
    assert "iniconfig: locked 2.1.0, not installed" in strict.stderr


def test_guard_against_a_recorded_fingerprint(tmp_path: Path) -> None:
    fp = run_cli("envlock", "fingerprint", "--no-import")
    assert fp.returncode == 0
    recorded = tmp_path / "fingerprint.json"
    recorded.write_text(fp.stdout)
    same = _guard(f"""
        import envlock
        assert envlock.guard(fingerprint={str(recorded)!r}, strict=True) == []
        """)
    assert same.returncode == 0, same.stderr
    data = json.loads(fp.stdout)
    for d in data["distributions"]:
        if d["name"] == "click":
            d["version"] = "0.1"
    recorded.write_text(json.dumps(data))
    drift = _guard(f"""
        import envlock
        print([(m.name, m.problem, m.locked) for m in envlock.guard(fingerprint={str(recorded)!r})])
        """)
    assert drift.returncode == 0
    assert drift.stdout.strip() == "[('click', 'version', '0.1')]"
