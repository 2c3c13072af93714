"""The JSON report of a known check, field by field, against a reviewed golden file.

The check runs a deterministic adapter in two local environments; `DRIFT=1` in the
candidate perturbs each output in a known way, so every policy has something to judge.
What varies from machine to machine (timings, paths, the interpreter's fingerprint) is
normalized away; everything else must match. After an intended change of the report,
regenerate with `PARITY_UPDATE_GOLDEN=1 pytest tests/test_golden_report.py` and review
the diff of the golden file like code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import ROOT, assert_valid_report, run_cli

GOLDEN = ROOT / "tests" / "data" / "golden" / "report.json"

ADAPTER = """\
import os
import numpy as np

def predict(inputs):
    x = inputs["x"]                              # (n, 8, 8) float32 in [0, 1)
    image = x * np.float32(2)
    scores = x.copy()
    levels = np.round(x * 255).astype(np.uint8)
    if os.environ.get("DRIFT"):
        image[:, 2:4, 5] += np.float32(1e-5)     # a small patch moves
        scores[0, 0] = scores[0, 0, ::-1]        # one row answers differently
        levels[1] = np.minimum(levels[1], 250)   # one sample clips its highlights
        image[3, 7, 7] = np.nan                  # and a NaN appears
    return {"image": image, "scores": scores, "levels": levels}
"""

CONFIG = """\
[model]
adapter = "adapter:predict"
paths = ["src"]

[inputs]
seed = 11
count = 6
batch_size = 6

[inputs.arrays.x]
shape = [8, 8]
dtype = "float32"

[environments.train]
backend = "local"

[environments.infer]
backend = "local"

[environments.infer.env]
DRIFT = "1"

[run]
timeout = 120

[tolerance]
atol = 1e-6

[tolerance.outputs.scores]
policy = "decision"
min_agreement = 0.95

[tolerance.outputs.levels]
policy = "psnr"
min_db = 40
"""


def normalized(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what depends on the machine: timings, paths, fingerprints."""
    report = dict(report)
    report.pop("seconds")
    report["config"] = Path(report["config"]).name
    report["environments"] = {
        name: {"backend": env["backend"], "group": env["group"]}
        for name, env in report["environments"].items()
    }
    return report


def test_the_report_matches_the_golden_file(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(ADAPTER, CONFIG)
    out = tmp_path / "report.json"
    result = run_cli("parity", "check", "--config", str(cfg), "--json", str(out))
    assert result.returncode == 1, result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    got = normalized(report)
    if os.environ.get("PARITY_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(GOLDEN.read_text())
