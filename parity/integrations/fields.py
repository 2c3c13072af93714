"""What a check logs to an experiment tracker (MLflow, W&B): its params and its metrics,
flat and named alike in every tracker."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parity.report import ParityReport

_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
STATISTICS = (
    "max_abs_diff",
    "mean_abs_diff",
    "median_abs_diff",
    "p99_abs_diff",
    "max_rel_diff",
    "mismatched_fraction",
    "atol_to_pass",
    "rtol_to_pass",
    "agreement",
    "psnr_db",
)


def check_params(report: ParityReport) -> dict[str, str]:
    """The check's settings: environments, input digest, lock digests, each output's policy."""
    params = {
        "reference": report.reference,
        "candidate": report.candidate,
        "input_digest": str(report.inputs.get("digest", "")),
        "input_count": str(report.inputs.get("count", "")),
        "calibrated": str(report.calibrated).lower(),
    }
    for name, env in report.environments.items():
        params[f"{name}.backend"] = env.backend
        if env.lock_digest:
            params[f"{name}.lock_digest"] = env.lock_digest
        if env.python:
            params[f"{name}.python"] = env.python
    for o in report.outputs:
        params[f"policy.{metric_key(o.name)}"] = o.policy_description[:6000]
    return params


def check_metrics(report: ParityReport) -> dict[str, float]:
    """`passed`, the warnings each environment caught, and per output whether it passed,
    its mismatched elements and each statistic (non-finite values left out, not faked)."""
    metrics = {"passed": 1.0 if report.verdict == "pass" else 0.0}
    for name in report.environments:
        caught = [w for w in report.warnings if w.environment == name]
        if caught or name in report.warnings_dropped:
            total = sum(w.count for w in caught) + report.warnings_dropped.get(name, 0)
            metrics[f"warnings.{metric_key(name)}"] = float(total)
    for o in report.outputs:
        metrics[f"{metric_key(o.name)}.passed"] = 1.0 if o.passed else 0.0
        metrics[f"{metric_key(o.name)}.mismatched"] = float(o.mismatched)
        for stat in STATISTICS:
            value = getattr(o, stat)
            if isinstance(value, int | float) and math.isfinite(value):
                metrics[f"{metric_key(o.name)}.{stat}"] = float(value)
    return metrics


def metric_key(name: str) -> str:
    """`name` as a key every tracker takes."""
    return _METRIC_KEY.sub("_", name)[:200]
