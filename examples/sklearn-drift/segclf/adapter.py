"""The parity adapter for segclf: the batch's `x` (N x 8 float64) in, three outputs out.

    proba     N x 3 float64   the classifier's class probabilities
    label     N     int64     the classifier's predicted class
    segment   N     int32     the KMeans segment (cluster index)

`predict_scores` gives the `scorer` pipeline's `scores` (N x 3 float64) instead: its first
step is NumPy-version dependent (see `segclf.features`), so it drifts where `predict` does not.
`stages_scores` gives its stages for `parity check --localize` (`[model] stages`): one
stage, the `scorer` Pipeline itself, so that each of its steps' outputs is compared.

The models are the joblib files `segclf.train` wrote into `artifacts/` beside this file
(or the folder named by SEGCLF_ARTIFACTS: set it under `[run.env]`, or name it in
`run.pass_env`, since a worker gets only the variables it needs), loaded once, in whatever scikit-learn this
environment has.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import joblib
import numpy as np

ARTIFACTS = Path(os.environ.get("SEGCLF_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))

_models: dict[str, Any] = {}


def models() -> dict[str, Any]:
    """Give the loaded `classifier`, `segmenter` and `scorer` (loaded on first use)."""
    if not _models:
        _models["classifier"] = joblib.load(ARTIFACTS / "classifier.joblib")
        _models["segmenter"] = joblib.load(ARTIFACTS / "segmenter.joblib")
        _models["scorer"] = joblib.load(ARTIFACTS / "scorer.joblib")
    return _models


def predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    x = np.asarray(batch["x"], dtype=np.float64)
    m = models()
    return {
        "proba": m["classifier"].predict_proba(x),
        "label": m["classifier"].predict(x).astype(np.int64),
        "segment": m["segmenter"].predict(x).astype(np.int32),
    }


def predict_scores(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The `scorer` pipeline's decision function (N x 3): it drifts under NumPy 2."""
    return {"scores": models()["scorer"].decision_function(np.asarray(batch["x"]))}


def stages_scores() -> list[tuple[str, Any, Any]]:
    """`predict_scores` as stages: one, `model`, running the `scorer` Pipeline, whose steps
    (`rescale`, `scale`, `logreg`) parity records one by one."""
    return [("model", predict_scores, models()["scorer"])]
