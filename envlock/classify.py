"""How much a difference in one package matters for numbers: numerics, runtime or benign."""

from __future__ import annotations

import re
from typing import Literal

Severity = Literal["numerics", "runtime", "benign", "other"]

# Packages whose version can change computed values (kernels, promotion rules, defaults).
_NUMERICS = {
    "numpy",
    "scipy",
    "torch",
    "torchvision",
    "torchaudio",
    "jax",
    "jaxlib",
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "onnxruntime",
    "onnxruntime-gpu",
    "pillow",
    "pillow-simd",
    "opencv-python",
    "opencv-python-headless",
    "scikit-learn",
    "scikit-image",
    "pandas",
    "numba",
    "llvmlite",
    "mkl",
    "intel-openmp",
    "openblas",
    "scipy-openblas64",
    "scipy-openblas32",
    "triton",
    "xgboost",
    "lightgbm",
    "safetensors",
    "transformers",
    "tokenizers",
    "numexpr",
    "threadpoolctl",
}
_NUMERICS_PREFIXES = ("nvidia-", "cuda-", "libcu", "cupy")
_RUNTIME = {"python", "libc", "platform"}
# Packaging and progress tooling that cannot reach a model's numbers.
_BENIGN = {
    "pip",
    "setuptools",
    "wheel",
    "uv",
    "packaging",
    "tqdm",
    "colorama",
    "rich",
    "click",
    "typing-extensions",
    "filelock",
    "certifi",
    "idna",
    "urllib3",
    "requests",
    "charset-normalizer",
}


def severity(name: str) -> Severity:
    """The severity class of a difference in the package (or runtime component) `name`."""
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in _RUNTIME:
        return "runtime"
    if key in _NUMERICS or key.startswith(_NUMERICS_PREFIXES):
        return "numerics"
    if key in _BENIGN:
        return "benign"
    return "other"
