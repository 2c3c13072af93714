"""conda-lock lockfiles for tests, written with conda-lock's own models and writer."""

from __future__ import annotations

from pathlib import Path

from conda_lock.lockfile import write_conda_lock_file
from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency, Lockfile, LockMeta

CHANNEL = "https://conda.anaconda.org/conda-forge"


def conda(
    name: str,
    version: str,
    build: str,
    platform: str,
    category: str = "main",
    digest: str = "0" * 64,
) -> LockedDependency:
    """A conda package of the lock."""
    return LockedDependency(
        name=name,
        version=version,
        manager="conda",
        platform=platform,
        dependencies={},
        url=f"{CHANNEL}/{platform}/{name}-{version}-{build}.conda",
        hash=HashModel(md5="0" * 32, sha256=digest),
        build=build,
        categories={category},
    )


def pip(name: str, version: str, platform: str, category: str = "main") -> LockedDependency:
    """A pip package of the lock."""
    return LockedDependency(
        name=name,
        version=version,
        manager="pip",
        platform=platform,
        dependencies={},
        url=f"https://files.pythonhosted.org/packages/{name}-{version}-py3-none-any.whl",
        hash=HashModel(sha256="1" * 64),
        categories={category},
    )


def reference_packages(numpy: str = "2.1.3") -> list[LockedDependency]:
    packages = []
    for platform in ("linux-64", "osx-arm64"):
        packages += [
            conda("python", "3.11.9", "h_cpython", platform),
            conda("numpy", numpy, "py311_0", platform),
            conda("tqdm", "4.66.5", "pyhd8ed1ab_0", platform, category="train"),
            pip("safetensors", "0.4.5", platform),
        ]
    return packages


def write_lock(path: Path, packages: list[LockedDependency] | None = None) -> Path:
    """Write a conda-lock.yml at `path` with conda-lock's writer."""
    lockfile = Lockfile(
        package=packages if packages is not None else reference_packages(),
        metadata=LockMeta(
            content_hash={"linux-64": "a" * 64, "osx-arm64": "b" * 64},
            channels=[{"url": "conda-forge", "used_env_vars": []}],
            platforms=["linux-64", "osx-arm64"],
            sources=["environment.yml"],
        ),
    )
    write_conda_lock_file(lockfile, path, metadata_choices=set())
    return path
