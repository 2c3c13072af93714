"""Every figure the project promises, measured in one run and printed in one table (`make bench`).

    .venv/bin/python benchmarks/bench.py [--only trivial,overhead,compare,images,cold] [--quick]

Runs each benchmark of this folder in turn, as its own process (each prints its own table
as it goes, on stderr here), collects the figures each one hands over
(`benchmarks/results.py`), and ends with one table: figure, measured, target, met or not,
and the machine it ran on (CPU model, cores, SIMD level numpy dispatches to, load average,
Python and NumPy versions). The benchmarks:

  trivial   benchmarks/trivial_check.py: a one-matrix-product model checked in two warm
            venvs vs the floor (the two interpreters importing numpy and running it)
  overhead  benchmarks/parity_overhead.py --warm-only: the reference check in warm venvs
            vs the slower bare inference run
  compare   benchmarks/compare_throughput.py: compare_arrays with full statistics vs
            numpy.allclose on 64 MiB and 512 MiB float32 outputs a few ULP apart
  images    benchmarks/images.py: image sizes with the wheelhouse layer (the Dockerfiles
            before multi-stage builds) and without (needs a Docker daemon; skipped, and
            said so, without one)
  cold      `make parity` in a fresh clone of this commit, with nothing of the clone's
            built before (its tool venv, its environments): uv's download cache as it is

--quick: one repeat each and the 64 MiB size only (a smoke run, not the figures to quote).
Exit status: 0 when every figure measured meets its target, 1 otherwise, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import RESULTS, record  # beside this script

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
COLD_TARGET = 45.0  # seconds: cold `make parity` on a fresh clone
BENCHMARKS = ("trivial", "overhead", "compare", "images", "cold")


def commands(quick: bool) -> dict[str, list[str]]:
    """Each benchmark's command line."""
    repeat = ["--repeat", "1" if quick else "3"]
    sizes = ["--sizes", "64M" if quick else "64M,512M"]
    return {
        "trivial": [PYTHON, str(HERE / "trivial_check.py"), *repeat],
        "overhead": [PYTHON, str(HERE / "parity_overhead.py"), "--warm-only", *repeat],
        "compare": [PYTHON, str(HERE / "compare_throughput.py"), *sizes, *repeat],
        "images": [PYTHON, str(HERE / "images.py"), "--sizes-only"],
    }


def machine() -> str:
    """The machine in one line: CPU model, cores, SIMD level, memory, Python, NumPy."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    levels = ("AVX512_SKX", "AVX512F", "AVX2", "AVX", "SSE42", "ASIMD")
    simd = next((name for name in levels if features.get(name)), "baseline")
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        memory = ""
    return (
        f"{model}, {os.cpu_count()} cores, {simd}{memory}; "
        f"Python {platform.python_version()}, NumPy {np.__version__}"
    )


def run_benchmark(name: str, cmd: list[str], results: Path) -> tuple[int, float]:
    """Run one benchmark (its output to our stderr); its exit status and wall seconds."""
    print(f"\n==> {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    env = {**os.environ, RESULTS: str(results)}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=sys.stderr, check=False)
    return done.returncode, time.perf_counter() - start


def cold_make_parity(results: Path) -> tuple[int, float]:
    """`make parity` in a fresh clone of HEAD; records its wall seconds."""
    print("\n==> cold: make parity in a fresh clone", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="parity-cold-") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        # The bootstrap uv is the clone's own too: a fresh clone has none.
        env = {**os.environ, "ENVLOCK_CACHE_DIR": str(clone / ".cache" / "envlock")}
        env.pop("VIRTUAL_ENV", None)
        start = time.perf_counter()
        done = subprocess.run(
            ["make", "parity"], cwd=clone, env=env, stdout=sys.stderr, check=False
        )
        seconds = time.perf_counter() - start
    os.environ[RESULTS] = str(results)
    try:
        record(
            "cold make parity, fresh clone",
            seconds,
            target=COLD_TARGET,
            unit="s",
            detail=f"exit {done.returncode}",
        )
    finally:
        os.environ.pop(RESULTS, None)
    return done.returncode, seconds


def docker_answers() -> bool:
    """Whether a Docker daemon answers here."""
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False)
    return probe.returncode == 0


def table(lines: list[dict[str, object]], skipped: list[str], failed: list[str]) -> bool:
    """Print the figures; whether every one meets its target."""
    width = max([len(str(r["figure"])) for r in lines] + [len("figure")])
    print(f"\n{'figure':<{width}}  {'measured':>10}  {'target':>10}  met")
    all_met = True
    for r in lines:
        value, target, unit = float(r["value"]), r["target"], str(r["unit"])
        shown = f"{value:.2f}{unit}"
        if target is None:
            goal, met = "", "-"
        else:
            sign = "<=" if r["at_most"] else ">="
            goal = f"{sign} {float(target):g}{unit}"
            ok = value <= float(target) if r["at_most"] else value >= float(target)
            met = "yes" if ok else "NO"
            all_met = all_met and ok
        detail = f"  ({r['detail']})" if r["detail"] else ""
        print(f"{r['figure']!s:<{width}}  {shown:>10}  {goal:>10}  {met}{detail}")
    for name in skipped:
        print(f"{name}: skipped")
    for name in failed:
        print(f"{name}: FAILED (its output above says why)")
    return all_met and not failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--quick", action="store_true", help="one repeat, 64 MiB only")
    args = parser.parse_args()
    chosen = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {BENCHMARKS}")
    cmds = commands(args.quick)
    skipped: list[str] = []
    failed: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="parity-bench-") as tmp:
        results = Path(tmp) / "results.jsonl"
        results.touch()
        for name in chosen:
            if name == "images" and not docker_answers():
                skipped.append("images (no Docker daemon answers)")
                continue
            if name == "cold":
                status, _ = cold_make_parity(results)
            else:
                status, _ = run_benchmark(name, cmds[name], results)
            # A benchmark exits 1 when it measured a figure short of its target (the table
            # says which); anything else means it could not measure.
            if status not in (0, 1) and name != "cold":
                failed.append(f"{name} (exit {status})")
        lines = [json.loads(line) for line in results.read_text().splitlines() if line]
    print(f"\nmachine: {machine()}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"one run, {time.perf_counter() - started:.0f} s; load average at the end: {load}")
    return 0 if table(lines, skipped, failed) else 1


if __name__ == "__main__":
    sys.exit(main())
