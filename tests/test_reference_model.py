"""The main job end to end: real uv venvs from the committed locks, real torch, real model."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from conftest import DriftCheck, assert_valid_report, run_cli

from envlock import read_lock
from envlock.backends import VenvBackend

pytestmark = pytest.mark.slow


def check(
    repo: Path, config: str, cache: Path, tmp_path: Path, *extra: str
) -> tuple[int, dict[str, Any], str]:
    report = tmp_path / "report.json"
    result = run_cli(
        "parity",
        "check",
        "--config",
        config,
        "--json",
        str(report),
        "--cache-dir",
        str(cache),
        *extra,
    )
    assert report.exists(), result.stderr
    data = json.loads(report.read_text())
    assert_valid_report(data)
    return result.returncode, data, result.stdout


@pytest.fixture(scope="module")
def reference_check(
    repo: Path, shared_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, dict[str, Any], str]:
    """The main job's check, run once for the module (256 inputs in two torch venvs)."""
    return check(repo, "parity.toml", shared_cache, tmp_path_factory.mktemp("reference"))


def test_reference_model_passes_on_the_shared_lock(
    reference_check: tuple[int, dict[str, Any], str],
) -> None:
    code, report, stdout = reference_check
    assert code == 0, stdout
    assert report["verdict"] == "pass"
    outputs = {o["name"]: o for o in report["outputs"]}
    assert set(outputs) == {"sr", "sr_float"}
    assert outputs["sr"]["total"] == 256 * 96 * 96
    assert outputs["sr"]["mismatched"] == 0 and outputs["sr"]["max_abs_diff"] == 0
    envs = report["environments"]
    assert envs["train"]["lock_digest"] == envs["infer"]["lock_digest"]
    assert envs["train"]["packages"]["torch"] == envs["infer"]["packages"]["torch"] == "2.13.0+cpu"
    assert envs["train"]["env"]["OMP_NUM_THREADS"] == "1"
    # The only difference is the training-only group, and the report says so.
    assert [(d["name"], d["expected"]) for d in report["version_diffs"]] == [("tqdm", True)]


def test_second_check_materializes_nothing(
    reference_check: tuple[int, dict[str, Any], str],
    repo: Path,
    shared_cache: Path,
    tmp_path: Path,
) -> None:
    assert reference_check[0] == 0  # the first check, which built what no earlier test had
    code, report, _ = check(repo, "parity.toml", shared_cache, tmp_path)
    assert code == 0
    assert [e["created"] for e in report["environments"].values()] == [False, False]


def test_numpy_drift_fails_and_names_numpy(numpy_drift_check: DriftCheck) -> None:
    code, report, stdout, junit = numpy_drift_check
    cases = {c.get("name"): c for c in ElementTree.parse(junit).getroot().iter("testcase")}
    assert cases["numpy"].find("failure") is not None
    assert cases["tqdm"].find("failure") is None  # expected: the train group
    assert cases["sr"].find("failure") is not None and cases["sr_float"].find("failure") is None
    assert code == 1, stdout
    assert report["verdict"] == "fail"
    numpy_diff = next(d for d in report["version_diffs"] if d["name"] == "numpy")
    assert numpy_diff["versions"] == {"train": "2.4.6", "infer": "1.26.4"}
    assert numpy_diff["severity"] == "numerics" and numpy_diff["expected"] is False
    unexpected = [d["name"] for d in report["version_diffs"] if not d["expected"]]
    # numpy itself, and what comes with it: its BLAS and LAPACK builds, the SIMD kernels found.
    assert unexpected == ["numpy", "numpy blas", "numpy lapack", "numpy simd"]
    assert "NEP 50" in numpy_diff["note"]
    sr = next(o for o in report["outputs"] if o["name"] == "sr")
    assert sr["passed"] is False
    assert 0 < sr["mismatched"] < sr["total"] and sr["max_abs_diff"] == 1
    sr_float = next(o for o in report["outputs"] if o["name"] == "sr_float")
    assert 0 < sr_float["max_abs_diff"] < 1e-5
    # the version differences table: package, train, infer, severity, counts
    assert re.search(r"^numpy\s+2\.4\.6\s+1\.26\.4\s+numerics\s+fails\s", stdout, re.M), stdout
    assert any(r.startswith("output 'sr':") for r in report["reasons"])


def _python(repo: Path, cache: Path, lock: str, group: str = "main") -> Path:
    return VenvBackend(cache).materialize(read_lock(repo / lock), group).python


def test_the_drift_is_nep50_promotion_in_preprocessing(repo: Path, shared_cache: Path) -> None:
    code = (
        "import numpy as np\n"
        "from model.preprocess import preprocess\n"
        "print(np.__version__, preprocess(np.zeros((1, 4, 4), np.uint8)).dtype)\n"
    )
    seen = {}
    for lock in ("locks/pylock.toml", "examples/numpy-drift/locks/pylock.toml"):
        python = _python(repo, shared_cache, lock)
        out = subprocess.run(
            [python, "-c", code], cwd=repo, capture_output=True, text=True, check=True
        )
        seen[lock] = out.stdout.split()
    assert seen == {
        "locks/pylock.toml": ["2.4.6", "float64"],
        "examples/numpy-drift/locks/pylock.toml": ["1.26.4", "float32"],
    }


def test_seeded_inputs_are_byte_identical_under_numpy_1(repo: Path, shared_cache: Path) -> None:
    from test_inputs import GOLDEN

    python = _python(repo, shared_cache, "examples/numpy-drift/locks/pylock.toml")
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('inputs', 'parity/inputs/seeded.py')\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['inputs'] = m\n"
        "spec.loader.exec_module(m)\n"
        "S = m.InputSpec(seed=42, count=8, arrays=(\n"
        "    m.ArraySpec('img', (16, 16), 'uint8', 'image'),\n"
        "    m.ArraySpec('noise', (5,), 'float32', 'normal', {'mean': 1.0, 'std': 2.0}),\n"
        "    m.ArraySpec('u', (3,), 'float64', 'uniform', {'low': -2.0, 'high': 2.0})))\n"
        "import numpy; print(numpy.__version__, m.digest(m.generate(S)))\n"
    )
    out = subprocess.run([python, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1.26.4", GOLDEN]
