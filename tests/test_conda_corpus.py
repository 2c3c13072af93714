"""The conda-lock corpus (tests/data/locks/conda, written by conda-lock): what `envlock show`,
`verify` and `diff` say each group holds, that they agree with each other and with
conda-lock's own parser, and that reading stays fast on locks of tens of MB."""

from __future__ import annotations

import copy
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conda_lock.lockfile import parse_conda_lock_file
from conftest import ROOT, run_cli

from envlock import read_lock
from envlock.condalock import PLATFORM_MARKERS, _fast_parse
from envlock.errors import LockFileError
from envlock.names import canonical

CORPUS = ROOT / "tests" / "data" / "locks" / "conda"
FILES = ["conda-lock.yml", "conda-lock.v2.yml", "train.conda-lock.yml", "conda-lock.yaml"]
FILES.append("environment.lock")
MAIN = ["libblas 3.9.0", "numpy 2.1.3", "openssl 3.3.2", "python 3.11.9", "safetensors 0.4.5"]
# What each group installs on linux-64, as `envlock show --json` lists it (conda, then pip).
CONDA_LOCK_YML = {
    "main": MAIN,
    "dev": [*MAIN[:3], "pytest 8.3.3", MAIN[3], "tqdm 4.66.5", "ruff 0.6.9", MAIN[4]],
    "test": [
        "coverage 7.6.1",
        *MAIN[:3],
        "pytest 8.3.3",
        MAIN[3],
        "tqdm 4.66.5",
        "attrs 24.2.0",
        "hypothesis 6.112.1",
        MAIN[4],
    ],
}
GROUPS: dict[str, dict[str, list[str]]] = {
    "conda-lock.yml": CONDA_LOCK_YML,
    "conda-lock.v2.yml": CONDA_LOCK_YML,
    "train.conda-lock.yml": {
        group: [
            p.replace("numpy 2.1.3", "numpy 1.26.4").replace("pytest 8.3.3", "pytest 8.2.2")
            for p in packages
        ]
        for group, packages in CONDA_LOCK_YML.items()
    },
    "conda-lock.yaml": {"main": ["numpy 2.1.3", "python 3.12.7", "idna 3.10", "requests 2.32.3"]},
    "environment.lock": {
        "main": ["numpy 1.26.4", "python 3.11.9", "torch 2.4.1"],
        "gpu": [
            "cuda-version 12.4",
            "cudnn 9.3.0.75",
            "numpy 1.26.4",
            "python 3.11.9",
            "torch 2.4.1",
        ],
    },
}
ENVIRONMENTS = {
    name: dict(re.findall(r"(\w+) == '([^']+)'", marker))
    for name, marker in PLATFORM_MARKERS.items()
}
on_linux_64 = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="the CLI lists what a group installs here; the expectations are linux-64's",
)


def conda_lock_view(path: Path, group: str, conda_platform: str) -> dict[str, str]:
    """What conda-lock's own parser says `group` (plus main) installs on a platform."""
    lockfile = parse_conda_lock_file(path)
    return {
        canonical(d.name) if d.manager == "pip" else d.name: d.version
        for d in lockfile.package
        if d.platform == conda_platform and d.categories & {"main", group}
    }


@pytest.mark.parametrize("name", FILES)
def test_envlock_reads_every_group_on_every_platform_as_conda_lock_does(name: str) -> None:
    lock = read_lock(CORPUS / name)
    platforms = lock.tool["platforms"]
    assert lock.groups[0] == "main" and set(lock.groups) == set(GROUPS[name])
    checked = 0
    for conda_platform in platforms:
        for group in lock.groups:
            expected = conda_lock_view(CORPUS / name, group, conda_platform)
            assert lock.versions(group, ENVIRONMENTS[conda_platform]) == expected
            checked += len(expected)
    assert checked > 0


@on_linux_64
@pytest.mark.parametrize(
    ("name", "group"), [(name, group) for name in FILES for group in GROUPS[name]]
)
def test_show_lists_what_each_group_installs(name: str, group: str) -> None:
    result = run_cli("envlock", "show", str(CORPUS / name), "--group", group, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["groups"] == ["main", *[g for g in GROUPS[name] if g != "main"]]
    assert [f"{p['name']} {p['version']}" for p in shown["packages"]] == GROUPS[name][group]
    assert shown["flavor"] == "conda-lock"


def test_a_group_the_lock_lacks_is_refused() -> None:
    result = run_cli("envlock", "show", str(CORPUS / "conda-lock.yml"), "--group", "docs")
    assert result.returncode == 2
    assert result.stderr == (
        f"Error: {CORPUS / 'conda-lock.yml'}: no group 'docs' in this lock "
        "(it has: main, dev, test)\n"
    )


def test_version_1_and_version_2_of_one_lock_are_the_same_lock() -> None:
    one, two = read_lock(CORPUS / "conda-lock.yml"), read_lock(CORPUS / "conda-lock.v2.yml")
    assert one.packages == two.packages and one.groups == two.groups
    assert one.digest != two.digest  # two files, as written
    # conda-lock writes a package of two categories twice in version 1, once in version 2
    assert len(parse_conda_lock_file(CORPUS / "conda-lock.yml").package) == len(one.packages)
    libblas = [p for p in one.packages if p.name == "libblas"]
    assert [p.marker for p in libblas] == [
        "sys_platform == 'linux' and platform_machine == 'x86_64'",
        "sys_platform == 'darwin' and platform_machine == 'arm64'",
        "sys_platform == 'win32' and platform_machine == 'AMD64'",
    ]
    pytest_markers = {p.marker for p in one.packages if p.name == "pytest"}
    assert pytest_markers == {
        f"({PLATFORM_MARKERS[p]}) and ('dev' in dependency_groups or 'test' in dependency_groups)"
        for p in ("linux-64", "osx-arm64", "win-64")
    }


@on_linux_64
@pytest.mark.parametrize(
    ("a", "b", "differences"),
    [
        ("conda-lock.yml", "conda-lock.v2.yml", []),
        ("conda-lock.yml#test", "conda-lock.v2.yml#test", []),
        (
            "conda-lock.yml#dev",
            "train.conda-lock.yml#dev",
            [("package numpy", "2.1.3", "1.26.4"), ("package pytest", "8.3.3", "8.2.2")],
        ),
        (
            "conda-lock.yml#dev",
            "conda-lock.yml#test",
            [
                ("package attrs", None, "24.2.0"),
                ("package coverage", None, "7.6.1"),
                ("package hypothesis", None, "6.112.1"),
                ("package ruff", "0.6.9", None),
            ],
        ),
        (
            "environment.lock",
            "environment.lock#gpu",
            [
                ("package cuda-version", None, "12.4"),
                ("package cudnn", None, "9.3.0.75"),
            ],
        ),
    ],
)
def test_diff_between_corpus_locks(a: str, b: str, differences: list[Any]) -> None:
    result = run_cli("envlock", "diff", str(CORPUS / a), str(CORPUS / b), "--json")
    assert result.returncode == (1 if differences else 0), result.stderr
    found = [(d["component"], d["a"], d["b"]) for d in json.loads(result.stdout)]
    assert found == differences


def make_prefix(root: Path, packages: dict[str, tuple[str, str | None, str]]) -> Path:
    """A conda environment as conda leaves it: conda-meta records, pip's dist-info folders."""
    (root / "conda-meta").mkdir(parents=True)
    site = root / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    for name, (version, build, manager) in packages.items():
        if manager == "conda":
            record = {"name": name, "version": version, "build": build, "channel": "conda-forge"}
            (root / "conda-meta" / f"{name}-{version}-{build}.json").write_text(json.dumps(record))
        else:
            (site / f"{name}-{version}.dist-info").mkdir()
    return root


def conda_lock_environment(root: Path, lock: Path, group: str) -> Path:
    """The linux-64 environment conda-lock would install for `group`, by its own parser."""
    return make_prefix(
        root,
        {
            d.name: (d.version, d.build, d.manager)
            for d in parse_conda_lock_file(lock).package
            if d.platform == "linux-64" and d.categories & {"main", group}
        },
    )


@on_linux_64
@pytest.mark.parametrize(
    ("name", "group"), [(name, group) for name in FILES for group in GROUPS[name]]
)
def test_verify_an_environment_made_from_the_lock(tmp_path: Path, name: str, group: str) -> None:
    lock = CORPUS / name
    prefix = conda_lock_environment(tmp_path / "env", lock, group)
    args = ["--prefix", str(prefix), "--lock", str(lock), "--group", group]
    result = run_cli("envlock", "verify", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(GROUPS[name][group])  # what show lists for the group
    assert result.stdout == f"{prefix} matches {lock} [{group}]: {count} packages\n"


@on_linux_64
def test_verify_says_what_another_group_lacks(tmp_path: Path) -> None:
    lock = CORPUS / "conda-lock.yml"
    dev = conda_lock_environment(tmp_path / "dev", lock, "dev")
    args = ["--prefix", str(dev), "--lock", str(lock), "--group", "test", "--json"]
    result = run_cli("envlock", "verify", *args)
    assert result.returncode == 1
    assert json.loads(result.stdout) == [
        {"name": n, "problem": p, "locked": locked, "installed": installed, "benign": False}
        for n, p, locked, installed in [
            ("attrs", "missing", "24.2.0", None),
            ("coverage", "missing", "7.6.1", None),
            ("hypothesis", "missing", "6.112.1", None),
            ("ruff", "extra", None, "0.6.9"),
        ]
    ]


@pytest.mark.parametrize(
    "name", ["conda-lock.yaml", "lock.yml", "NAME.conda-lock.yml", "conda-lock.v3.yml", "x.lock"]
)
def test_a_conda_lock_file_is_read_under_any_name(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes((CORPUS / "conda-lock.yml").read_bytes())
    assert read_lock(path).packages == read_lock(CORPUS / "conda-lock.yml").packages


def test_a_pep_751_lock_is_read_under_any_name(tmp_path: Path) -> None:
    path = tmp_path / "requirements.lock"
    path.write_bytes((ROOT / "locks" / "pylock.toml").read_bytes())
    assert read_lock(path).packages == read_lock(ROOT / "locks" / "pylock.toml").packages
    assert read_lock(path).flavor == "pylock"


def test_a_file_of_neither_format_is_refused_saying_what_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("name: not-a-lock\nversion: 3\n")
    result = run_cli("envlock", "show", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"Error: {path}: not a lock file envlock reads: expected a PEP 751 lock (TOML with "
        "lock-version) or a conda-lock file (a YAML mapping with version, metadata and "
        "package)\n"
    )


# --- the YAML fast path ---------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_the_fast_path_reads_what_conda_lock_writes_as_pyyaml_does(name: str) -> None:
    text = (CORPUS / name).read_text()
    fast = _fast_parse(text)
    assert fast is not None  # the files conda-lock writes never need PyYAML's loader
    assert fast == yaml.safe_load(text)
    assert _fast_parse(text.replace("\n", "\r\n")) == fast  # conda-lock on Windows


def test_a_file_outside_the_fast_path_reads_the_same(tmp_path: Path) -> None:
    text = (CORPUS / "conda-lock.yml").read_text()
    edited = text.replace("\n  url: ", "\n  # a comment conda-lock never writes\n  url: ", 1)
    assert _fast_parse(edited) is None
    path = tmp_path / "conda-lock.yml"
    path.write_text(edited)
    assert read_lock(path).packages == read_lock(CORPUS / "conda-lock.yml").packages


def test_without_libyaml_the_pure_python_loader_reads_and_refuses_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envlock import condalock

    monkeypatch.delattr(yaml, "CSafeLoader")
    condalock._loader.cache_clear()
    monkeypatch.setattr(condalock, "_fast_parse", lambda text: None)
    try:
        assert (
            read_lock(CORPUS / "conda-lock.yml").packages
            == read_lock(CORPUS / "conda-lock.v2.yml").packages
        )
        with pytest.raises(LockFileError, match=r"nested too deeply \(more than 8 levels\)"):
            read_lock(ROOT / "tests" / "data" / "malformed" / "deep-lists.conda-lock.yml")
    finally:
        condalock._loader.cache_clear()


def test_a_merge_key_is_refused_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "conda-lock.yml"
    path.write_text("version: 1\nmetadata:\n  <<: {platforms: []}\npackage: []\n")
    with pytest.raises(LockFileError) as refused:
        read_lock(path)
    assert (refused.value.where, refused.value.detail) == (
        "line 3, column 3",
        "a YAML merge key (<<): conda-lock files have none",
    )


_SCALARS = [
    "numpy",
    "2.1.3",
    "3.10",
    "1e3",
    "0x1F",
    "0o17",
    "yes",
    "No",
    "on",
    "null",
    "~",
    "",
    " x",
    "x ",
    "a: b",
    "a #b",
    "a#b",
    "'q'",
    "it's",
    '"d"',
    "*a",
    "&a",
    "!t",
    "-1",
    "- x",
    "?",
    "[x]",
    "{x}",
    "x,y",
    "é",
    "\t",
    "2024-01-01",
    "1_000",
    ".inf",
    "=",
    "<<",
    "a\\b",
    "=3.11",
    ">=3.11,<3.12.0a0",
    "python_abi 3.11.* *_cp311",
    "https://x/y#sha256=0",
]


@pytest.mark.parametrize("value", _SCALARS)
def test_the_fast_path_reads_any_scalar_yaml_dump_writes_as_pyyaml_does(value: str) -> None:
    entry = {
        "name": value,
        "version": value,
        "dependencies": {value: value, "python": value} if value else {},
        "hash": {"md5": value},
        "categories": [value, "main"],
        "optional": value == "yes",
    }
    # two copies: yaml.dump writes an object it meets twice as an anchor and an alias
    entries = [entry, copy.deepcopy(entry)]
    text = "version: 1\n" + yaml.dump({"package": entries}, sort_keys=False)
    fast = _fast_parse(text)
    assert fast is None or fast == yaml.safe_load(text)
    if re.fullmatch(r"[a-z][a-z0-9._]*", value) and yaml.safe_load(value) == value:
        assert fast is not None  # a name yaml.dump writes plain, even as a key


def test_the_fast_path_agrees_with_pyyaml_on_every_one_character_edit() -> None:
    # Whatever a hand edit does to a lock, the fast path reads it as PyYAML does or not at all.
    text = (CORPUS / "conda-lock.yaml").read_text()
    start = text.index("package:")
    edits = 0
    for at in range(start, start + 600):
        for edit in (
            text[:at] + text[at + 1 :],
            text[:at] + " " + text[at:],
            text[:at] + "'" + text[at + 1 :],
            text[:at] + ":" + text[at + 1 :],
        ):
            try:
                expected = yaml.load(edit, Loader=yaml.CSafeLoader)
            except yaml.YAMLError:
                assert _fast_parse(edit) is None
                continue
            fast = _fast_parse(edit)
            assert fast is None or fast == expected, repr(text[at - 20 : at + 20])
            edits += fast is not None
    assert edits > 50


# --- size and speed ---------------------------------------------------------------------------


def scaled(path: Path, size: int) -> Path:
    """A conda-lock file of at least `size` bytes: the corpus file's package entries (as
    conda-lock wrote them) copied under new names, `numpy-x7` and so on."""
    text = (CORPUS / "conda-lock.yml").read_text()
    head, body = text.split("\npackage:\n", 1)
    entries = body.removeprefix("- name: ").removesuffix("\n").split("\n- name: ")
    parts, total, k = [head, "\npackage:\n"], len(head), 0
    while total < size:
        renamed = (entry.split("\n", 1) for entry in entries)
        copy = "".join(f"- name: {name}-x{k}\n{rest}\n" for name, rest in renamed)
        parts.append(copy)
        total += len(copy)
        k += 1
    path.write_text("".join(parts))
    return path


def test_a_scaled_lock_reads_as_pyyaml_reads_it(tmp_path: Path) -> None:
    path = scaled(tmp_path / "conda-lock.yml", 300_000)
    text = path.read_text()
    assert _fast_parse(text) == yaml.safe_load(text)
    lock = read_lock(path)
    copies = text.count("- name: numpy-x")  # numpy for three platforms per copy
    assert len(lock.packages) == copies // 3 * 33


def test_a_5_mb_lock_reads_in_seconds(tmp_path: Path) -> None:
    path = scaled(tmp_path / "conda-lock.yml", 4_750_000)
    started = time.perf_counter()
    lock = read_lock(path)
    took = time.perf_counter() - started
    assert len(lock.packages) > 9_000
    assert took < 15, f"{took:.1f} s"  # 0.8 s measured; 68 s before (two pure-Python parses)


@pytest.mark.slow
def test_a_50_mb_lock_reads_in_seconds(tmp_path: Path) -> None:
    path = scaled(tmp_path / "conda-lock.yml", 50_000_000)
    started = time.perf_counter()
    lock = read_lock(path)
    took = time.perf_counter() - started
    assert len(lock.packages) > 100_000
    assert took < 60, f"{took:.1f} s"  # 7 s measured; the C loader alone takes 115 s
