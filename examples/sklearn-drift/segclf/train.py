"""Train segclf's two models and save them with joblib, as the project does at training time.

    python -m segclf.train [ARTIFACTS_DIR]

Run inside the training environment (scikit-learn 1.3.2 in examples/sklearn-drift): the
pickles record that version, and loading them under another one is what the example is about.
Writes `classifier.joblib` (StandardScaler + LogisticRegression) and `segmenter.joblib`
(KMeans, 4 clusters) and `scorer.joblib` (a Pipeline whose first step, `features.rescale`,
is NumPy-version dependent) into ARTIFACTS_DIR (default: `artifacts/` beside this file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from segclf.features import rescale

FEATURES = 8
DEFAULT_ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def training_data(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Give 600 rows of 8 features and a 3-class label, from a fixed seed."""
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(600, FEATURES)) * np.linspace(0.5, 4.0, FEATURES) + 1.5
    weights = rng.normal(size=(FEATURES, 3))
    y = np.argmax(x @ weights + rng.normal(scale=0.5, size=(600, 3)), axis=1)
    return x, y


def train(out: Path) -> None:
    x, y = training_data()
    classifier = Pipeline(
        [("scale", StandardScaler()), ("logreg", LogisticRegression(C=0.5, max_iter=500))]
    )
    classifier.fit(x, y)
    segmenter = KMeans(n_clusters=4, n_init=4, random_state=0).fit(x)
    scorer = Pipeline(
        [
            ("rescale", FunctionTransformer(rescale)),
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=0.5, max_iter=500)),
        ]
    )
    scorer.fit(x, y)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(classifier, out / "classifier.joblib")
    joblib.dump(segmenter, out / "segmenter.joblib")
    joblib.dump(scorer, out / "scorer.joblib")


if __name__ == "__main__":
    train(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ARTIFACTS)
