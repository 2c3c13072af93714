"""Fingerprint of the environment this file runs in, using the standard library only.

This file is copied or mounted into environments and run there (`python probe.py [OUT]`),
or loaded by the parity worker after the model ran; it must not import envlock or anything
outside the standard library, and must work on Python 3.9 and newer.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import sys
from typing import Any

SCHEMA = 1

# Environment variables that change numerical results or their reproducibility: these names,
# and every name with one of these prefixes (thread pools, BLAS, CUDA, frameworks, and the
# CPU kernels numpy (`NPY_DISABLE_CPU_FEATURES`) and torch (`ATEN_CPU_CAPABILITY`) dispatch
# to). TensorFlow's are named one by one: `TF_` alone would take other tools' variables
# (Terraform's `TF_CLI_CONFIG_FILE`, `TF_VAR_*`, which hold home-directory paths).
NUMERIC_ENV = (
    "PYTHONHASHSEED",
    "VECLIB_MAXIMUM_THREADS",
    "TF_ENABLE_ONEDNN_OPTS",
    "TF_DETERMINISTIC_OPS",
    "TF_CUDNN_DETERMINISTIC",
    "TF_XLA_FLAGS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "TF_ENABLE_XLA",
    "TF_GPU_ALLOCATOR",
    "TF_FORCE_GPU_ALLOW_GROWTH",
    "TF_ENABLE_AUTO_MIXED_PRECISION",
    "TF_USE_LEGACY_KERAS",
)
NUMERIC_PREFIXES = (
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "BLIS_",
    "GOTO_",
    "NUMEXPR_",
    "KMP_",
    "GOMP_",
    "CUDA_",
    "CUBLAS_",
    "CUDNN_",
    "NVIDIA_",
    "NCCL_",
    "TORCH_",
    "PYTORCH_",
    "ATEN_",
    "NPY_",
    "XLA_",
    "TF_CPP_",
    "JAX_",
    "ONEDNN_",
    "DNNL_",
)
# CPU features that decide which kernels numpy, BLAS and torch run.
CPU_FLAGS = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512dq",
    "avx512bw",
    "avx512vl",
    "avx512cd",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
    "sve2",
    "bf16",
    "i8mm",
)
# Tokens, secrets, passwords and passphrases, credentials, API and private keys, auth,
# cookies, sessions, bearer tokens and JWTs, DSNs (URLs with a password), personal access
# tokens (`*_PAT`) and any `KEY` part.
_SECRET = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|API_?KEY|PRIVATE|AUTH|COOKIE|SESSION|BEARER|JWT"
    r"|(^|_)(KEY|PAT|DSN)($|_)",
    re.I,
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name looks like it holds a secret."""
    return bool(_SECRET.search(name))


def distributions() -> list[dict[str, Any]]:
    """Every installed distribution visible on sys.path: name, version, installer."""
    from importlib import metadata

    seen: dict[str, dict[str, Any]] = {}
    for dist in metadata.distributions():
        # Parsed once: `dist.version` and `dist.requires` would each parse it again.
        meta = dist.metadata
        name = meta["Name"]
        if not name:
            continue
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:  # the first one on sys.path is the one imports get
            continue
        installer = dist.read_text("INSTALLER")
        requires = meta.get_all("Requires-Dist")
        seen[key] = {
            "name": key,
            "version": meta["Version"],
            "installer": installer.strip() if installer else None,
            "files_sha256": files_digest(dist.read_text("RECORD")),
            # an egg-info distribution keeps them in requires.txt instead
            "requires": required_names(requires if requires is not None else dist.requires),
        }
    return [seen[k] for k in sorted(seen)]


MAX_REQUIRES = 200  # names recorded per distribution; a longer list is cut here
_REQUIRED_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?)")


def required_names(requires: list[str] | None) -> list[str]:
    """The names a distribution's `Requires-Dist` lines name, normalized and sorted, except
    those only an extra asks for: who depends on whom, so that a package installed only
    because another requires it can be told apart (markers are not evaluated here: the
    standard library has no PEP 508 parser, and a name not installed joins nothing)."""
    names: set[str] = set()
    for line in requires or []:
        requirement, _, marker = line.partition(";")
        if "extra" in marker:
            continue
        match = _REQUIRED_NAME.match(requirement)
        if match:
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return sorted(names)[:MAX_REQUIRES]


# RECORD entries that differ between installers of the same wheel, not between wheels.
_INSTALLER_FILES = re.compile(
    r"(^\.\./)|(\.pyc$)|(\.dist-info/(RECORD|INSTALLER|REQUESTED|direct_url\.json|uv_cache\.json)$)"
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


def environment_variables() -> tuple[dict[str, str], int]:
    """The numerics-relevant environment variables that are set, and how many were withheld.

    A variable whose name looks like a secret is never written, whatever its prefix.
    """
    found: dict[str, str] = {}
    withheld = 0
    for name in sorted(os.environ):
        if name not in NUMERIC_ENV and not name.startswith(NUMERIC_PREFIXES):
            continue
        if is_secret_name(name):
            withheld += 1
            continue
        found[name] = os.environ[name]
    return found, withheld


def cpu() -> dict[str, Any]:
    """The CPU model and the instruction-set features kernels choose by."""
    info: dict[str, Any] = {"count": os.cpu_count(), "model": platform.processor() or None}
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model Name", "cpu model") and not info.get("model_name"):
                    info["model_name"] = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    info["flags"] = sorted(f for f in CPU_FLAGS if f in flags)
    return info


def conda_packages(prefix: str) -> list[dict[str, Any]] | None:
    """Conda packages of the environment at `prefix` (its conda-meta), or None if not conda."""
    meta = os.path.join(prefix, "conda-meta")
    if not os.path.isdir(meta):
        return None
    packages = []
    for entry in sorted(os.listdir(meta)):
        if not entry.endswith(".json"):
            continue
        try:
            with open(os.path.join(meta, entry), encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        packages.append(
            {
                "name": record.get("name"),
                "version": record.get("version"),
                "build": record.get("build"),
                "channel": record.get("channel"),
            }
        )
    return packages


def threadpool_section() -> list[dict[str, Any]] | None:
    """The native thread pools (BLAS, OpenMP) threadpoolctl sees, if it is importable."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    pools = []
    for pool in threadpool_info():
        pools.append(
            {
                k: (os.path.basename(v) if k == "filepath" else v)
                for k, v in pool.items()
                if k
                in (
                    "user_api",
                    "internal_api",
                    "prefix",
                    "version",
                    "num_threads",
                    "threading_layer",
                    "architecture",
                    "filepath",
                )
            }
        )
    return pools


def numpy_section() -> dict[str, Any] | None:
    """NumPy's version and build, if NumPy is already imported in this process."""
    np = sys.modules.get("numpy")
    if np is None:
        return None
    section: dict[str, Any] = {"version": np.__version__}
    config = getattr(getattr(np, "__config__", None), "CONFIG", None)
    if isinstance(config, dict):
        deps = config.get("Build Dependencies", {})
        for lib in ("blas", "lapack"):
            found = deps.get(lib, {})
            section[lib] = {k: found.get(k) for k in ("name", "version") if k in found}
            if anonymous_library(section[lib].get("name")):
                # Meson's name for a dependency declared inside NumPy's own build (NumPy
                # 1.26's LAPACK, which comes from its BLAS): the name is an object id and the
                # "version" NumPy's own. Say where it comes from instead.
                blas = section.get("blas") or {}
                section[lib] = {"name": f"{blas.get('name') or 'unknown'} (via blas)"}
                if blas.get("version"):
                    section[lib]["version"] = blas["version"]
        simd = config.get("SIMD Extensions", {})
        section["simd_found"] = simd.get("found")
    return section


def anonymous_library(name: Any) -> bool:
    """Whether a build dependency's name is Meson's internal `dep<object id>`, not a library."""
    return isinstance(name, str) and re.fullmatch(r"dep\d+", name) is not None


# The settings of torch's that change numerics, as `torch_section` records them (with
# `version`, `devices` and, when reading them failed, `error`).
TORCH_SETTINGS = (
    "cuda",
    "cudnn",
    "cpu_capability",
    "threads",
    "deterministic_algorithms",
    "cudnn_deterministic",
    "cudnn_benchmark",
    "tf32_matmul",
    "tf32_cudnn",
)


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
    # The CPU kernels torch dispatches to (AVX512, AVX2, DEFAULT, ...): decided by the CPU
    # and by ATEN_CPU_CAPABILITY, and they change the last bits. torch < 2.1 cannot say.
    with contextlib.suppress(Exception):
        section["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
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


def markers() -> dict[str, str]:
    """This interpreter's PEP 508 environment markers, as `packaging` computes them: what a
    lock's markers are evaluated on for this environment (not for the host reading it)."""

    def fmt(info: Any) -> str:
        v = f"{info.major}.{info.minor}.{info.micro}"
        return v if info.releaselevel == "final" else v + info.releaselevel[0] + str(info.serial)

    return {
        "implementation_name": sys.implementation.name,
        "implementation_version": fmt(sys.implementation.version),
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


# The sections of a fingerprint that describe what the environment holds (its interpreter,
# the machine, its installed distributions): the same for every process started in it while
# its files are unchanged, so they can be taken once and reused (`stamp` says when they must
# be taken again). The others (`RUNTIME`) describe one process: the variables it ran with,
# the libraries it imported and their settings, taken where the model ran, after it ran.
STATIC = ("schema", "python", "platform", "markers", "cpu", "distributions", "conda")
RUNTIME = ("env", "env_withheld", "numpy", "threadpools", "torch")


def collect(imports: bool = False) -> dict[str, Any]:
    """The fingerprint of this interpreter's environment, as a JSON-ready dict.

    Library sections (numpy, threadpoolctl, torch) describe modules already imported;
    with `imports`, the probe imports those that are installed first.
    """
    if imports:
        for module in ("numpy", "threadpoolctl", "torch"):
            # Not installed, or broken: that section is left out.
            with contextlib.suppress(Exception):
                __import__(module)
    return {**static_sections(), **runtime_sections(imports)}


def static_sections() -> dict[str, Any]:
    """The `STATIC` sections of this interpreter's fingerprint (`conda` only in a conda
    environment)."""
    fp: dict[str, Any] = {
        "schema": SCHEMA,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "build": list(platform.python_build()),
            "compiler": platform.python_compiler(),
            "executable": sys.executable,
            "prefix": sys.prefix,
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "libc": "-".join(platform.libc_ver()) or None,
        },
        "markers": markers(),
        "cpu": cpu(),
        "distributions": distributions(),
    }
    conda = conda_packages(sys.prefix)
    if conda is not None:
        fp["conda"] = conda
    return fp


def runtime_sections(imports: bool = False) -> dict[str, Any]:
    """The `RUNTIME` sections of this process's fingerprint: the numerics variables it runs
    with, and the libraries it has imported (each section only when imported)."""
    env, withheld = environment_variables()
    fp: dict[str, Any] = {"env": env, "env_withheld": withheld}
    sections = (
        ("numpy", numpy_section()),
        (
            "threadpools",
            threadpool_section() if imports or "threadpoolctl" in sys.modules else None,
        ),
        ("torch", torch_section()),
    )
    for name, section in sections:
        if section is not None:
            fp[name] = section
    return fp


# What `stamp` looks at in each folder on sys.path: installed distributions' metadata and
# the path files that can add folders to sys.path.
_STAMPED = (".dist-info", ".egg-info", ".egg-link", ".pth", ".egg")


def stamp(paths: list[str], executable: str, prefix: str) -> str:
    """A cheap digest of everything the `STATIC` sections are read from, without reading
    any of it: the interpreter's file (its size, modification time and inode), the machine
    (uname, boot id), and, for each folder on `paths` (sys.path as the probe saw it), the
    folder's modification time (an entry added, removed or renamed changes it) and the
    size, modification time and inode of every file of each `*.dist-info`/`*.egg-info`
    in it and of each `.pth`/`.egg-link` file, and the same of `prefix`'s conda-meta.
    Whatever installs, uninstalls or edits a distribution's metadata changes it.

    Computed by the probe before it reads the environment, and by the host later on the
    same paths: equal stamps mean the environment's metadata is as it was when probed."""
    import hashlib

    parts: list[str] = [repr(os.uname()) if hasattr(os, "uname") else sys.platform]
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as f:
        parts.append(f.read().strip())
    parts.append(executable + " " + _stat(os.path.realpath(executable)))
    conda = os.path.join(prefix, "conda-meta")
    for folder in [*paths, conda]:
        parts.append(folder + " " + _stat(folder))
        try:
            names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        except OSError:
            continue
        for name in names:
            if folder != conda and not name.endswith(_STAMPED):
                continue
            path = os.path.join(folder, name)
            parts.append(name + " " + _stat(path))
            if os.path.isdir(path):
                with contextlib.suppress(OSError):
                    for inner in sorted(os.listdir(path)):
                        parts.append(name + "/" + inner + " " + _stat(os.path.join(path, inner)))
    return "stamp:" + hashlib.sha256("\n".join(parts).encode("utf-8", "replace")).hexdigest()


def _stat(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def static_entry() -> dict[str, Any]:
    """What `probe.py --static` writes: the `STATIC` sections, the folders on sys.path
    they were read from and the `stamp` of those, taken before reading them (a change made
    while the probe reads shows as a stamp that no longer matches)."""
    paths = list(sys.path)
    taken = stamp(paths, sys.executable, sys.prefix)
    return {
        "fingerprint": static_sections(),
        "paths": paths,
        "executable": sys.executable,
        "prefix": sys.prefix,
        "stamp": taken,
    }


def main(argv: list[str]) -> int:
    """`probe.py [--no-import | --static | --markers] [OUT]`: write the fingerprint as JSON
    to OUT, or to stdout; with `--static`, what `static_entry` gives, read as a process the
    worker starts sees its environment (this file's folder not on sys.path); with
    `--markers`, only the interpreter's PEP 508 markers (`markers`)."""
    args = argv[1:]
    imports = "--no-import" not in args
    static = "--static" in args
    only_markers = "--markers" in args
    args = [a for a in args if a not in ("--no-import", "--static", "--markers")]
    if static:
        here = os.path.dirname(os.path.abspath(__file__))
        if sys.path and os.path.abspath(sys.path[0] or ".") == here:
            del sys.path[0]
        data = static_entry()
    elif only_markers:
        data = markers()
    else:
        data = collect(imports=imports)
    text = json.dumps(data, indent=2, sort_keys=True)
    if args:
        with open(args[0], "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
