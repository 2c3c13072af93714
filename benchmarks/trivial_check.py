"""What does `parity check` add to the smallest model there is? Prints ratios from one run.

    .venv/bin/python benchmarks/trivial_check.py [--lock LOCK] [--group main] [--repeat 5]

The model is one matrix product (4 samples of 4 float64 by a 4x3 matrix) in two venv
environments from one lock (numpy is all it needs; the default lock is the sklearn-drift
example's inference lock, whose venv has numpy). Measures, side by side (alternating, so
that a shared machine's load falls on both alike), median of --repeat runs each:
  floor   the two venvs' interpreters, started at once, each importing numpy and the model
          and running it once: what any tool must spend
  check   `parity check` of the same model in the same two warm venvs, as a user runs it
          (the console script, -q, no report files)
  import  `import parity.cli` alone, the command's start-up (CPU seconds of that process)
each in wall seconds and in CPU seconds (user + system, children included: the same work,
which a loaded machine disturbs less than wall time), once with PYTHONDONTWRITEBYTECODE=1
(no .pyc written: every module of parity compiled on every run, as in a read-only checkout)
and once without it (the .pyc files in a temporary PYTHONPYCACHEPREFIX, made by one run
before timing, as after a normal install). Prints one table with check / floor; the target
is <= 3 (wall).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import record  # beside this script

from envlock import read_lock
from envlock.backends import VenvBackend, default_cache_dir
from parity.runs.job import THREAD_VARS

ROOT = Path(__file__).resolve().parent.parent
TARGET = 3.0
MODEL = """\
import numpy as np

W = np.arange(12, dtype=np.float64).reshape(4, 3)


def predict(inputs):
    return {"y": inputs["x"] @ W}
"""
CONFIG = """\
[model]
adapter = "trivial:predict"
paths = ["."]

[inputs]
seed = 17
count = 4
batch_size = 4

[inputs.arrays.x]
shape = [4]
dtype = "float64"
generator = "normal"

[environments.a]
backend = "venv"
lock = {lock!r}
group = {group!r}

[environments.b]
backend = "venv"
lock = {lock!r}
group = {group!r}

[run]
reference = "a"
threads = 1
"""
FLOOR = (
    "import sys; sys.path.insert(0, {folder!r}); import numpy as np; import trivial; "
    "trivial.predict({{'x': np.ones((4, 4))}})"
)
IMPORT = "import time; t = time.process_time(); import parity.cli; print(time.process_time() - t)"


def cpu() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmds: list[list[str]], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds for `cmds` started at once, until the last exits, and the CPU seconds
    they and their children took (each must succeed)."""
    t0, c0 = time.perf_counter(), cpu()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL) for cmd in cmds]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"failed (exit {codes}): {cmds}")
    return elapsed, cpu() - c0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lock", type=Path, default=ROOT / "examples/sklearn-drift/locks/infer/pylock.toml"
    )
    parser.add_argument("--group", default="main")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cache = args.cache_dir or default_cache_dir()
    lock = args.lock.resolve()
    python = str(VenvBackend(cache).materialize(read_lock(lock), args.group).python)
    parity_bin = str(Path(sys.executable).parent / "parity")

    rows = []
    with tempfile.TemporaryDirectory(prefix="parity-trivial-") as tmp:
        folder = Path(tmp)
        (folder / "trivial.py").write_text(MODEL, encoding="utf-8")
        config = folder / "parity.toml"
        config.write_text(CONFIG.format(lock=str(lock), group=args.group), encoding="utf-8")
        floor_cmd = [python, "-s", "-c", FLOOR.format(folder=tmp)]
        check_cmd = [parity_bin, "check", "--config", str(config), "--cache-dir", str(cache), "-q"]
        base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        base.update({var: "1" for var in THREAD_VARS})  # as parity sets them (threads = 1)
        modes = {
            "PYTHONDONTWRITEBYTECODE=1": {**base, "PYTHONDONTWRITEBYTECODE": "1"},
            ".pyc files written": {**base, "PYTHONPYCACHEPREFIX": str(folder / "pycache")},
        }
        for mode, env in modes.items():
            timed([check_cmd], env)  # warm-up: the .pyc files, the OS's file cache
            timed([floor_cmd, floor_cmd], env)
            floor, check, imports = [], [], []
            for _ in range(args.repeat):
                floor.append(timed([floor_cmd, floor_cmd], env))
                check.append(timed([check_cmd], env))
                out = subprocess.run(
                    [sys.executable, "-c", IMPORT], env=env, capture_output=True, text=True
                )
                imports.append(float(out.stdout))
            rows.append(
                (
                    mode,
                    statistics.median(t for t, _ in floor),
                    statistics.median(t for t, _ in check),
                    statistics.median(c for _, c in floor),
                    statistics.median(c for _, c in check),
                    statistics.median(imports),
                )
            )

    print(f"lock: {lock} [{args.group}], median of {args.repeat} runs each, side by side")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'':<28}{'--- wall seconds ---':>29}{'--- CPU seconds ---':>29}{'import':>9}")
    print(f"{'mode':<28}" + f"{'floor':>9}{'check':>9}{'ratio':>11}" * 2 + f"{'CPU s':>9}")
    ratios = []
    for mode, floor_s, check_s, floor_cpu, check_cpu, import_s in rows:
        ratios.append(check_s / floor_s)
        record(
            f"trivial check / floor, {mode} (wall)",
            ratios[-1],
            target=TARGET,
            detail=f"{check_s:.2f} s vs {floor_s:.2f} s; CPU {check_cpu / floor_cpu:.2f}x",
        )
        print(
            f"{mode:<28}{floor_s:9.2f}{check_s:9.2f}{ratios[-1]:10.2f}x"
            f"{floor_cpu:9.2f}{check_cpu:9.2f}{check_cpu / floor_cpu:10.2f}x{import_s:9.2f}"
        )
    print(f"target: wall check/floor <= {TARGET:.0f}x (CPU: the same work, less sensitive to load)")
    return 0 if max(ratios) <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
