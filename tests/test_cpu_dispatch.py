"""CPU-aware fingerprints: the kernels numpy and torch dispatch to, the variables that choose
them (`NPY_DISABLE_CPU_FEATURES`, `ATEN_CPU_CAPABILITY`), and a difference in them named as
a CPU setting of that library, never as its version.

Fingerprints are made by the real probe, in real interpreters started with and without the
variables. No test asserts which features or capability this CPU has (CI machines differ):
only what the probe records against what the library itself says in the same process.
The torch tests need the reference lock's torch venv (slow on a cold cache).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, LOCAL_CONFIG, assert_valid_report, run_cli

from envlock.diff import Difference, Side, diff, from_fingerprint

PROBE_DIR = Path(__file__).resolve().parent.parent / "envlock"

# Import the library first, as the worker does (the model ran), then run the probe's collect;
# also print what the library itself says about its kernels in this process.
COLLECT = """\
import json, sys
import {library}
sys.path.insert(0, {probe_dir!r})
import probe
fp = probe.collect()
print(json.dumps({{"fp": fp, "says": {says}}}))
"""
NUMPY_SAYS = "numpy.__config__.CONFIG['SIMD Extensions'].get('found')"
TORCH_SAYS = "torch.backends.cpu.get_cpu_capability()"


def fingerprint(python: Path, library: str, says: str, env: dict[str, str]) -> tuple[Any, Any]:
    """The probe's fingerprint of `python` with `library` imported and `env` added, and what
    the library says about its own dispatch there."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONPATH" and not k.startswith(("NPY_", "ATEN_", "TF_"))
    }
    code = COLLECT.format(library=library, probe_dir=str(PROBE_DIR), says=says)
    done = subprocess.run(
        [str(python), "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    return data["fp"], data["says"]


def differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Difference]:
    found = diff(
        Side("train", from_fingerprint(a), "fingerprint"),
        Side("infer", from_fingerprint(b), "fingerprint"),
    )
    return {d.component: d for d in found}


def test_numerics_variables_are_recorded_and_other_tools_are_not() -> None:
    env = {
        "NPY_DISABLE_CPU_FEATURES": "X86_V4",
        "ATEN_CPU_CAPABILITY": "default",
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "TF_DETERMINISTIC_OPS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TF_XLA_FLAGS": "--tf_xla_auto_jit=2",
        # Terraform's, not TensorFlow's: a path in a home directory that says nothing of numbers.
        "TF_CLI_CONFIG_FILE": "/home/someone/.terraformrc",
        "TF_VAR_region": "eu-west-1",
    }
    fp, _ = fingerprint(BIN / "python", "numpy", NUMPY_SAYS, env)
    recorded = {k: v for k, v in fp["env"].items() if k in env}
    assert recorded == {k: v for k, v in env.items() if not k.startswith(("TF_CLI", "TF_VAR"))}
    assert "/home/someone" not in json.dumps(fp)


def test_numpy_simd_disabled_by_the_variable_is_named_as_numpys_cpu_setting() -> None:
    plain, found = fingerprint(BIN / "python", "numpy", NUMPY_SAYS, {})
    # The probe records what numpy says it dispatches to, in the same process.
    assert plain["numpy"]["simd_found"] == found
    if not found:
        pytest.skip("numpy dispatches nothing beyond its baseline on this CPU")
    disabled = " ".join(found)
    setting, left = fingerprint(
        BIN / "python", "numpy", NUMPY_SAYS, {"NPY_DISABLE_CPU_FEATURES": disabled}
    )
    assert setting["env"]["NPY_DISABLE_CPU_FEATURES"] == disabled
    assert setting["numpy"]["simd_found"] == left and left != found
    assert setting["numpy"]["version"] == plain["numpy"]["version"]

    found_diffs = differences(plain, setting)
    assert set(found_diffs) == {"env NPY_DISABLE_CPU_FEATURES", "numpy simd"}
    variable, simd = found_diffs["env NPY_DISABLE_CPU_FEATURES"], found_diffs["numpy simd"]
    assert (variable.a, variable.b, variable.severity) == (None, disabled, "numerics")
    assert variable.caused_by is None  # the root cause
    assert simd.caused_by == "env NPY_DISABLE_CPU_FEATURES" and simd.severity == "numerics"
    assert simd.why.startswith(
        f"numpy's dispatched SIMD features differ: NPY_DISABLE_CPU_FEATURES={disabled} in infer."
    )
    assert "not its version" in simd.why
    # Root first, then what it causes; no package difference anywhere.
    assert [
        d.component
        for d in diff(
            Side("train", from_fingerprint(plain), "fingerprint"),
            Side("infer", from_fingerprint(setting), "fingerprint"),
        )
    ] == ["env NPY_DISABLE_CPU_FEATURES", "numpy simd"]


def test_a_simd_difference_between_cpus_is_named_as_the_cpus() -> None:
    plain, found = fingerprint(BIN / "python", "numpy", NUMPY_SAYS, {})
    if not found:
        pytest.skip("numpy dispatches nothing beyond its baseline on this CPU")
    # The same environment fingerprinted on two CPUs (their flags written here, whatever
    # this CPU has): on the one with AVX-512 numpy dispatches to more.
    plain["cpu"]["flags"] = ["avx2", "fma"]
    other = json.loads(json.dumps(plain))
    other["cpu"]["flags"] = ["avx512f", "fma"]
    other["numpy"]["simd_found"] = [*found, "X86_V4"]
    simd = differences(plain, other)["numpy simd"]
    assert simd.caused_by == "cpu avx2"  # the first CPU feature that differs
    assert simd.why.startswith(
        "numpy's dispatched SIMD features differ: the CPUs differ: avx2 yes vs absent, "
        "avx512f absent vs yes. A CPU setting of numpy, not its version"
    )


# --- torch: the reference lock's venv ---------------------------------------------------------


@pytest.fixture(scope="module")
def torch_python(shared_cache: Path) -> Path:
    from envlock.backends import VenvBackend
    from envlock.lockfile import MAIN, read_lock

    root = Path(__file__).resolve().parent.parent
    return (
        VenvBackend(shared_cache)
        .materialize(read_lock(root / "locks" / "pylock.toml"), MAIN)
        .python
    )


@pytest.mark.slow
def test_torch_cpu_capability_is_recorded_and_its_variable_named(torch_python: Path) -> None:
    plain, native = fingerprint(torch_python, "torch", TORCH_SAYS, {})
    assert plain["torch"]["cpu_capability"] == native  # what torch says, whatever the CPU
    forced, said = fingerprint(
        torch_python, "torch", TORCH_SAYS, {"ATEN_CPU_CAPABILITY": "default"}
    )
    assert forced["torch"]["cpu_capability"] == said == "DEFAULT"
    assert forced["env"]["ATEN_CPU_CAPABILITY"] == "default"
    if native == "DEFAULT":
        pytest.skip("torch runs its DEFAULT kernels on this CPU anyway")
    found = differences(plain, forced)
    assert set(found) == {"env ATEN_CPU_CAPABILITY", "torch cpu_capability"}
    capability = found["torch cpu_capability"]
    assert (capability.a, capability.b, capability.severity) == (native, "DEFAULT", "numerics")
    assert capability.caused_by == "env ATEN_CPU_CAPABILITY"
    assert capability.why.startswith(
        f"torch CPU capability {native} vs DEFAULT (ATEN_CPU_CAPABILITY=default in infer)"
    )


SOFTMAX = """\
import numpy as np
import torch


def predict(inputs):
    x = torch.from_numpy(np.ascontiguousarray(inputs["x"]))
    return {"p": torch.softmax(x * 7.0, dim=-1).numpy()}
"""


@pytest.mark.slow
def test_a_check_names_torchs_cpu_capability_set_in_one_environment(
    torch_python: Path, write_project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set in one environment only, whatever the suite runs under (it may itself run with
    # ATEN_CPU_CAPABILITY forced lower, which both environments would inherit).
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    config = LOCAL_CONFIG.format(timeout=300).replace(
        'backend = "local"', f'backend = "local"\npython = "{torch_python}"'
    )
    config = config.replace("shape = [3, 4]", "shape = [16, 128]")
    config += '\n[environments.infer.env]\nATEN_CPU_CAPABILITY = "default"\n'
    cfg = write_project(SOFTMAX, config)
    report_path = tmp_path / "report.json"
    result = run_cli("parity", "check", "--config", str(cfg), "--json", str(report_path))
    report = json.loads(report_path.read_text())
    assert_valid_report(report)
    envs = report["environments"]
    assert envs["infer"]["env"]["ATEN_CPU_CAPABILITY"] == "default"
    assert "ATEN_CPU_CAPABILITY" not in envs["train"]["env"]
    diffs = {d["name"]: d for d in report["version_diffs"]}
    # No package differs: both run the same interpreter.
    assert all(" " in name for name in diffs), diffs
    variable = diffs["env ATEN_CPU_CAPABILITY"]
    assert variable["versions"] == {"train": None, "infer": "default"}
    assert variable["severity"] == "numerics" and variable["fails"] is True
    capability = diffs.get("torch cpu_capability")
    if capability is None:  # torch's DEFAULT kernels are this CPU's own
        assert result.returncode == 1, result.stdout + result.stderr
        return
    native = capability["versions"]["train"]
    assert capability["versions"]["infer"] == "DEFAULT" and native != "DEFAULT"
    assert capability["caused_by"] == "env ATEN_CPU_CAPABILITY"
    assert capability["note"].startswith(
        f"torch CPU capability {native} vs DEFAULT (ATEN_CPU_CAPABILITY=default in infer)"
    )
    # One reason for the variable, naming what follows from it; whatever the outputs did
    # (how many elements differ depends on the CPU), the check fails on numerics.
    assert result.returncode == 1, result.stdout + result.stderr
    assert any(
        r.startswith("env ATEN_CPU_CAPABILITY differs: absent (train), default (infer)")
        and "torch cpu_capability" in r
        for r in report["reasons"]
    ), report["reasons"]
    assert "torch CPU capability" in result.stdout


def test_a_capability_an_older_probe_did_not_record_is_no_difference() -> None:
    # A bundle recorded before the probe recorded torch's CPU capability: not a difference;
    # recorded on both sides and different, it is one, with torch's version the same.
    base = {"distributions": [{"name": "torch", "version": "2.13.0+cpu"}], "env": {}}
    old = {**base, "torch": {"version": "2.13.0+cpu", "cuda": None}}
    new = {**base, "torch": {"version": "2.13.0+cpu", "cuda": None, "cpu_capability": "AVX2"}}
    assert differences(old, new) == {}
    lower = {**new, "torch": {**new["torch"], "cpu_capability": "DEFAULT"}}
    capability = differences(new, lower)["torch cpu_capability"]
    assert capability.caused_by is None and capability.severity == "numerics"
    assert capability.why.startswith(
        "torch CPU capability AVX2 vs DEFAULT (same CPU features and ATEN_CPU_CAPABILITY on "
        "both sides)"
    )
