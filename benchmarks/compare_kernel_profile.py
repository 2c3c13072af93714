"""Where the compiled comparison's time goes, per element: one run, one process.

    .venv/bin/python benchmarks/compare_kernel_profile.py [--size 64M] [--repeat 9]

On the benchmark's outputs (`compare_throughput.chunks`: float32, the candidate the
reference moved -4..4 ULP in every element) held in memory, prints nanoseconds per
element of CPU time of the thread doing the work (`time.thread_time`: what other work on
the machine takes from the wall clock does not count), median and least of --repeat runs:
  - the memory floor: a copy of one array, a sum of one, the difference of the two;
  - numpy.allclose on the two;
  - the compiled pass (`parity.judging.kernels._pass`) on one thread, cut short after
    each of its parts (a copy of the module compiled without cache, a `continue` put
    after each part): the differences into the chunk buffers; + the reductions (counts,
    sums, maxima); + the rtol-to-pass check; + the histograms (the whole pass without
    speculation); + the collection of the speculated bins' keys (the whole pass);
  - compare_arrays on the compiled path, all its threads (`time.process_time`, then the
    wall clock), beside numpy.allclose's wall clock;
and first, the process's first compiled comparison (on 64 Ki elements): importing numba,
then loading the cached kernels (or compiling them, where no cache is there yet).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
from compare_throughput import chunks, parse_size  # beside this script

# Where the pass is cut: each anchor (a line of `_pass`) gets a `continue` before it.
CUTS = {
    "differences": "        if nonfinite:  # NaN",
    "+ reductions": "            bound = rtol_pass * _MARGIN\n",
    "+ rtol-to-pass": "            for j in range(m):  # zeros land",
}


def cut_module(after: str | None) -> ModuleType:
    """parity.judging.kernels compiled without cache, its pass cut short after `after`."""
    import parity.judging.kernels as real

    source = Path(real.__file__).read_text()
    if "cache=True" not in source:
        raise SystemExit("kernels.py no longer caches with cache=True: update this script")
    source = source.replace("cache=True", "cache=False")
    if after is not None:
        anchor = CUTS[after]
        if source.count(anchor) != 1:
            raise SystemExit(f"kernels.py: the anchor for {after!r} is gone: update this script")
        indent = anchor[: len(anchor) - len(anchor.lstrip())]
        source = source.replace(anchor, f"{indent}continue  # profile cut\n{anchor}", 1)
    name = f"_profiled_kernels_{len(sys.modules)}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source, f"<kernels cut after {after}>", "exec"), module.__dict__)
    return module


def cpu(fn: Callable[[], object], repeat: int, clock: Callable[[], float]) -> list[float]:
    """`fn` run `repeat` times after one warm-up run: seconds of `clock` each."""
    fn()
    seconds = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        seconds.append(clock() - t0)
    return seconds


def line(name: str, seconds: list[float], n: int) -> None:
    per = [s / n * 1e9 for s in seconds]
    print(f"{name:<44} {statistics.median(per):7.2f} {min(per):7.2f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64M", help="bytes per output (float32)")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    n = parse_size(args.size) // 4
    refs, cands = zip(*chunks(n), strict=True)
    b, a = np.concatenate(refs), np.concatenate(cands)
    del refs, cands
    os.environ["PARITY_COMPARE_KERNEL"] = "numba"
    print(f"{n} float32 elements a few ULP apart, {os.cpu_count()} CPUs, numpy {np.__version__}")
    print(f"{'ns per element (CPU of the working thread)':<44} {'median':>7} {'least':>7}")
    t0, c0 = time.perf_counter(), time.process_time()
    import numba

    print(f"import numba: {time.process_time() - c0:.3f} s CPU, {time.perf_counter() - t0:.3f} s")
    from parity.judging.compare import compare_arrays
    from parity.policies import TolerancePolicy

    policy = TolerancePolicy(atol=1e-8, rtol=1e-5)
    t0, c0 = time.perf_counter(), time.process_time()
    compare_arrays("y", b[: 1 << 16], a[: 1 << 16], policy)
    print(
        f"first compiled comparison (64 Ki elements): {time.process_time() - c0:.3f} s CPU,"
        f" {time.perf_counter() - t0:.3f} s"
    )
    thread = time.thread_time
    line("copy of one array", cpu(lambda: a.copy(), args.repeat, thread), n)
    line("sum of one array", cpu(lambda: a.sum(), args.repeat, thread), n)
    line("difference of the two", cpu(lambda: np.subtract(a, b), args.repeat, thread), n)
    line(
        "numpy.allclose",
        cpu(lambda: np.allclose(a, b, rtol=1e-5, atol=1e-8), args.repeat, thread),
        n,
    )

    def one_thread_pass(module: ModuleType, speculate: bool) -> Callable[[], object]:
        def run() -> object:
            module.SPECULATE = speculate
            fused = module.FusedPass((module.ALLCLOSE, 1e-8, 1e-5, 0), n, (0.5, 0.99))
            fused.threads = 1  # one part: the kernel runs in this thread
            for start in range(0, n, module.FUSED_BLOCK):
                stop = start + module.FUSED_BLOCK
                fused.add(start, b[start:stop], a[start:stop])
            return fused

        return run

    numba.set_num_threads(1)
    for after in CUTS:
        line(
            f"pass: {after}", cpu(one_thread_pass(cut_module(after), False), args.repeat, thread), n
        )
    whole = cut_module(None)
    line(
        "pass: + histograms (no speculation)",
        cpu(one_thread_pass(whole, False), args.repeat, thread),
        n,
    )
    line(
        "pass: + collecting speculated bins (all)",
        cpu(one_thread_pass(whole, True), args.repeat, thread),
        n,
    )
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)

    compare = lambda: compare_arrays("y", b, a, policy)  # noqa: E731
    line("compare_arrays (process CPU)", cpu(compare, args.repeat, time.process_time), n)
    line("compare_arrays (wall)", cpu(compare, args.repeat, time.perf_counter), n)
    line(
        "numpy.allclose (wall)",
        cpu(lambda: np.allclose(a, b, 1e-5, 1e-8), args.repeat, time.perf_counter),
        n,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
