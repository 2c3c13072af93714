"""envlock with real uv: lock a spec, tell a stale lock, materialize once, build safely in parallel.

A tiny spec (one small pure-Python package from PyPI) keeps these quick; the reference
model's torch environments are exercised in test_reference_model.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import BIN, lock_tiny_spec, run_cli

from envlock import LockFileError, read_lock
from envlock.backends import VenvBackend
from envlock.backends.venv import BYTECODE_SCRIPT


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


def _site(python: Path) -> Path:
    return Path(
        subprocess.run(
            [python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )


def _stale_modules(python: Path) -> list[str]:
    """The modules of `python`'s site-packages that `compileall` would (re)compile."""
    code = (
        "import compileall, importlib.util, os, struct, sysconfig\n"
        "site = sysconfig.get_paths()['purelib']\n"
        "for folder, dirs, files in os.walk(site):\n"
        "    dirs[:] = [d for d in dirs if d != '__pycache__']\n"
        "    for name in (f for f in files if f.endswith('.py')):\n"
        "        path = os.path.join(folder, name)\n"
        "        pyc = importlib.util.cache_from_source(path)\n"
        "        st = os.stat(path)\n"
        "        want = struct.pack('<4sLLL', importlib.util.MAGIC_NUMBER, 0,\n"
        "                           int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)\n"
        "        if not os.path.exists(pyc) or open(pyc, 'rb').read(16) != want:\n"
        "            print(os.path.relpath(path, site))\n"
    )
    out = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_environments_built_together_compile_a_shared_module_once(
    tiny_lock: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    backend = VenvBackend(cache)
    lock = read_lock(tiny_lock)
    # At once, as a check builds its two environments: one compiles, the other links.
    with ThreadPoolExecutor(max_workers=2) as pool:
        main, train = pool.map(lambda group: backend.materialize(lock, group), ["main", "train"])
    assert main.created and train.created
    for env in (main, train):
        # Every module has its bytecode, current, as uv's --compile-bytecode leaves it.
        assert _stale_modules(env.python) == []
        # Each module's code names its own file, not the environment it was linked from.
        out = subprocess.run(
            [env.python, "-I", "-c", "import six; print(six.add_metaclass.__code__.co_filename)"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == str(_site(env.python) / "six.py")
    markers = [json.loads((env.root / ".envlock.json").read_text()) for env in (main, train)]
    first, second = sorted(markers, key=lambda m: m["bytecode"]["linked"])
    assert first["bytecode"]["linked"] == 0 and first["bytecode"]["compiled"] > 0
    sources = [_site(env.python) / "six.py" for env in (main, train)]
    if not sources[0].samefile(sources[1]):
        pytest.skip("uv copied the files here (its cache on another file system): nothing shared")
    # six is in both: compiled once, the same .pyc file in both environments.
    compiled = [
        _site(env.python) / "__pycache__" / f"six.{sys.implementation.cache_tag}.pyc"
        for env in (main, train)
    ]
    assert compiled[0].samefile(compiled[1])
    assert second["bytecode"]["linked"] >= 1
    # The second compiled only what it does not share: every module that is the very file
    # in the first was linked (the two groups share six; train has iniconfig alone).
    modules = {}
    for marker in (first, second):
        site = _site({"main": main, "train": train}[marker["group"]].python)
        modules[marker["group"]] = (site, {p.relative_to(site) for p in site.rglob("*.py")})
    (site1, ones), (site2, twos) = modules[first["group"]], modules[second["group"]]
    same = {m for m in ones & twos if (site1 / m).samefile(site2 / m)}
    assert Path("six.py") in same
    assert second["bytecode"]["linked"] >= len(same)
    assert second["bytecode"]["compiled"] >= len(twos - ones)
    assert second["bytecode"]["linked"] + second["bytecode"]["compiled"] == len(twos)


def test_a_module_with_other_bytes_is_compiled_not_linked(tiny_lock: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    lock = read_lock(tiny_lock)
    main = VenvBackend(cache).materialize(lock, "main")
    site = _site(main.python)
    assert (site / "six.py").is_file()
    # A copy of the environment whose six.py differs from the donor's in its bytes only: the
    # same size and mtime, which is all a .pyc header records, so only its bytes tell.
    other = tmp_path / "other"
    shutil.copytree(main.root, other, symlinks=True)
    shutil.rmtree(other / site.relative_to(main.root) / "__pycache__")
    six = other / site.relative_to(main.root) / "six.py"
    before = six.stat()
    text = six.read_text()
    assert '__version__ = "1.17.0"' in text
    six.write_text(text.replace('__version__ = "1.17.0"', '__version__ = "9.99.9"'))
    os.utime(six, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert six.stat().st_size == before.st_size
    out = subprocess.run(
        [other / "bin" / "python", "-I", str(BYTECODE_SCRIPT), str(main.root)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == {"linked": 0, "compiled": 1}
    # -B: the .pyc there is what runs, and it is six.py's own.
    probe = subprocess.run(
        [other / "bin" / "python", "-I", "-B", "-c", "import six; print(six.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "9.99.9"
    assert _stale_modules(other / "bin" / "python") == []


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
