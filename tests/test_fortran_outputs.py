"""Fortran-ordered outputs: read in C order in bounded memory, with every figure a
comparison gives the same as for the same arrays in C order, or in memory.

An `.npy` member may say `fortran_order: True` (NumPy writes that for an array that is
Fortran-contiguous; any other writer may too). `NpzMember.blocks` then makes C-order
blocks from the member in passes of bounded size, so the judging code that reads element
order (the worst index, columns, heatmaps, the first disagreeing rows, the pictures' sample)
sees exactly what it sees for a C-ordered member. The worker writes C order always.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import LOCAL_CONFIG, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import parity.arrays
from parity.arrays import MemoryArray
from parity.judging.compare import compare_arrays
from parity.outputs import load_outputs
from parity.policies import TolerancePolicy

# Sums of differences near the float64 maximum overflow to inf, as they do in memory.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8]


def npz(path: Path, array: np.ndarray, *, fortran: bool) -> parity.arrays.NpzMember:
    """`array` written as member `y` of an `.npz` at `path`, in the given order."""
    np.savez(path, y=np.asfortranarray(array) if fortran else np.ascontiguousarray(array))
    member = load_outputs(path)["y"]
    assert member._fortran == (fortran and sum(d > 1 for d in array.shape) > 1)
    return member


def figures(reference: object, candidate: object, policy: TolerancePolicy) -> str:
    """Every figure of the comparison, as text (NaN compares equal to NaN)."""
    result = compare_arrays(
        "y", reference, candidate, policy, block_elements=24, keep_limit=16, pictures=True
    )  # type: ignore[arg-type]
    return json.dumps(dataclasses.asdict(result), default=str, sort_keys=True)


def all_orders_agree(tmp: Path, ref: np.ndarray, cand: np.ndarray, policy: TolerancePolicy) -> None:
    in_memory = figures(MemoryArray(ref), MemoryArray(cand), policy)
    for ref_f, cand_f in [(False, False), (True, True), (True, False), (False, True)]:
        r = npz(tmp / f"r{ref_f:d}{cand_f:d}.npz", ref, fortran=ref_f)
        c = npz(tmp / f"c{ref_f:d}{cand_f:d}.npz", cand, fortran=cand_f)
        assert figures(r, c, policy) == in_memory, (ref_f, cand_f)
        for index in {0, ref.shape[0] // 2, ref.shape[0] - 1}:
            np.testing.assert_array_equal(r.sample(index), ref[index])


@pytest.fixture
def small_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Passes of a few elements, so that every path through the reordering is taken: many
    passes, and one index of the first axis holding more than a pass (recursion)."""
    monkeypatch.setattr(parity.arrays, "SEGMENT_BYTES", 40)
    monkeypatch.setattr(parity.arrays, "READ_BYTES", 56)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6))
    elements = hnp.from_dtype(dtype, allow_nan=True, allow_infinity=True, allow_subnormal=False)
    ref = draw(hnp.arrays(dtype, shape, elements=elements))
    moved = draw(hnp.arrays(np.bool_, shape))
    cand = np.where(moved, draw(hnp.arrays(dtype, shape, elements=elements)), ref)
    return ref, cand.astype(dtype)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=pairs(), atol=st.sampled_from([0.0, 0.5]))
def test_fortran_c_and_memory_give_the_same_figures(
    pair: tuple[np.ndarray, np.ndarray], atol: float, small_passes: None, tmp_path: Path
) -> None:
    ref, cand = pair
    all_orders_agree(tmp_path, ref, cand, TolerancePolicy(atol=atol))


@pytest.mark.parametrize(
    "shape",
    [(7, 5), (5, 7), (3, 4, 5), (2, 6, 5, 3), (4, 1, 6), (1, 9), (6, 1), (9,), (40, 3), (3, 40)],
)
def test_adversarial_values_in_every_layout(
    shape: tuple[int, ...], small_passes: None, tmp_path: Path
) -> None:
    size = math.prod(shape)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-300, -1e300, 3.5])
    ref = np.resize(special, size).reshape(shape)
    cand = np.resize(np.roll(special, 3), size).reshape(shape)
    cand.flat[size // 2] = 7.0  # a worst element that is not the first of its block
    all_orders_agree(tmp_path, ref, cand, TolerancePolicy(atol=1e-3))
    ints = np.arange(size, dtype=np.int64).reshape(shape) * 3
    all_orders_agree(tmp_path, ints, ints[::-1].copy(), TolerancePolicy())
    with np.errstate(over="ignore"):  # -1e300 is -inf in float16
        halves = ref.astype(np.float16)
    all_orders_agree(tmp_path, halves, (halves * np.float16(1.5)), TolerancePolicy(rtol=0.1))


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5), (2, 6, 5, 3)])
def test_without_a_temporary_file_each_band_is_a_pass_over_the_member(
    shape: tuple[int, ...], small_passes: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The bands are spooled to a temporary file; on a full disk they are read from the
    member instead, one pass each, with the same result."""
    import errno
    import tempfile

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    ref = np.arange(math.prod(shape), dtype=np.float64).reshape(shape)
    cand = ref.copy()
    cand.flat[5] = -1.0
    with monkeypatch.context() as m:
        m.setattr(tempfile, "TemporaryFile", full)
        all_orders_agree(tmp_path, ref, cand, TolerancePolicy())


def test_decisions_and_pictures_read_the_right_rows(small_passes: None, tmp_path: Path) -> None:
    """The decision policy's first disagreeing rows, and the worst sample of an image-like
    output drawn in pictures, from Fortran-ordered members."""
    rng = np.random.default_rng(5)
    scores = rng.random((30, 4))
    moved = scores.copy()
    moved[[7, 19], :] = moved[[7, 19], ::-1]  # two rows decide otherwise
    all_orders_agree(tmp_path, scores, moved, TolerancePolicy(kind="decision"))
    images = rng.random((3, 16, 12, 3)).astype(np.float32)
    changed = images.copy()
    changed[2, 5:9, 3:7, 1] += 0.5
    all_orders_agree(tmp_path, images, changed, TolerancePolicy(atol=1e-3))


def test_a_fortran_ordered_output_is_never_held_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two 4 MiB outputs compared with passes of 256 KiB: what Python and NumPy allocate
    at once (tracemalloc sees both) in Fortran order is within 2 MiB of the same
    comparison in C order (holding one output whole would add 4 MiB or more)."""
    import tracemalloc

    monkeypatch.setattr(parity.arrays, "SEGMENT_BYTES", 1 << 18)
    monkeypatch.setattr(parity.arrays, "READ_BYTES", 1 << 16)
    ref = np.random.default_rng(1).random((1 << 17, 8), dtype=np.float32)
    cand = ref.copy()
    cand[::7, 3] += np.float32(0.25)
    expected = compare_arrays("y", ref, cand, keep_limit=1024)
    peaks = {}
    for order, fortran in (("C", False), ("F", True)):
        r = npz(tmp_path / f"r{order}.npz", ref, fortran=fortran)
        c = npz(tmp_path / f"c{order}.npz", cand, fortran=fortran)
        tracemalloc.start()
        try:
            result = compare_arrays("y", r, c, keep_limit=1024)
            _, peaks[order] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result == expected, order
    assert peaks["F"] < peaks["C"] + (2 << 20), peaks


def test_the_worker_writes_c_order_for_a_fortran_ordered_output(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    adapter = """
    import numpy as np

    def predict(inputs):
        return {"y": np.asfortranarray(inputs["x"].astype(np.float64) * 2.0)}
    """
    cfg = write_project(adapter, LOCAL_CONFIG.format(timeout=120))
    work = tmp_path / "work"
    result = run_cli("parity", "check", "--config", str(cfg), "--workdir", str(work), "-q")
    assert result.returncode == 0, result.stderr
    for env in ("train", "infer"):
        with zipfile.ZipFile(work / env / "outputs.npz") as zf, zf.open("y.npy") as f:
            np.lib.format.read_magic(f)
            shape, fortran, _ = np.lib.format.read_array_header_1_0(f)
        assert (shape, fortran) == ((12, 3, 4), False), env


MEASURE = """
import sys
from pathlib import Path

import numpy  # imported before the baseline: parity imports it lazily

from parity.judging.compare import compare_arrays
from parity.outputs import load_outputs
from parity.policies import TolerancePolicy


def peak_bytes():
    # VmHWM, not ru_maxrss: after fork and exec ru_maxrss starts at the parent's peak.
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM:"))
    return int(hwm.split()[1]) * 1024


baseline = peak_bytes()
reference = load_outputs(Path(sys.argv[1]))["y"]
candidate = load_outputs(Path(sys.argv[2]))["y"]
c = compare_arrays("y", reference, candidate, TolerancePolicy(atol=1e-3))
print(peak_bytes() - baseline, c.mismatched, c.worst_index)
"""

ROWS, COLS = 1 << 22, 16  # 256 MiB of float32 per output


def write_member(path: Path, fortran: bool, seed: int) -> None:
    """A 256 MiB float32 member `y`, written chunk by chunk (the bytes are the same in
    both orders; the header says which order they are in)."""
    header = {"descr": "<f4", "fortran_order": fortran, "shape": (ROWS, COLS)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf, zf.open("y.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for i in range(16):
            rng = np.random.default_rng([0, i])
            chunk = rng.random(ROWS * COLS // 16, dtype=np.float32)
            if seed:
                chunk[::1000] += np.float32(0.01 * seed)
            f.write(chunk.data)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="peak memory is read from /proc")
def test_two_fortran_ordered_outputs_compare_in_bounded_memory(tmp_path: Path) -> None:
    peaks = {}
    for order, fortran in (("C", False), ("F", True)):
        ref, cand = tmp_path / f"ref-{order}.npz", tmp_path / f"cand-{order}.npz"
        write_member(ref, fortran, 0)
        write_member(cand, fortran, 1)
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, str(ref), str(cand)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        peak, mismatched, _ = done.stdout.split(maxsplit=2)
        assert int(mismatched) > 0
        peaks[order] = int(peak)
        ref.unlink()
        cand.unlink()
    # Loaded whole, one Fortran-ordered output alone would add 256 MiB.
    assert peaks["F"] <= peaks["C"] + (64 << 20), peaks
