"""`parity bisect` on examples/sklearn-drift: NumPy 2 changes `predict_scores`' numbers
(segclf.features: NEP 50 promotion), but numpy 2.2.6 cannot be installed beside the
training environment's scipy 1.11.4 or scikit-learn 1.3.2. The bisection must say so, find
it by resolution rather than by building, and name the smallest installable change.

Real venvs and real metadata: the artifacts are trained in the train environment first,
as the example's users do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import run_cli, sklearn_drift_config
from test_bisect_envs import assert_valid


@pytest.mark.slow
def test_numpy_cannot_move_alone_and_the_bisection_says_so(
    sklearn_drift: Path, shared_cache: Path, tmp_path: Path
) -> None:
    project = sklearn_drift
    config = sklearn_drift_config(
        project,
        "bisect.toml",
        model={"adapter": "segclf.adapter:predict_scores"},
        tolerance={"atol": 0, "rtol": 0},
    )
    out = tmp_path / "bisect.json"
    result = run_cli(
        "parity",
        "bisect",
        "--config",
        str(config),
        "--cache-dir",
        str(shared_cache),
        "--json",
        str(out),
        timeout=1800,
    )
    report = json.loads(out.read_text())
    assert_valid(report)
    assert result.returncode == 1, result.stdout + result.stderr
    assert report["verdict"] == "culprits"
    assert [d["name"] for d in report["differing"]] == [
        "joblib",
        "numpy",
        "scikit-learn",
        "scipy",
        "threadpoolctl",
    ]
    # The smallest installable change, and why numpy drags the other two with it.
    assert report["culprits"] == ["numpy", "scikit-learn", "scipy"]
    text = result.stdout
    assert (
        "the smallest installable change that reproduces it: numpy + scikit-learn + scipy "
        "(numpy cannot move without scikit-learn and scipy: scikit-learn 1.3.2 requires "
        "numpy<2.0,>=1.17.3, scipy 1.11.4 requires numpy<1.28.0,>=1.21.6" in text
    )
    assert report["cannot_move_alone"] == [
        {
            "package": "numpy",
            "drags": ["scikit-learn", "scipy"],
            "because": [
                "scikit-learn 1.3.2 requires numpy<2.0,>=1.17.3",
                "scipy 1.11.4 requires numpy<1.28.0,>=1.21.6",
            ],
        }
    ]
    # What numpy drags was tried without it, and passes: numpy is the cause.
    assert "scikit-learn + scipy without numpy: pass" in text
    tried = {tuple(t["packages"]): t for t in report["trials"]}
    assert tried[("scikit-learn", "scipy")]["outcome"] == "pass"
    assert tried[("numpy",)]["installed"] == ["numpy", "scikit-learn", "scipy"]
    assert tried[("numpy",)]["outcome"] == "fail"
    assert "reproduce the divergence together" not in text
    # No uninstallable combination was built: every trial taking numpy without its drags
    # was found by resolution, and installed (or reused) with them.
    for trial in report["trials"]:
        assert "inconsistent" not in trial["reason"]
        if "numpy" in trial["installed"]:
            assert {"scikit-learn", "scipy"} <= set(trial["installed"])
    assert report["not_installable"] >= 2
    assert report["resolutions"] >= len(report["trials"])
    k = len(report["differing"])
    assert report["environments"]["built"] <= 2 * math.log2(k) + 2
    assert f"{report['environments']['built']} built by this run" in text
    assert f"{report['resolutions']} resolution(s)" in text
