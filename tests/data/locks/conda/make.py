"""Write the conda-lock corpus of this folder with conda-lock's own models and writer.

conda-lock cannot solve here (no conda channels), so the package entries are constructed:
real package names, versions and conda-forge URL layouts, with invented hashes (the sha256
and md5 of the file name). Everything else, the YAML included, is conda-lock's:
`write_conda_lock_file` writes the version-1 files (one entry per category, as conda-lock
always writes); the version-2 file is conda-lock's v2 model (`Lockfile`, categories as a
list) dumped as its writer dumps version 1. Each file is then read back with conda-lock's
own parser and must give the packages it was written from.

Run from the repository root: `.venv/bin/python tests/data/locks/conda/make.py`
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from conda_lock.lockfile import parse_conda_lock_file, write_conda_lock_file
from conda_lock.lockfile.v2prelim.models import HashModel, LockedDependency, Lockfile, LockMeta

HERE = Path(__file__).resolve().parent
CHANNEL = "https://conda.anaconda.org/conda-forge"
PLATFORMS = ("linux-64", "osx-arm64", "win-64")
TAG = {"linux-64": "linux64", "osx-arm64": "osxarm64", "win-64": "win64"}


def conda(
    name: str,
    version: str,
    build: str,
    platform: str,
    categories: set[str],
    dependencies: dict[str, str] | None = None,
    noarch: bool = False,
) -> LockedDependency:
    filename = f"{name}-{version}-{build}.conda"
    return LockedDependency(
        name=name,
        version=version,
        manager="conda",
        platform=platform,
        dependencies=dependencies or {},
        url=f"{CHANNEL}/{'noarch' if noarch else platform}/{filename}",
        hash=HashModel(
            md5=hashlib.md5(filename.encode()).hexdigest(),
            sha256=hashlib.sha256(filename.encode()).hexdigest(),
        ),
        build=build,
        categories=categories,
    )


def pip(
    name: str,
    version: str,
    platform: str,
    categories: set[str],
    dependencies: dict[str, str] | None = None,
) -> LockedDependency:
    filename = f"{name}-{version}-py3-none-any.whl"
    return LockedDependency(
        name=name,
        version=version,
        manager="pip",
        platform=platform,
        dependencies=dependencies or {},
        url=f"https://files.pythonhosted.org/packages/py3/{name[0]}/{name}/{filename}",
        hash=HashModel(sha256=hashlib.sha256(filename.encode()).hexdigest()),
        categories=categories,
    )


def ml_stack(
    platforms: tuple[str, ...] = PLATFORMS, numpy: str = "2.1.3", pytest: str = "8.3.3"
) -> list[LockedDependency]:
    """main + dev + test, sharing packages: libblas is in main and dev, pytest and tqdm in
    dev and test; conda and pip packages on every platform."""
    main, dev, test = {"main"}, {"dev"}, {"test"}
    numpy_build = {"2.1.3": "py311h71ddf71_0", "1.26.4": "py311h64a7726_0"}[numpy]
    packages = []
    for platform in platforms:
        blas = "mkl" if platform == "win-64" else "openblas"
        packages += [
            conda("python", "3.11.9", "h9ebbce0_0_cpython", platform, main, {"openssl": ">=3.3"}),
            conda("openssl", "3.3.2", "hb9d3cd8_0", platform, main),
            conda("libblas", "3.9.0", f"25_{TAG[platform]}_{blas}", platform, main | dev, {}),
            conda(
                "numpy",
                numpy,
                numpy_build,
                platform,
                main,
                {"libblas": ">=3.9.0", "python": ">=3.11,<3.12.0a0"},
            ),
            conda("tqdm", "4.66.5", "pyhd8ed1ab_0", platform, dev | test, noarch=True),
            conda(
                "pytest",
                pytest,
                "pyhd8ed1ab_0",
                platform,
                dev | test,
                {"python": ">=3.8"},
                noarch=True,
            ),
            conda("coverage", "7.6.1", "py311h9ecbd09_1", platform, test, {"python": ">=3.11"}),
            pip("safetensors", "0.4.5", platform, main),
            pip("ruff", "0.6.9", platform, dev),
            pip("hypothesis", "6.112.1", platform, test, {"attrs": ">=22.2.0"}),
            pip("attrs", "24.2.0", platform, test),
        ]
    return packages


def small_stack(platforms: tuple[str, ...]) -> list[LockedDependency]:
    """One category, conda and pip, on Linux only (x86_64 and aarch64)."""
    main = {"main"}
    packages = []
    for platform in platforms:
        packages += [
            conda("python", "3.12.7", "hc5c86c4_0_cpython", platform, main),
            conda("numpy", "2.1.3", "py312h58c1407_0", platform, main, {"python": ">=3.12"}),
            pip("requests", "2.32.3", platform, main, {"idna": ">=2.5,<4"}),
            pip("idna", "3.10", platform, main),
        ]
    return packages


def gpu_stack() -> list[LockedDependency]:
    """A `gpu` category next to main, on linux-64 and osx-64 (no CUDA there)."""
    main, gpu = {"main"}, {"gpu"}
    packages = []
    for platform in ("linux-64", "osx-64"):
        packages += [
            conda("python", "3.11.9", "h9ebbce0_0_cpython", platform, main),
            conda("numpy", "1.26.4", "py311h64a7726_0", platform, main, {"python": ">=3.11"}),
            pip("torch", "2.4.1", platform, main, {"numpy": "*"}),
        ]
    packages += [
        conda("cuda-version", "12.4", "h3060b56_3", "linux-64", gpu),
        conda("cudnn", "9.3.0.75", "h93bb076_0", "linux-64", gpu, {"cuda-version": ">=12,<13"}),
    ]
    return packages


def lockfile(packages: list[LockedDependency], platforms: tuple[str, ...]) -> Lockfile:
    return Lockfile(
        package=packages,
        metadata=LockMeta(
            content_hash={p: hashlib.sha256(p.encode()).hexdigest() for p in platforms},
            channels=[{"url": "conda-forge", "used_env_vars": []}],
            platforms=list(platforms),
            sources=["environment.yml"],
        ),
    )


def write_v1(name: str, content: Lockfile) -> Path:
    """The way `conda-lock lock` writes: version 1, one entry per category."""
    path = HERE / name
    write_conda_lock_file(content, path, metadata_choices=set())
    return path


def write_v2(name: str, content: Lockfile) -> Path:
    """conda-lock's v2 model (categories as a list), dumped as its writer dumps version 1."""
    content.alphasort_inplace()
    output = {
        "version": 2,
        "metadata": content.metadata.model_dump(mode="json", exclude_unset=True, exclude_none=True),
        "package": [
            {**p.model_dump(mode="json", exclude_unset=True), "categories": sorted(p.categories)}
            for p in content.package
        ],
    }
    path = HERE / name
    with path.open("w") as f:
        yaml.dump(output, stream=f, sort_keys=False)
    return path


def check(path: Path, packages: list[LockedDependency]) -> None:
    """conda-lock's own parser reads `path` back into exactly `packages`."""
    read = {(p.manager, p.name, p.platform): p for p in parse_conda_lock_file(path).package}
    wrote = {(p.manager, p.name, p.platform): p for p in packages}
    assert read == wrote, path


def main() -> None:
    aarch = ("linux-64", "linux-aarch64")
    gpu_platforms = ("linux-64", "osx-64")
    files = [
        (write_v1, "conda-lock.yml", ml_stack(), PLATFORMS),
        (write_v2, "conda-lock.v2.yml", ml_stack(), PLATFORMS),
        (write_v1, "train.conda-lock.yml", ml_stack(numpy="1.26.4", pytest="8.2.2"), PLATFORMS),
        (write_v1, "conda-lock.yaml", small_stack(aarch), aarch),
        (write_v1, "environment.lock", gpu_stack(), gpu_platforms),
    ]
    for write, name, packages, platforms in files:
        path = write(name, lockfile([p.model_copy() for p in packages], platforms))
        check(path, packages)
        print(f"wrote {path.relative_to(HERE)}")


if __name__ == "__main__":
    main()
