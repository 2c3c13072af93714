"""pylock.toml files other tools wrote (tests/data/locks/pylock): show, materialize, verify, diff.

Each file goes through `envlock show` for each of its groups. The installable ones are
materialized (one cache for all), and each venv is verified against the lock and group it
came from: `show` must list exactly what `materialize` installs and `verify` expects. The
hash and hostile-file tests use hand-made locks (said where they are written).
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from envlock import read_lock
from envlock.backends.venv import INSTALL_LOCK, install_request
from envlock.combine import combine

CORPUS = Path("tests/data/locks/pylock")  # relative: `envlock show` prints it as given
MAIN = {"idna": "3.10", "six": "1.17.0"}
TRAIN = {**MAIN, "iniconfig": "2.1.0", "packaging": "25.0"}
PROJECT = "project (source tree, not installed): tinyproj at {}"

# file -> group -> (what the group installs, the source tree line `show` adds or None)
EXPECTED: dict[str, dict[str, tuple[dict[str, str], str | None]]] = {
    "pylock.pip-project.toml": {"main": (MAIN, PROJECT.format(CORPUS / "project"))},
    "pylock.pip-requirements.toml": {"main": (MAIN, None)},
    "pylock.uv-project.toml": {"main": (MAIN, PROJECT.format(CORPUS / "project"))},
    "pylock.uv-no-project.toml": {"main": (MAIN, None)},
    "pylock.uv-train.toml": {"main": (TRAIN, PROJECT.format(CORPUS / "project"))},
    "pylock.pdm.toml": {"main": (MAIN, None), "train": (TRAIN, None)},
    # PDM writes the project's path relative to the project, not to the lock.
    "pylock.pdm-self.toml": {
        "main": (MAIN, PROJECT.format(CORPUS)),
        "train": (TRAIN, PROJECT.format(CORPUS)),
    },
    "pylock.pep751-example.toml": {
        "main": ({"attrs": "25.1.0", "cattrs": "24.1.2", "numpy": "2.2.3"}, None)
    },
}
NOT_INSTALLABLE_HERE = {"pylock.pep751-example.toml"}  # CPython 3.12 only
CASES = [(name, group) for name, groups in EXPECTED.items() for group in groups]


def test_the_corpus_its_notes_and_expectations_match() -> None:
    files = {p.name for p in (ROOT / CORPUS).glob("pylock.*.toml")}
    assert files == set(EXPECTED)
    notes = (ROOT / CORPUS / "README.md").read_text()
    assert all(f"`{name}`" in notes for name in files)


@pytest.mark.parametrize(("name", "group"), CASES)
def test_show_lists_what_each_group_installs(name: str, group: str) -> None:
    packages, source = EXPECTED[name][group]
    result = run_cli("envlock", "show", str(CORPUS / name), "--group", group)
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.startswith(f"{CORPUS / name} (pylock, groups: ")
    expected = [f"  {n} {v} [pip]" for n, v in sorted(packages.items())]
    assert lines == expected + ([source] if source else [])
    shown = run_cli("envlock", "show", str(CORPUS / name), "--group", group, "--json")
    as_json = json.loads(shown.stdout)
    assert as_json["groups"] == list(EXPECTED[name])
    assert {p["name"]: p["version"] for p in as_json["packages"]} == packages
    assert [s["name"] for s in as_json["not_installed"]] == (["tinyproj"] if source else [])


def test_pdm_default_groups_are_main() -> None:
    result = run_cli("envlock", "show", str(CORPUS / "pylock.pdm.toml"))
    assert result.stdout.splitlines()[0].startswith(
        f"{CORPUS / 'pylock.pdm.toml'} (pylock, groups: main (default-groups: default), train, "
    )
    by_name = run_cli("envlock", "show", str(CORPUS / "pylock.pdm.toml"), "--group", "default")
    assert by_name.returncode == 2
    assert by_name.stderr == (
        f"Error: {CORPUS / 'pylock.pdm.toml'}: 'default' is one of the lock's default-groups, "
        "which 'main' installs\n"
    )


def test_envlock_own_locks_go_to_uv_as_before(tmp_path: Path) -> None:
    # No source trees, no default-groups: uv gets the lock itself and the group, no copy.
    lock = read_lock(ROOT / "locks" / "pylock.toml")
    assert install_request(lock, "main", tmp_path) == (lock.path, [])
    assert install_request(lock, "train", tmp_path) == (lock.path, ["train"])
    assert list(tmp_path.iterdir()) == []


def test_a_lock_with_default_groups_goes_to_uv_with_them(tmp_path: Path) -> None:
    lock = read_lock(ROOT / CORPUS / "pylock.pdm-self.toml")
    path, groups = install_request(lock, "train", tmp_path)
    assert (path, groups) == (tmp_path / INSTALL_LOCK, ["default", "train"])
    copy = read_lock(path)
    assert copy.sources == ()
    assert copy.versions("train") == lock.versions("train") == TRAIN


def test_diff_of_two_producers_locks() -> None:
    same = run_cli(
        "envlock",
        "diff",
        f"{CORPUS / 'pylock.pdm.toml'}#train",
        str(CORPUS / "pylock.uv-train.toml"),
    )
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no differences" in same.stdout
    apart = run_cli(
        "envlock",
        "diff",
        str(CORPUS / "pylock.pip-project.toml"),
        f"{CORPUS / 'pylock.pdm.toml'}#train",
        "--json",
    )
    assert apart.returncode == 1, apart.stderr
    differences = json.loads(apart.stdout)
    assert sorted((d["a"], d["b"]) for d in differences) == [(None, "2.1.0"), (None, "25.0")]
    named = [n for n in ("iniconfig", "packaging") if any(n in d["component"] for d in differences)]
    assert named == ["iniconfig", "packaging"]


def test_bisect_combines_locks_that_name_their_project(tmp_path: Path) -> None:
    reference = read_lock(ROOT / CORPUS / "pylock.uv-project.toml")
    candidate = read_lock(ROOT / CORPUS / "pylock.pdm-self.toml")
    combined = combine(reference, "main", candidate, "train", ["iniconfig"], tmp_path)
    assert combined.versions() == {**MAIN, "iniconfig": "2.1.0"}
    assert combined.sources == ()


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("files.pythonhosted.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _pypi_reachable():
        pytest.skip("materializing the corpus downloads its wheels from PyPI")
    return tmp_path_factory.mktemp("pylock-corpus-cache")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "group"), [c for c in CASES if c[0] not in NOT_INSTALLABLE_HERE])
def test_materialize_installs_what_show_lists_and_verify_passes(
    name: str, group: str, corpus_cache: Path
) -> None:
    packages, source = EXPECTED[name][group]
    lock = str(CORPUS / name)
    built = run_cli(
        "envlock", "materialize", lock, "--group", group, "--cache-dir", str(corpus_cache)
    )
    assert built.returncode == 0, built.stderr
    assert f"envlock: installing {len(packages)} locked packages\n" in built.stderr
    assert (f"envlock: {source}\n" in built.stderr) == (source is not None)
    python = built.stdout.strip()
    listing = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(listing.stdout) == packages  # the project itself is not installed
    verified = run_cli("envlock", "verify", "--python", python, "--lock", lock, "--group", group)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout == f"{python} matches {lock} [{group}]: {len(packages)} packages\n"


# Hash algorithms: hand-made locks of one made-up wheel, served from a local mirror.

WHEEL = "tiny-1.0-py3-none-any.whl"
CONTENT = b"not really a wheel: fetch checks bytes, not contents"


def _hash_lock(folder: Path, hashes: dict[str, str]) -> Path:
    table = ", ".join(f'{k} = "{v}"' for k, v in hashes.items())
    path = folder / "pylock.toml"
    path.write_text(
        'lock-version = "1.0"\ncreated-by = "hand-made test lock"\n\n'
        '[[packages]]\nname = "tiny"\nversion = "1.0"\n'
        f'wheels = [{{ url = "https://example.invalid/{WHEEL}", hashes = {{ {table} }} }}]\n'
    )
    return path


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / WHEEL).write_bytes(CONTENT)
    return folder


def test_fetch_checks_a_wheel_hashed_with_sha512_only(tmp_path: Path, mirror: Path) -> None:
    sha512 = hashlib.sha512(CONTENT).hexdigest()
    lock = _hash_lock(tmp_path, {"sha512": sha512})
    dest = tmp_path / "wheelhouse"
    args = ["fetch", str(lock), "--offline", "--mirror", str(mirror), "--dest", str(dest)]
    result = run_cli("envlock", *args, env={"PIP_FIND_LINKS": "", "ENVLOCK_MIRRORS": ""})
    assert result.returncode == 0, result.stderr
    house = Path(result.stdout.strip())
    assert (house / "main" / WHEEL).read_bytes() == CONTENT
    assert (house / "main" / "requirements.txt").read_text() == (
        f"tiny==1.0 --hash=sha512:{sha512}\n"
    )


def test_fetch_checks_the_strongest_hash_given(tmp_path: Path, mirror: Path) -> None:
    # sha256 right, sha512 wrong: the file is refused, so sha512 is the one checked.
    wrong = "0" * 128
    lock = _hash_lock(tmp_path, {"sha256": hashlib.sha256(CONTENT).hexdigest(), "sha512": wrong})
    args = ["fetch", str(lock), "--offline", "--mirror", str(mirror), "--dest", str(tmp_path)]
    result = run_cli("envlock", *args, env={"PIP_FIND_LINKS": "", "ENVLOCK_MIRRORS": ""})
    assert result.returncode == 3
    assert result.stderr.splitlines()[-1] == (
        f"Error: {mirror / WHEEL}: sha512 mismatch: the lock pins sha512:{wrong}, the file has "
        f"sha512:{hashlib.sha512(CONTENT).hexdigest()}"
    )


def test_verify_wheelhouse_checks_wheels_by_the_locks_algorithm(
    tmp_path: Path, mirror: Path
) -> None:
    lock = _hash_lock(tmp_path, {"sha384": hashlib.sha384(CONTENT).hexdigest()})
    house = tmp_path / "wheelhouse" / "main"
    house.mkdir(parents=True)
    (house / WHEEL).write_bytes(CONTENT + b"tampered")
    args = ["--python", sys.executable, "--lock", str(lock), "--wheelhouse", str(house.parent)]
    result = run_cli("envlock", "verify", *args)
    assert result.returncode == 3
    assert result.stderr == (
        f"Error: {house / WHEEL}: sha384 mismatch: the lock pins "
        f"sha384:{hashlib.sha384(CONTENT).hexdigest()}, the file has "
        f"sha384:{hashlib.sha384(CONTENT + b'tampered').hexdigest()}\n"
    )


# Hostile files: the hand-made ones in tests/data/malformed, and a bigger one made here.


@pytest.mark.parametrize(
    "name",
    ["pylock.deep-arrays.toml", "pylock.deep-tables.toml", "pylock.deep-key.toml"],
)
def test_hostile_locks_are_refused_within_seconds(name: str) -> None:
    started = time.monotonic()
    result = run_cli("envlock", "show", f"tests/data/malformed/{name}", timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 5


def test_a_long_dotted_key_is_refused_before_tomllib_spends_minutes(tmp_path: Path) -> None:
    # tomllib's cost grows with the square of a key's parts: 50,000 took two minutes.
    path = tmp_path / "pylock.toml"
    path.write_text(
        'lock-version = "1.0"\ncreated-by = "x"\npackages = []\n' + "a." * 50_000 + "b = 1\n"
    )
    started = time.monotonic()
    result = run_cli("envlock", "show", str(path), timeout=30)
    assert result.returncode == 2
    assert result.stderr == f"Error: {path} (line 4): a key of more than 16 dotted parts\n"
    assert time.monotonic() - started < 5
