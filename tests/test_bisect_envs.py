"""`parity bisect` with real venvs: locks of small wheels made here (plus NumPy from the
reference lock), each package's second version changing the model's numbers or not.

The model adds up what the installed packages say: each `pb-*` package has a SCALE (the
output is x times the product of them) and a TOGETHER flag (the output moves by 1 when two
packages raise it). A package's second version can also require another's second
version, which makes some combinations impossible to install consistently. Each bisection
builds up to eight venvs (slow); the cache is shared by the module, as a user's would be.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import textwrap
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import run_cli

NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]

ADAPTER = """\
import importlib

import numpy as np

NAMES = {names!r}


def predict(batch):
    scale, together = 1.0, 0
    for name in NAMES:
        module = importlib.import_module("pb_" + name)
        scale *= module.SCALE
        together += module.TOGETHER
    x = batch["x"].astype(np.float64)
    return {{"y": x * scale + (1.0 if together >= 2 else 0.0)}}
"""

CONFIG = """\
[model]
adapter = "adapter:predict"
paths = ["src"]

[inputs]
seed = 7
count = 8
batch_size = 8

[inputs.arrays.x]
shape = [4]
dtype = "float32"

[environments.train]
backend = "venv"
lock = "reference/pylock.toml"

[environments.infer]
backend = "venv"
lock = "candidate/pylock.toml"

[run]
reference = "train"
timeout = 120

[tolerance]
atol = 0
rtol = 0
"""


def make_wheel(folder: Path, name: str, version: str, code: str, requires: list[str]) -> Path:
    """A pure-Python wheel of one module, `pb_<name>`, as a build backend would make it."""
    dist = f"pb_{name}"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": code,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: pb-{name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            data = text.encode()
            wheel.writestr(member, data)
            b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{member},sha256={b64},{len(data)}")
        record.append(f"{info}/RECORD,,")
        wheel.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def numpy_package(repo: Path) -> dict[str, Any]:
    lock = tomllib.loads((repo / "locks" / "pylock.toml").read_text())
    return next(p for p in lock["packages"] if p["name"] == "numpy")


def write_lock(path: Path, wheels: list[Path], numpy: dict[str, Any]) -> None:
    packages = [numpy]
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        packages.append(
            {
                "name": name.replace("_", "-"),
                "version": version,
                "wheels": [
                    {
                        "path": f"../wheels/{wheel.name}",
                        "hashes": {"sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()},
                    }
                ],
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        tomli_w.dumps(
            {
                "lock-version": "1.0",
                "created-by": "test_bisect_envs",
                "requires-python": "==3.11.*",
                "packages": packages,
            }
        )
    )


def project(
    root: Path,
    repo: Path,
    changed: dict[str, str],
    requires: dict[str, list[str]] | None = None,
) -> Path:
    """A parity project whose reference lock has every package at 1.0 and whose candidate
    lock has them at 2.0; `changed` gives a 2.0's module code (else it acts as 1.0)."""
    plain = "SCALE = 1.0\nTOGETHER = 0\n"
    wheels = root / "wheels"
    wheels.mkdir(parents=True)
    old = [make_wheel(wheels, n, "1.0", plain, []) for n in NAMES]
    new = [
        make_wheel(wheels, n, "2.0", changed.get(n, plain), (requires or {}).get(n, []))
        for n in NAMES
    ]
    numpy = numpy_package(repo)
    write_lock(root / "reference" / "pylock.toml", old, numpy)
    write_lock(root / "candidate" / "pylock.toml", new, numpy)
    (root / "src").mkdir()
    (root / "src" / "adapter.py").write_text(textwrap.dedent(ADAPTER.format(names=NAMES)))
    config = root / "parity.toml"
    config.write_text(CONFIG)
    return config


def bisect(config: Path, cache: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    out = config.parent / "bisect.json"
    result = run_cli(
        "parity",
        "bisect",
        "--config",
        str(config),
        "--cache-dir",
        str(cache),
        "--json",
        str(out),
        *extra,
        timeout=600,
    )
    report = json.loads(out.read_text()) if out.exists() else {}
    if report:
        assert_valid(report)
    return result.returncode, report, result.stdout + result.stderr


def assert_valid(report: dict[str, Any]) -> None:
    """Fail unless `report` follows the bisect report's JSON Schema."""
    from jsonschema import Draft202012Validator

    from parity.investigations.bisect import SCHEMA_PATH

    validator = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bisect-cache")


@pytest.mark.slow
def test_a_single_culprit_among_eight(repo: Path, cache: Path, tmp_path: Path) -> None:
    config = project(tmp_path, repo, {"delta": "SCALE = 1.5\nTOGETHER = 0\n"})
    code, report, out = bisect(config, cache)
    assert code == 1, out
    assert report["verdict"] == "culprits"
    assert report["culprits"] == ["pb-delta"]
    assert report["culprit_versions"] == [
        {"name": "pb-delta", "reference": "1.0", "candidate": "2.0"}
    ]
    assert [d["name"] for d in report["differing"]] == [f"pb-{n}" for n in NAMES]
    assert "pb-delta 1.0 -> 2.0 alone reproduces the divergence" in out
    # Every combination tried is listed with its verdict; those holding pb-delta fail.
    for trial in report["trials"]:
        assert trial["outcome"] == ("fail" if "pb-delta" in trial["packages"] else "pass")
    assert report["trials"][0]["environment"] == "the candidate environment itself"
    # The reference, the candidate, and at most 2 log2(k) intermediate environments.
    k = len(NAMES)
    assert report["environments"]["used"] <= 2 * math.log2(k) + 2
    assert report["environments"]["used"] == 2 + len(report["trials"]) - 1
    assert report["environments"]["built"] == report["environments"]["used"]

    # Every environment is cached: a second bisection builds nothing and finds the same.
    code2, again, out2 = bisect(config, cache)
    assert code2 == 1, out2
    assert again["culprits"] == ["pb-delta"]
    assert again["environments"] == {"used": report["environments"]["used"], "built": 0}
    assert [t["packages"] for t in again["trials"]] == [t["packages"] for t in report["trials"]]


@pytest.mark.slow
def test_two_culprits_that_only_diverge_together(repo: Path, cache: Path, tmp_path: Path) -> None:
    raises = "SCALE = 1.0\nTOGETHER = 1\n"
    config = project(tmp_path, repo, {"bravo": raises, "foxtrot": raises})
    code, report, out = bisect(config, cache)
    assert code == 1, out
    assert report["culprits"] == ["pb-bravo", "pb-foxtrot"]
    assert "reproduce the divergence together" in out
    tried = {tuple(t["packages"]): t["outcome"] for t in report["trials"]}
    # Halves holding only one of the two were tried, and passed.
    alone = [p for p in tried if ("pb-bravo" in p) != ("pb-foxtrot" in p)]
    assert alone and all(tried[p] == "pass" for p in alone)
    assert tried[("pb-bravo", "pb-foxtrot")] == "fail"


@pytest.mark.slow
def test_a_package_that_cannot_move_alone_drags_what_it_requires(
    repo: Path, cache: Path, tmp_path: Path
) -> None:
    # pb-charlie 2.0 needs pb-echo 2.0: taking it without pb-echo cannot be installed
    # consistently, which a resolution on metadata finds before anything is built; the
    # combination is tried with pb-echo 2.0 too. The divergence itself comes from pb-golf.
    config = project(
        tmp_path,
        repo,
        {"golf": "SCALE = 2.0\nTOGETHER = 0\n"},
        requires={"charlie": ["pb-echo>=2"]},
    )
    code, report, out = bisect(config, cache)
    assert code == 1, out
    assert report["culprits"] == ["pb-golf"]
    assert "pb-golf 1.0 -> 2.0 alone reproduces the divergence" in out
    dragging = [t for t in report["trials"] if "pb-charlie" in t["packages"]]
    assert dragging, report["trials"]
    for trial in dragging:
        assert "pb-echo" in trial["installed"]
        if "pb-echo" not in trial["packages"]:
            assert trial["dragged"] == {
                "pb-echo": "pb-charlie 2.0 requires pb-echo>=2 (not pb-echo 1.0)"
            }
    # No combination was built inconsistent and then rejected.
    assert not [t for t in report["trials"] if t["outcome"] == "unresolved"]
    assert report["resolutions"] >= len(report["trials"]) - 1
    assert report["not_installable"] == sum(bool(t["dragged"]) for t in report["trials"])
    assert "installed with pb-echo" in out


@pytest.mark.slow
def test_nothing_to_bisect_when_the_outputs_agree(repo: Path, cache: Path, tmp_path: Path) -> None:
    config = project(tmp_path, repo, {})  # 2.0 of every package acts as 1.0
    code, report, out = bisect(config, cache)
    assert code == 0, out
    assert report["verdict"] == "pass" and report["culprits"] == [] and report["trials"] == []
    assert "nothing to bisect" in out


@pytest.mark.slow
def test_a_tolerance_table_for_an_output_the_model_lacks_is_a_config_error(
    repo: Path, cache: Path, tmp_path: Path
) -> None:
    # `yy` is a typo for `y`: the bisection would judge `y` under the default tolerance.
    config = project(tmp_path, repo, {})
    config.write_text(config.read_text() + "\n[tolerance.outputs.yy]\natol = 1\n")
    code, report, out = bisect(config, cache)
    assert code == 2, out
    assert "tolerance.outputs.yy: no output 'yy' (the model returns: 'y')" in out
    assert report == {} and "Traceback" not in out


def test_bisect_needs_venvs_from_pylocks(write_project: Any, tmp_path: Path) -> None:
    from conftest import LOCAL_CONFIG

    config = write_project(
        "def predict(batch):\n    return batch\n", LOCAL_CONFIG.format(timeout=60)
    )
    result = run_cli("parity", "bisect", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "both environments must be venvs built from a pylock.toml" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_numpy_drift_examples_bisection_moves_numpy_alone(repo: Path, tmp_path: Path) -> None:
    """What bisecting the numpy-drift example differs in and builds, without building it
    (CI bisects the example itself, as a user does: `.ci/run`): numpy and tqdm (only the
    reference's train group has it) differ, and taking numpy alone from the candidate
    gives the reference's packages with the candidate's numpy, tqdm kept."""
    from envlock.combine import PackageDifference, combine, differing_packages
    from envlock.lockfile import MAIN, read_lock

    reference = read_lock(repo / "locks" / "pylock.toml")
    candidate = read_lock(repo / "examples" / "numpy-drift" / "locks" / "pylock.toml")
    trained, served = reference.versions("train"), candidate.versions(MAIN)
    assert differing_packages(reference, "train", candidate, MAIN) == [
        PackageDifference("numpy", "2.4.6", "1.26.4"),
        PackageDifference("tqdm", trained["tqdm"], None),
    ]
    numpy_alone = combine(reference, "train", candidate, MAIN, ["numpy"], tmp_path)
    assert numpy_alone.versions() == {**trained, "numpy": "1.26.4"}
    both = combine(reference, "train", candidate, MAIN, ["numpy", "tqdm"], tmp_path)
    assert both.versions() == served
