"""Fingerprint of the environment this file runs in, using the standard library only.

This file is copied or mounted into environments and run there (`python probe.py [OUT]`),
or loaded by the parity worker after the model ran; it must not import envlock or anything
outside the standard library, and must work on Python 3.9 and newer.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from typing import Any

SCHEMA = 1

# Environment variables that change numerical results or their reproducibility.
NUMERIC_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "NPY_DISABLE_CPU_FEATURES",
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_TF32_OVERRIDE",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
    "PYTHONHASHSEED",
)
_SECRET = re.compile(
    r"TOKEN|SECRET|PASSW|PASSWD|CREDENTIAL|API_?KEY|PRIVATE|AUTH|(^|_)KEY($|_)", re.I
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name looks like it holds a secret."""
    return bool(_SECRET.search(name))


def distributions() -> list[dict[str, str | None]]:
    """Every installed distribution visible on sys.path: name, version, installer."""
    from importlib import metadata

    seen: dict[str, dict[str, str | None]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:  # the first one on sys.path is the one imports get
            continue
        installer = dist.read_text("INSTALLER")
        seen[key] = {
            "name": key,
            "version": dist.version,
            "installer": installer.strip() if installer else None,
            "files_sha256": files_digest(dist.read_text("RECORD")),
        }
    return [seen[k] for k in sorted(seen)]


# RECORD entries that differ between installers of the same wheel, not between wheels.
_INSTALLER_FILES = re.compile(
    r"(^\.\./)|(\.pyc$)|(\.dist-info/(RECORD|INSTALLER|REQUESTED|direct_url\.json)$)"
)


def files_digest(record: str | None) -> str | None:
    """sha256 over a distribution's RECORD entries that came from its wheel, or None.

    Entries an installer writes itself (bytecode, scripts outside site-packages, INSTALLER,
    RECORD) are left out, so pip and uv installs of one wheel give the same digest.
    """
    if not record:
        return None
    import csv
    import hashlib

    rows = []
    for row in csv.reader(record.splitlines()):
        if len(row) >= 2 and row[1] and not _INSTALLER_FILES.search(row[0]):
            rows.append(row[0] + "," + row[1])
    return "sha256:" + hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def environment_variables() -> dict[str, str]:
    """The numerics-relevant environment variables that are set, never a secret."""
    return {k: os.environ[k] for k in NUMERIC_ENV if k in os.environ and not is_secret_name(k)}


def numpy_section() -> dict[str, Any] | None:
    """NumPy's version and build, if NumPy is already imported in this process."""
    np = sys.modules.get("numpy")
    if np is None:
        return None
    section: dict[str, Any] = {"version": np.__version__}
    config = getattr(getattr(np, "__config__", None), "CONFIG", None)
    if isinstance(config, dict):
        blas = config.get("Build Dependencies", {}).get("blas", {})
        section["blas"] = {k: blas.get(k) for k in ("name", "version") if k in blas}
        simd = config.get("SIMD Extensions", {})
        section["simd_found"] = simd.get("found")
    return section


def torch_section() -> dict[str, Any] | None:
    """torch's version, CUDA/cuDNN and the flags that change numerics, if torch is imported."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    section: dict[str, Any] = {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    try:
        section["cudnn"] = torch.backends.cudnn.version()
        section["cudnn_deterministic"] = bool(torch.backends.cudnn.deterministic)
        section["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        section["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        section["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
        if torch.cuda.is_available():
            section["devices"] = [
                {
                    "name": torch.cuda.get_device_name(i),
                    "capability": list(torch.cuda.get_device_capability(i)),
                }
                for i in range(torch.cuda.device_count())
            ]
    except Exception as e:  # a probe reports what it can; a broken backend is a finding
        section["error"] = f"{type(e).__name__}: {e}"
    return section


def collect() -> dict[str, Any]:
    """The fingerprint of this interpreter's environment, as a JSON-ready dict."""
    fp: dict[str, Any] = {
        "schema": SCHEMA,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "prefix": sys.prefix,
        },
        "platform": {
            "system": platform.system(),
            "machine": platform.machine(),
            "libc": "-".join(platform.libc_ver()) or None,
        },
        "distributions": distributions(),
        "env": environment_variables(),
    }
    for name, section in (("numpy", numpy_section()), ("torch", torch_section())):
        if section is not None:
            fp[name] = section
    return fp


def main(argv: list[str]) -> int:
    """Write the fingerprint as JSON to argv[1], or to stdout."""
    text = json.dumps(collect(), indent=2, sort_keys=True)
    if len(argv) > 1:
        with open(argv[1], "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
