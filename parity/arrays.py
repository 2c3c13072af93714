"""Outputs as streams of blocks, so a comparison never holds a whole large output.

An `OutputArray` knows its shape and dtype and yields its elements in C order, a block
at a time. `MemoryArray` wraps an array already in memory; `NpzMember` reads one array
of a worker's `.npz` archive straight from the zip entry (stored or deflated), so two
2 GB outputs are compared with a few blocks in memory at once. Nothing is unpickled:
the member's header is parsed by numpy's format reader and object dtypes are refused.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from parity.errors import HostileOutputError

if TYPE_CHECKING:
    import numpy as np

MAX_HEADER = 10_000  # numpy's own default bound on an .npy header


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
        with zipfile.ZipFile(self.path) as zf, zf.open(member) as f:
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
        import numpy as np

        if self._fortran:
            # On-disk order is not C order: bounded by the archive's size limit instead.
            flat = self.load().reshape(-1)
            for start in range(0, flat.size, elements):
                yield flat[start : start + elements]
            return
        item = self._dtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
            _header(f, self.member)
            remaining = self._size
            while remaining:
                n = min(elements, remaining)
                data = f.read(n * item)
                if len(data) != n * item:
                    raise HostileOutputError(f"{self.path}: {self.member} is truncated")
                block = np.frombuffer(data, dtype=self._dtype)
                yield block if self._dtype.isnative else block.astype(self.dtype)
                remaining -= n

    def load(self) -> np.ndarray:
        import numpy as np

        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
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
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
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
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
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


def as_output_array(value: np.ndarray | OutputArray) -> OutputArray:
    """`value` as an `OutputArray` (arrays in memory are wrapped)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return MemoryArray(value)
    return value
