"""How much does `parity check` cost over just running the model? Prints ratios from one run.

    .venv/bin/python benchmarks/parity_overhead.py [--config parity.toml] [--repeat 3]

Measures, in this order and in one process:
  cold   `parity check` with empty envlock and uv caches (downloads from PyPI)
  cold*  `parity check` with an empty envlock cache, uv's cache as the cold run left it
  warm   `parity check` with both venvs materialized (median of --repeat runs)
  bare   for each environment alone: a plain Python process in its venv that imports the
         model and runs the same inputs in the same batches with the same thread settings
         (median of --repeat runs)
and prints warm / slower-bare, the figure the project promises to keep at or under 1.1
(--warm-only: no cold runs; the envlock cache's environments, built once if missing).
The warm and bare runs alternate (a shared machine's load falls on both alike), and each
is also measured in CPU seconds (user + system, children included): the last line is the
warm check's CPU over both bare runs' together (the same two inferences, which a loaded
machine disturbs less than wall time).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import record  # beside this script

from envlock import read_lock
from envlock.backends import VenvBackend, default_cache_dir
from parity.config import load_config
from parity.inputs.seeded import generate
from parity.runs.job import THREAD_VARS

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.1  # warm check / the slower bare inference run
BARE = """
import sys, numpy as np
sys.path[:0] = {paths!r}
module, _, name = {adapter!r}.partition(":")
predict = getattr(__import__(module, fromlist=[name]), name)
with np.load({inputs!r}) as data:
    inputs = {{k: data[k] for k in data.files}}
for start in range(0, {count}, {batch}):
    predict({{k: v[start:start + {batch}] for k, v in inputs.items()}})
"""


CPU: dict[str, list[float]] = {}  # CPU seconds of each timed run, by label


def cpu() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: dict[str, str] | None = None, label: str = "") -> float:
    """Wall seconds of one command, which must succeed (parity: exit 0); its CPU seconds
    are kept under `label`."""
    t0, c0 = time.perf_counter(), cpu()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    CPU.setdefault(label, []).append(cpu() - c0)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="parity.toml")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--warm-only",
        action="store_true",
        help="No cold runs: the environments of the envlock cache, built once if missing.",
    )
    args = parser.parse_args()
    config = load_config(ROOT / args.config)
    parity_bin = str(Path(sys.executable).parent / "parity")

    with tempfile.TemporaryDirectory(prefix="parity-bench-") as tmp:
        cache = default_cache_dir() if args.warm_only else Path(tmp) / "cache"

        def check(cache_dir: Path) -> list[str]:
            return [
                parity_bin,
                "check",
                "--config",
                args.config,
                "--cache-dir",
                str(cache_dir),
                "-q",
            ]

        no_uv_cache = {**os.environ, "UV_CACHE_DIR": str(Path(tmp) / "uv-cache")}
        if args.warm_only:
            cold = cold_cached = math.nan
            timed(check(cache))  # builds what is missing; then warm
        else:
            cold = timed(check(cache), no_uv_cache)
            cold_cached = timed(check(Path(tmp) / "cache2"))

        inputs_path = Path(tmp) / "inputs.npz"
        np.savez(inputs_path, **generate(config.inputs))
        code = BARE.format(
            paths=[str(p) for p in config.model_paths],
            adapter=config.adapter,
            inputs=str(inputs_path),
            count=config.inputs.count,
            batch=config.inputs.batch_size,
        )
        env = dict(os.environ)
        if config.threads:
            env.update({var: str(config.threads) for var in THREAD_VARS})
        pythons = {}
        for spec in config.environments:
            assert spec.lock is not None, "the benchmark measures venv environments"
            pythons[spec.name] = VenvBackend(cache).materialize(read_lock(spec.lock), spec.group)
        bare: dict[str, list[float]] = {name: [] for name in pythons}
        warm_runs = []
        for _ in range(args.repeat):
            warm_runs.append(timed(check(cache), label="warm"))
            for name, environment in pythons.items():
                cmd = [str(environment.python), "-s", "-c", code]
                bare[name].append(timed(cmd, env, label=name))

    warm = statistics.median(warm_runs)
    bare_median = {name: statistics.median(runs) for name, runs in bare.items()}
    slowest = max(bare_median, key=lambda name: bare_median[name])
    print(f"config: {args.config} ({config.inputs.count} inputs, threads={config.threads})")
    print(f"cold parity check (empty envlock + uv caches): {cold:7.2f} s")
    print(f"cold parity check (empty envlock cache only):  {cold_cached:7.2f} s")
    print(
        f"warm parity check (median of {args.repeat}):      {warm:7.2f} s   runs: "
        + ", ".join(f"{t:.2f}" for t in warm_runs)
    )
    for name, runs in bare.items():
        print(
            f"bare inference in {name:<6} (median):      {bare_median[name]:7.2f} s   runs: "
            + ", ".join(f"{t:.2f}" for t in runs)
        )
    ratio = warm / bare_median[slowest]
    print(f"warm / slower bare run ({slowest}):          {ratio:7.2f}   (target <= {TARGET:.2f})")
    print(f"cold / warm:                              {cold / warm:7.2f}")
    both = sum(statistics.median(CPU[name]) for name in bare)
    cpu_ratio = statistics.median(CPU["warm"]) / both
    print(
        f"warm CPU / both bare runs' CPU:           {cpu_ratio:7.2f}"
        f"   ({statistics.median(CPU['warm']):.2f} s / {both:.2f} s, medians)"
    )
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    record(
        "warm reference check / slower bare run (wall)",
        ratio,
        target=TARGET,
        detail=f"{warm:.2f} s vs {bare_median[slowest]:.2f} s ({slowest})",
    )
    record("warm reference check CPU / both bare runs' CPU", cpu_ratio)
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
