"""Outputs as streams of blocks, so a comparison never holds a whole large output.

An `OutputArray` knows its shape and dtype and yields its elements in C order, a block
at a time. `MemoryArray` wraps an array already in memory; `NpzMember` reads one array
of a worker's `.npz` archive straight from the zip entry (stored or deflated), so two
2 GB outputs are compared with a few blocks in memory at once; a Fortran-ordered member
is given in C order too, through bounded bands (`_c_order`). Nothing is unpickled:
the member's header is parsed by numpy's format reader and object dtypes are refused.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from parity.errors import HostileOutputError

if TYPE_CHECKING:
    import numpy as np

MAX_HEADER = 10_000  # numpy's own default bound on an .npy header
READ_BYTES = 1 << 20  # one read of a member
# What reordering a Fortran-ordered member holds at once (twice, while transposing).
SEGMENT_BYTES = 16 << 20
# What `content_digest` reads of an output at once.
DIGEST_BYTES = 8 << 20


class OutputArray(Protocol):
    """An output that can be read block by block in C order."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def blocks(self, elements: int) -> Iterator[np.ndarray]:
        """Consecutive 1-D blocks of at most `elements` elements, in C order."""
        ...

    def load(self) -> np.ndarray:
        """The whole array in memory (for small outputs and callers that need it)."""
        ...

    def sample(self, index: int) -> np.ndarray:
        """`array[index]`, the one sample along the leading axis, read alone."""
        ...


class MemoryArray:
    """An output already in memory."""

    def __init__(self, array: np.ndarray) -> None:
        import numpy as np

        self.array = np.asarray(array)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def blocks(self, elements: int) -> Iterator[np.ndarray]:
        flat = self.array.reshape(-1)  # a view when C-contiguous, else one copy
        for start in range(0, flat.size, elements):
            yield flat[start : start + elements]

    def load(self) -> np.ndarray:
        return self.array

    def sample(self, index: int) -> np.ndarray:
        import numpy as np

        _check_sample(self.shape, index)
        return np.asarray(self.array[index])


class NpzMember:
    """One array inside an `.npz` archive, read in blocks without loading it whole."""

    def __init__(self, path: Path, member: str) -> None:
        import numpy as np

        self.path = Path(path)
        self.member = member
        with self._reading(), zipfile.ZipFile(self.path) as zf, zf.open(member) as f:
            shape, fortran, dtype = _header(f, f"{self.path}: {member}")
        if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
            raise HostileOutputError(
                f"{self.path}: array {member.removesuffix('.npy')!r} has dtype {dtype}; refused "
                f"(only plain numeric arrays are accepted from an environment)"
            )
        self._shape = shape
        self._dtype = dtype
        self._fortran = fortran
        self._size = int(np.prod(shape, dtype=np.int64))

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype.newbyteorder("=")

    def blocks(self, elements: int) -> Iterator[np.ndarray]:
        if sum(d > 1 for d in self._shape) > 1 and self._fortran:
            # On disk the first axis varies fastest: C order is made in bounded passes.
            segments = _c_order(self._raw, self._shape, max(1, SEGMENT_BYTES // self._item))
        else:  # on-disk order is C order
            segments = self._raw(elements)
        for block in _rechunk(segments, elements):
            yield block if self._dtype.isnative else block.astype(self.dtype)

    @property
    def _item(self) -> int:
        return max(1, self._dtype.itemsize)

    def _raw(self, elements: int = 0) -> Iterator[np.ndarray]:
        """The member's elements in on-disk order, in chunks of `elements` (default: about
        `READ_BYTES`; rounded to whole columns of a Fortran-ordered array where they fit);
        `HostileOutputError` for a member shorter than its header says, or unreadable."""
        import numpy as np

        item = self._item
        if not elements:
            elements = max(1, READ_BYTES // item)
            column = self._shape[0] if self._shape else 1
            if 0 < column <= elements:
                elements -= elements % column
        with self._reading(), zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
            _header(f, self.member)
            remaining = self._size
            while remaining:
                n = min(elements, remaining)
                data = f.read(n * item)
                if len(data) != n * item:
                    raise HostileOutputError(
                        f"{self.path}: {self.member} is truncated: its header declares "
                        f"{self._size} elements of shape {self._shape}, it holds fewer"
                    )
                yield np.frombuffer(data, dtype=self._dtype)
                remaining -= n

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Failures to read the archive as `HostileOutputError`, naming it and the member
        (a CRC mismatch, a corrupt deflate stream, a file cut short or gone)."""
        try:
            yield
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
            raise HostileOutputError(
                f"{self.path}: {self.member} is unreadable ({type(e).__name__}: {e})"
            ) from None

    def load(self) -> np.ndarray:
        import numpy as np

        with self._reading(), zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
            array = np.lib.format.read_array(f, allow_pickle=False)
        return array.astype(self.dtype, copy=False)

    def sample(self, index: int) -> np.ndarray:
        import numpy as np

        _check_sample(self._shape, index)
        per = self._shape[1:]
        count = int(np.prod(per, dtype=np.int64))
        item = self._dtype.itemsize
        if self._fortran:
            return self._fortran_sample(index, per, count)
        with self._reading(), zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
            _header(f, self.member)
            # Forward over the samples before it: a deflated entry is decompressed in
            # bounded chunks, a stored one skipped.
            f.seek(index * count * item, 1)
            data = f.read(count * item)
        if len(data) != count * item:
            raise HostileOutputError(f"{self.path}: {self.member} is truncated")
        return np.frombuffer(data, dtype=self._dtype).astype(self.dtype).reshape(per)

    def _fortran_sample(self, index: int, per: tuple[int, ...], count: int) -> np.ndarray:
        """A sample of a Fortran-ordered array, where the sample axis varies fastest: every
        `samples`-th element from `index`, read in bounded chunks of whole strides."""
        import numpy as np

        samples, item = self._shape[0], self._dtype.itemsize
        if not count:
            return np.empty(per, dtype=self.dtype)
        strides = max(1, (1 << 20) // samples)  # about 1 Mi elements a read
        parts = []
        with self._reading(), zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
            _header(f, self.member)
            remaining = count
            while remaining:
                n = min(strides, remaining)
                data = f.read(n * samples * item)
                if len(data) != n * samples * item:
                    raise HostileOutputError(f"{self.path}: {self.member} is truncated")
                chunk = np.frombuffer(data, dtype=self._dtype).reshape(n, samples)
                parts.append(chunk[:, index].astype(self.dtype))
                remaining -= n
        return np.concatenate(parts).reshape(per, order="F").copy()


def _c_order(
    stream: Callable[[], Iterator[np.ndarray]], shape: tuple[int, ...], budget: int
) -> Iterator[np.ndarray]:
    """The elements of an array of `shape` in C order, as consecutive 1-D segments, given
    `stream()`, which yields its elements in Fortran order (the first axis fastest) afresh
    on each call. Memory stays bounded by about two `budget`s of elements, whatever the
    shape: each pass over the stream picks the elements of the next few indices of the
    first axis (as many as `budget` holds) and transposes them; where one index holds more
    than `budget`, its elements (a Fortran-ordered array of `shape[1:]`) are ordered the
    same way, one index at a time. The stream is read once, its bands written to a
    temporary file (`_spool`) and read back one at a time; where that file cannot be
    written, the stream is read once per band instead."""
    import numpy as np

    n0, rest = shape[0], shape[1:]
    per = math.prod(rest)
    if sum(d > 1 for d in shape) <= 1:  # one axis only: the two orders agree
        yield from stream()
        return
    if n0 == 1:  # the rest, in Fortran order
        yield from _c_order(stream, rest, budget)
        return
    if per > budget:  # one index at a time, each a Fortran-ordered array of the rest
        bands = [(index, index + 1) for index in range(n0)]
    else:
        rows = max(1, budget // per)
        bands = [(r0, min(n0, r0 + rows)) for r0 in range(0, n0, rows)]
    group = max(1, (READ_BYTES // 8) // per)  # rows per segment yielded
    with contextlib.ExitStack() as stack:
        spool = _spool(stream, n0, per, bands, stack) if len(bands) > 1 else None
        for r0, r1 in bands:
            size = per * (r1 - r0)
            if spool is not None:
                pieces = functools.partial(_spooled, *spool, r0 * per, size)
            else:
                pieces = functools.partial(_picked, stream, n0, r0, r1)
            if per > budget:
                yield from _c_order(pieces, rest, budget)
                continue
            picked = _gathered(pieces(), size)
            # picked is (rest in Fortran order, row): reversing the axes gives (row, rest...)
            view = picked.reshape((*rest[::-1], r1 - r0)).T
            for g in range(0, r1 - r0, group):
                yield np.ascontiguousarray(view[g : g + group]).reshape(-1)
            del view, picked  # before the next band is read


def _gathered(pieces: Iterator[np.ndarray], size: int) -> np.ndarray:
    """The `size` elements `pieces` yield, in one array."""
    import numpy as np

    gathered: np.ndarray | None = None
    filled = 0
    for piece in pieces:
        if gathered is None:
            gathered = np.empty(size, dtype=piece.dtype)
        gathered[filled : filled + piece.size] = piece
        filled += piece.size
    assert gathered is not None and filled == size
    return gathered


def _spool(
    stream: Callable[[], Iterator[np.ndarray]],
    n0: int,
    per: int,
    bands: list[tuple[int, int]],
    stack: contextlib.ExitStack,
) -> tuple[int, np.dtype] | None:
    """One pass over a Fortran-order stream that writes each band of first-axis indices
    (as `_picked` gives it) to its own region of a temporary file, which `stack` closes:
    band [r0, r1) at element `r0 * per`. The file and the elements' dtype, or None when
    the file cannot be written (a full disk): then each band is a pass over the stream.
    Reading a large member once, not once per band, keeps a multi-gigabyte
    Fortran-ordered output quick; the file is in the page cache, not in memory."""

    try:
        spool = stack.enter_context(tempfile.TemporaryFile(prefix="parity-fortran-"))  # noqa: SIM115
        fd = spool.fileno()
        dtype: np.dtype | None = None
        written = [r0 * per for r0, _ in bands]  # where each band's next element goes
        position = 0
        for chunk in stream():
            dtype = chunk.dtype
            for band, (r0, r1) in enumerate(bands):
                for piece in _pick(chunk, position, n0, r0, r1):
                    _pwrite(fd, piece, written[band] * dtype.itemsize)
                    written[band] += piece.size
            position = (position + chunk.size) % n0
    except OSError:
        return None
    assert dtype is not None
    return fd, dtype


def _spooled(fd: int, dtype: np.dtype, start: int, size: int) -> Iterator[np.ndarray]:
    """Elements [start, start + size) of a spool file, in chunks of about `READ_BYTES`."""
    import numpy as np

    item = dtype.itemsize
    step = max(1, READ_BYTES // item)
    for at in range(start, start + size, step):
        n = min(step, start + size - at)
        data = os.pread(fd, n * item, at * item)
        if len(data) != n * item:
            raise OSError(f"a temporary file gave {len(data)} of {n * item} bytes")
        yield np.frombuffer(data, dtype=dtype)


def _pwrite(fd: int, piece: np.ndarray, offset: int) -> None:
    import numpy as np

    view = np.ascontiguousarray(piece).data.cast("B")
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _picked(
    stream: Callable[[], Iterator[np.ndarray]], n0: int, r0: int, r1: int
) -> Iterator[np.ndarray]:
    """From a Fortran-order stream whose first axis has `n0` indices, the elements whose
    first index is in [r0, r1), in stream order (a Fortran-order array of the rest)."""
    position = 0  # the first index of the next element
    for chunk in stream():
        yield from _pick(chunk, position, n0, r0, r1)
        position = (position + chunk.size) % n0


def _pick(chunk: np.ndarray, position: int, n0: int, r0: int, r1: int) -> Iterator[np.ndarray]:
    """The elements of `chunk`, part of a Fortran-order stream whose first axis has `n0`
    indices and whose first element has first index `position`, whose first index is in
    [r0, r1), in order."""
    c, done = chunk.size, 0
    if position:  # the end of a column begun in an earlier chunk
        take = min(n0 - position, c)
        lo, hi = max(r0, position), min(r1, position + take)
        if lo < hi:
            yield chunk[lo - position : hi - position]
        done = take
    whole = (c - done) // n0
    if whole:
        yield chunk[done : done + whole * n0].reshape(whole, n0)[:, r0:r1].reshape(-1)
        done += whole * n0
    if done < c:  # the start of a column that goes on in the next chunk
        lo, hi = r0, min(r1, c - done)
        if lo < hi:
            yield chunk[done + lo : done + hi]


def _rechunk(segments: Iterator[np.ndarray], elements: int) -> Iterator[np.ndarray]:
    """`segments` as consecutive 1-D blocks of exactly `elements` (the last may be shorter)."""
    import numpy as np

    pending: list[np.ndarray] = []
    have = 0
    for segment in segments:
        while segment.size:
            take = segment[: elements - have]
            segment = segment[take.size :]
            if not pending and take.size == elements:
                yield take
                continue
            pending.append(take)
            have += take.size
            if have == elements:
                yield np.concatenate(pending)
                pending, have = [], 0
    if pending:
        yield np.concatenate(pending)


def _check_sample(shape: tuple[int, ...], index: int) -> None:
    if not shape or not 0 <= index < shape[0]:
        raise IndexError(f"sample {index} is not in an array of shape {shape}")


def _header(f: object, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    import numpy as np

    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)  # type: ignore[arg-type]
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=MAX_HEADER)  # type: ignore[arg-type]
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=MAX_HEADER)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, SyntaxError) as e:
        raise HostileOutputError(f"{where}: not a readable .npy array ({e})") from None
    return tuple(int(d) for d in shape), bool(fortran), np.dtype(dtype)


def content_digest(name: str, array: OutputArray) -> str:
    """`sha256:<hex>` of one output: its name, dtype, shape and elements in C order (framed
    as `parity.inputs.seeded.digest` frames each array), read block by block, so memory
    stays bounded whatever the output's size. It digests what the array holds, not how a
    file stores it: an `.npz`'s zip timestamps and compression, a member's Fortran order
    or byte order (elements are taken in native byte order) give the same digest."""
    import hashlib

    import numpy as np

    native = np.dtype(array.dtype).newbyteorder("=")
    h = hashlib.sha256(f"{name}|{native.str}|{tuple(array.shape)}|".encode())
    for block in array.blocks(max(1, DIGEST_BYTES // max(1, native.itemsize))):
        h.update(np.ascontiguousarray(block, dtype=native).tobytes())
    return "sha256:" + h.hexdigest()


def read_ahead(
    ref: OutputArray, cand: OutputArray, elements: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The two outputs' blocks of `elements`, side by side, as `zip(..., strict=True)`
    gives them; where one is read from an archive, each pair is read (and its member's
    CRC checked) by a thread of its own while the caller works on the pair before, at
    most one pair ahead. A failure to read comes out where its pair would have."""
    import queue
    import threading

    if isinstance(ref, MemoryArray) and isinstance(cand, MemoryArray):
        yield from zip(ref.blocks(elements), cand.blocks(elements), strict=True)
        return
    sources = (ref.blocks(elements), cand.blocks(elements))
    ready: queue.Queue[tuple[tuple[np.ndarray, np.ndarray] | None, BaseException | None]]
    ready = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand(item: tuple[tuple[np.ndarray, np.ndarray] | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for pair in zip(*sources, strict=True):
                if not hand((pair, None)):
                    return
            hand((None, None))
        except BaseException as e:  # handed over, raised in the caller's thread
            hand((None, e))
        finally:
            for source in sources:  # their archives closed here, where they were read
                with contextlib.suppress(Exception):
                    source.close()  # type: ignore[attr-defined]

    reader = threading.Thread(target=read, name="parity-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            pair, error = ready.get()
            if error is not None:
                raise error
            if pair is None:
                return
            yield pair
    finally:
        stop.set()
        reader.join(timeout=10)


def as_output_array(value: np.ndarray | OutputArray) -> OutputArray:
    """`value` as an `OutputArray` (arrays in memory are wrapped)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return MemoryArray(value)
    return value
