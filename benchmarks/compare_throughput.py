"""How fast is `compare_arrays` beside numpy.allclose, and in how much memory? One run.

    .venv/bin/python benchmarks/compare_throughput.py [--sizes 64M,512M] [--repeat 3]

For each size (float32 bytes per output; 2G takes several minutes on 2 cores) writes a
reference and a candidate outputs.npz, chunk by chunk: the candidate is the reference
moved by -4..4 ULP in every element, seeded, as two builds of one model differ. Then,
each variant in its own fresh process so that peaks do not mix, times (median of
--repeat runs):
  allclose  numpy.allclose(candidate, reference, rtol, atol) on the arrays in memory
  memory    compare_arrays on the same arrays in memory
  archive   compare_arrays on the two archives, read block by block
the last two on each path (PARITY_COMPARE_KERNEL): numpy, the reference path, and numba,
the compiled pass (parity.judging.kernels; its first run in a process loads the cached
kernels, or compiles them once: the median hides it), and prints GB/s (bytes of both
inputs / seconds, 1 GB = 1e9 bytes), the ratio to allclose, the peak resident memory
above the process's baseline (the in-memory variants' baseline includes the loaded
arrays; the numba path's includes importing numba and loading its kernels, ~100 MiB) and
how many passes over the data compare_arrays made.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from results import record  # beside this script

from parity.arrays import OutputArray

TARGET = 3.0  # compare_arrays's throughput over numpy.allclose's
MEMORY_TARGET = 256  # MiB of peak memory above the baseline, at any size
CHUNK = 1 << 22  # elements generated at a time
COLS = 1024  # outputs are (rows, 1024) float32
SEED = 7
VARIANTS = ("allclose", "memory", "archive")
PATHS = ("numpy", "numba")  # compare_arrays's, by PARITY_COMPARE_KERNEL
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes in `text` such as 64M or 2G (binary units), a multiple of one 4 KiB row."""
    number, unit = text[:-1], text[-1].upper()
    size = int(number) * UNITS[unit] if unit in UNITS else int(text)
    if size <= 0 or size % (COLS * 4):
        raise argparse.ArgumentTypeError(f"{text}: not a positive multiple of {COLS * 4} bytes")
    return size


def chunks(elements: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Reference and candidate, CHUNK elements at a time; chunk i from (SEED, i) alone."""
    for i, first in enumerate(range(0, elements, CHUNK)):
        rng = np.random.default_rng([SEED, i])
        n = min(CHUNK, elements - first)
        ref = rng.standard_normal(n, dtype=np.float32)
        ulps = rng.integers(-4, 5, n, dtype=np.int32)
        ulps[ref == 0] = 0  # stepping below +0.0 in the bit pattern would give a NaN
        yield ref, (ref.view(np.int32) + ulps).view(np.float32)


def write_outputs(reference: Path, candidate: Path, size: int) -> None:
    """The two archives, each holding one (rows, 1024) float32 array `y` of `size` bytes."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (size // (4 * COLS), COLS)}
    with (
        zipfile.ZipFile(reference, "w", zipfile.ZIP_STORED) as zr,
        zipfile.ZipFile(candidate, "w", zipfile.ZIP_STORED) as zc,
        zr.open("y.npy", "w", force_zip64=True) as fr,
        zc.open("y.npy", "w", force_zip64=True) as fc,
    ):
        np.lib.format.write_array_header_1_0(fr, header)
        np.lib.format.write_array_header_1_0(fc, header)
        for ref, cand in chunks(size // 4):
            fr.write(ref.data)
            fc.write(cand.data)


def peak_bytes() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss starts at the parent's peak)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


class CountedPasses:
    """An output that counts how often it is read from the start."""

    def __init__(self, inner: OutputArray) -> None:
        self.inner = inner
        self.passes = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return self.inner.shape

    @property
    def dtype(self) -> np.dtype:
        return self.inner.dtype

    def blocks(self, elements: int) -> Iterator[np.ndarray]:
        self.passes += 1
        yield from self.inner.blocks(elements)

    def load(self) -> np.ndarray:
        return self.inner.load()


@dataclass(frozen=True)
class Measurement:
    """One variant on one pair of outputs, measured in its own process."""

    seconds: list[float]  # each of the --repeat runs
    peak: int  # bytes of resident memory above the baseline, at the highest
    passes: int | None  # times compare_arrays read the data (None: allclose)
    passed: bool

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def measure(
    variant: str, reference: Path, candidate: Path, args: argparse.Namespace
) -> Measurement:
    """`variant` run --repeat times on the two archives' arrays, in this process."""
    from parity.arrays import MemoryArray
    from parity.judging.compare import compare_arrays
    from parity.outputs import load_outputs
    from parity.policies import TolerancePolicy

    ref_out, cand_out = load_outputs(reference)["y"], load_outputs(candidate)["y"]
    if variant == "archive":
        ref, cand = CountedPasses(ref_out), CountedPasses(cand_out)
    else:
        ref = CountedPasses(MemoryArray(ref_out.load()))
        cand = CountedPasses(MemoryArray(cand_out.load()))
    policy = TolerancePolicy(atol=args.atol, rtol=args.rtol)
    baseline = peak_bytes()
    seconds, passed = [], False
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        if variant == "allclose":
            passed = bool(np.allclose(cand.load(), ref.load(), rtol=args.rtol, atol=args.atol))
        else:
            passed = compare_arrays("y", ref, cand, policy).passed
        seconds.append(time.perf_counter() - t0)
    passes = None if variant == "allclose" else ref.passes // args.repeat
    return Measurement(seconds, peak_bytes() - baseline, passes, passed)


def measure_apart(
    variant: str, path: str, reference: Path, candidate: Path, args: argparse.Namespace
) -> Measurement:
    """`measure` in a fresh interpreter on `path`, so that its peak memory is its own."""
    cmd = [sys.executable, __file__, "--measure", variant, str(reference), str(candidate)]
    cmd += ["--repeat", str(args.repeat), "--rtol", repr(args.rtol), "--atol", repr(args.atol)]
    env = {**os.environ, "PARITY_COMPARE_KERNEL": path}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return Measurement(**json.loads(out.stdout))


def label(size: int) -> str:
    """`size` bytes as 64 MiB, 2 GiB."""
    for unit in ("G", "M", "K"):
        if size % UNITS[unit] == 0:
            return f"{size // UNITS[unit]} {unit}iB"
    return f"{size} B"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64M,512M", help="bytes per output, e.g. 64M,512M,2G")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-8)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # VARIANT REF CAND
    args = parser.parse_args()
    if args.measure:
        variant, reference, candidate = args.measure
        print(json.dumps(asdict(measure(variant, Path(reference), Path(candidate), args))))
        return 0

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    print(
        f"numpy {np.__version__}, {os.cpu_count()} CPUs; candidate = reference moved -4..4 ULP "
        f"per element; rtol={args.rtol:g}, atol={args.atol:g}; median of {args.repeat} runs"
    )
    print("GB/s: bytes of both inputs / seconds;  x allclose: throughput / allclose's")
    print(
        f"{'per output':>10}  {'variant':<8} {'path':<5} {'seconds':>8} {'GB/s':>7}"
        f" {'x allclose':>10} {'peak above baseline':>19} {'passes':>6}  verdict"
    )
    with tempfile.TemporaryDirectory(prefix="parity-compare-bench-") as tmp:
        reference, candidate = Path(tmp) / "reference.npz", Path(tmp) / "candidate.npz"
        for size in sizes:
            write_outputs(reference, candidate, size)
            allclose = None
            runs = [(v, p) for v in VARIANTS for p in (("-",) if v == "allclose" else PATHS)]
            for variant, path in runs:
                m = measure_apart(
                    variant, "numpy" if path == "-" else path, reference, candidate, args
                )
                allclose = allclose or m  # VARIANTS starts with allclose
                passes = "-" if m.passes is None else str(m.passes)
                print(
                    f"{label(size):>10}  {variant:<8} {path:<5} {m.median:8.3f}"
                    f" {2 * size / m.median / 1e9:7.3f} {allclose.median / m.median:10.3f}"
                    f" {m.peak / 2**20:15.0f} MiB {passes:>6}  {'pass' if m.passed else 'FAIL'}",
                    flush=True,
                )
                if variant != "allclose" and path == "numba":
                    record(
                        f"compare {label(size)} float32, {variant}, x numpy.allclose",
                        allclose.median / m.median,
                        target=TARGET,
                        at_most=False,
                        detail=f"{m.median:.3f} s vs {allclose.median:.3f} s, {m.passes} pass(es)",
                    )
                    record(
                        f"compare {label(size)} float32, {variant}, peak memory",
                        m.peak / 2**20,
                        target=MEMORY_TARGET,
                        unit=" MiB",
                        detail="above the baseline; numba and its kernels included",
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
