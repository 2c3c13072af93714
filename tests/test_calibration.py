"""`--calibrate`: a model that disagrees with itself is reported as nondeterministic, not
as drift, and a tolerance can be set as k times the noise it measured."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from conftest import LOCAL_CONFIG, assert_valid_report, run_cli

# Deterministic in `train`; in `infer` (NOISE=1) every run adds fresh noise of up to 1e-3.
NOISY_ADAPTER = """\
import os
import numpy as np

def predict(inputs):
    x = inputs["x"].astype(np.float64)
    if os.environ.get("NOISE"):
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        x = x + rng.uniform(-1e-3, 1e-3, x.shape)
    return {"y": x, "label": (x > 0.5).astype(np.int64)}
"""
NOISY_CONFIG = (
    LOCAL_CONFIG.format(timeout=120)
    + """
[environments.infer.env]
NOISE = "1"

[tolerance.outputs.label]
policy = "exact"
"""
)


def _check(cfg: Path, tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    result = run_cli("parity", "check", "--config", str(cfg), "--json", str(out), *args)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    return result.returncode, report


def test_noise_is_measured_and_named_nondeterministic(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(NOISY_ADAPTER, NOISY_CONFIG)
    code, plain = _check(cfg, tmp_path)
    y = next(o for o in plain["outputs"] if o["name"] == "y")
    assert (code, y["cause"], plain["calibrated"]) == (1, "tolerance", False)
    assert y["noise"] == {}

    code, report = _check(cfg, tmp_path, "--calibrate")
    assert code == 1 and report["calibrated"]
    y = next(o for o in report["outputs"] if o["name"] == "y")
    assert y["cause"] == "nondeterministic" and y["nondeterministic"]
    assert y["noise"]["train"] == {"max_abs_diff": 0.0, "mismatched": 0, "total": 144}
    assert y["noise"]["infer"]["mismatched"] == 144
    assert 0 < y["noise"]["infer"]["max_abs_diff"] <= 2e-3
    assert y["reason"].startswith("nondeterministic, not drift: infer (max abs diff")
    assert any("nondeterministic, not drift" in r for r in report["reasons"])


def test_a_tolerance_of_k_times_the_noise_passes_a_noisy_model(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    # The labels may flip where x is within 1e-3 of 0.5: judge them by agreement instead.
    config = NOISY_CONFIG.replace(
        '[tolerance.outputs.label]\npolicy = "exact"',
        '[tolerance.outputs.label]\npolicy = "decision"\nmin_agreement = 0\n'
        "[tolerance.outputs.y]\nnoise_factor = 3",
    )
    cfg = write_project(NOISY_ADAPTER, config)
    result = run_cli("parity", "check", "--config", str(cfg))
    assert result.returncode == 2
    assert "tolerance.outputs.y.noise_factor: scales the measured noise" in result.stderr

    code, report = _check(cfg, tmp_path, "--calibrate")
    y = next(o for o in report["outputs"] if o["name"] == "y")
    noise = y["noise"]["infer"]["max_abs_diff"]
    assert code == 0, report["reasons"]
    assert y["atol"] == 3 * noise  # the effective tolerance is in the report
    assert y["policy_description"] == f"allclose(atol={3 * noise:g}, rtol=0, noise_factor=3)"
