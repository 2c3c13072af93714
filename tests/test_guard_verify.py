"""`envlock verify --python` and `envlock.guard()` against real environments."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import BIN, TINY_SPEC, lock_tiny_spec, run_cli

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
        {
            "name": "iniconfig",
            "problem": "missing",
            "locked": "2.1.0",
            "installed": None,
            "benign": False,
        }
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


# --- a venv that `python -m venv` made: pip seeded, the lock's packages installed by pip ----


@pytest.fixture(scope="module")
def pip_venv(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pip-venv")
    house = run_cli("envlock", "fetch", str(tiny["lock"]), "--dest", str(root / "wh"))
    assert house.returncode == 0, house.stderr
    subprocess.run([str(BIN / "python"), "-m", "venv", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    wanted = [f"{n}=={v}" for n, v in read_lock(tiny["lock"]).versions("main").items()]
    links = [f"--find-links={f}" for f in sorted({w.parent for w in (root / "wh").rglob("*.whl")})]
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", *links, *wanted],
        check=True,
        capture_output=True,
    )
    site = next((root / "venv").glob("lib/python*/site-packages"))
    return {"python": python, "site": site, "root": root}


def _tooling(site: Path) -> dict[str, str]:
    """Installer tooling that `python -m venv` seeded: pip, and setuptools before 3.12."""
    found = {}
    for info in site.glob("*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        if name.lower() in ("pip", "setuptools", "wheel"):
            found[name.lower()] = version
    return dict(sorted(found.items()))


def _verify(python: Path, lock: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return run_cli("envlock", "verify", "--python", str(python), "--lock", str(lock), *options)


def test_verify_lists_the_pip_that_venv_seeded_as_tooling_and_passes(
    tiny: dict[str, Path], pip_venv: dict[str, Path]
) -> None:
    tooling = _tooling(pip_venv["site"])
    assert "pip" in tooling
    result = _verify(pip_venv["python"], tiny["lock"])
    assert result.returncode == 0, result.stdout + result.stderr
    shown = ", ".join(f"{n} {v}" for n, v in tooling.items())
    assert result.stdout.splitlines() == [
        f"{pip_venv['python']} matches {tiny['lock']} [main]: 1 packages",
        f"installer tooling, not in the lock: {shown}",
    ]
    as_json = _verify(pip_venv["python"], tiny["lock"], "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == [
        {"name": n, "problem": "extra", "locked": None, "installed": v, "benign": True}
        for n, v in tooling.items()
    ]


def test_verify_strict_counts_the_seeded_pip_as_extra(
    tiny: dict[str, Path], pip_venv: dict[str, Path]
) -> None:
    tooling = _tooling(pip_venv["site"])
    result = _verify(pip_venv["python"], tiny["lock"], "--strict")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{pip_venv['python']} differs from {tiny['lock']} [main]:"
    width = max(map(len, tooling))
    assert lines[1:] == [
        f"  {n:<{width}}  extra    locked -            installed {v}" for n, v in tooling.items()
    ]
    as_json = _verify(pip_venv["python"], tiny["lock"], "--strict", "--json")
    assert as_json.returncode == 1
    assert [(p["name"], p["problem"], p["benign"]) for p in json.loads(as_json.stdout)] == [
        (n, "extra", False) for n in tooling
    ]


def test_a_pip_the_lock_pins_is_checked_like_any_package(
    pip_venv: dict[str, Path], tmp_path: Path
) -> None:
    # The lock names pip at a version `python -m venv` does not seed: that pip is drift.
    spec = tmp_path / "pyproject.toml"
    spec.write_text(
        TINY_SPEC.format(name="tiny-pinned-pip").replace(
            '["six==1.17.0"]', '["six==1.17.0", "pip==24.0"]'
        )
    )
    locked = run_cli("envlock", "lock", "--spec", str(spec))
    assert locked.returncode == 0, locked.stderr
    lock = tmp_path / "pylock.toml"
    seeded = _tooling(pip_venv["site"])["pip"]
    assert seeded != "24.0"
    result = _verify(pip_venv["python"], lock, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    found = {p["name"]: p for p in json.loads(result.stdout)}
    assert found["pip"] == {
        "name": "pip",
        "problem": "version",
        "locked": "24.0",
        "installed": seeded,
        "benign": False,
    }
    assert all(p["benign"] for name, p in found.items() if name != "pip")
    text = _verify(pip_venv["python"], lock)
    assert f"  pip  version  locked 24.0         installed {seeded}" in text.stdout.splitlines()


def test_verify_fingerprint_api_is_strict_when_asked(
    tiny: dict[str, Path], pip_venv: dict[str, Path]
) -> None:
    from envlock.verify import failures, verify_fingerprint

    probe = run_cli("envlock", "fingerprint", "--python", str(pip_venv["python"]), "--no-import")
    assert probe.returncode == 0, probe.stderr
    fingerprint = json.loads(probe.stdout)
    lock = read_lock(tiny["lock"])
    tooling = list(_tooling(pip_venv["site"]))
    lenient = verify_fingerprint(fingerprint, lock, "main")
    assert [(m.name, m.benign) for m in lenient] == [(n, True) for n in tooling]
    assert failures(lenient) == []
    strict = verify_fingerprint(fingerprint, lock, "main", strict=True)
    assert [(m.name, m.problem) for m in failures(strict)] == [(n, "extra") for n in tooling]


def test_guard_does_not_call_the_seeded_pip_drift(
    tiny: dict[str, Path], pip_venv: dict[str, Path]
) -> None:
    result = _guard(f"""
        import envlock
        site = [{str(pip_venv["site"])!r}]
        print(envlock.guard({str(tiny["lock"])!r}, paths=site, strict=True))
        print(envlock.guard({str(tiny["lock"])!r}, group="train", paths=site))
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "[]",
        "[Mismatch(name='iniconfig', problem='missing', locked='2.1.0', installed=None, "
        "benign=False)]",
    ]
    assert "iniconfig: locked 2.1.0, not installed" in result.stderr
    assert "pip" not in result.stderr


# --- diffs between sides that share few package names, or none -------------------------


def test_diff_of_sides_sharing_no_package_lists_every_one(
    tiny: dict[str, Path], repo: Path
) -> None:
    probe = run_cli("envlock", "fingerprint", "--python", str(tiny["python"]), "--no-import")
    assert probe.returncode == 0, probe.stderr
    fp = tiny["root"] / "tiny-fingerprint.json"
    fp.write_text(probe.stdout)
    other = "examples/numpy-drift/locks/pylock.toml#train"
    installed = {d["name"]: d["version"] for d in json.loads(probe.stdout)["distributions"]}
    locked = read_lock(repo / "examples/numpy-drift/locks/pylock.toml").versions("train")
    assert installed == {"six": "1.17.0"} and not set(installed) & set(locked)
    result = run_cli("envlock", "diff", str(fp), other, "--json")
    assert result.returncode == 1, result.stderr
    found = {d["component"]: d for d in json.loads(result.stdout)}
    assert sorted(found) == sorted(f"package {n}" for n in [*installed, *locked])
    assert found["package numpy"]["a"] is None and found["package numpy"]["b"] == "1.26.4"
    assert found["package numpy"]["severity"] == "numerics"
    assert found["package six"]["a"] == "1.17.0" and found["package six"]["b"] is None
    text = run_cli("envlock", "diff", str(fp), other)
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"{len(found)} differences (")
    assert len(lines) == 1 + len(found)
    assert any(
        # on one side only: no note about a release (there is none to compare it with)
        line.startswith(
            "  [numerics] numpy: installed only in the second environment; it can change "
            "computed values"
        )
        for line in lines
    )
