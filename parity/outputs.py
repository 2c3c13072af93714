"""Load what a worker wrote, trusting none of it: no pickle, bounded sizes, plain dtypes."""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envlock.probe import TORCH_SETTINGS
from parity.arrays import NpzMember
from parity.errors import HostileOutputError

MAX_OUTPUT_BYTES = 8 << 30  # uncompressed total of one outputs.npz
MAX_JSON_BYTES = 64 << 20
MAX_ARRAYS = 1024
_MEMBER = re.compile(r"^[A-Za-z0-9_.\-]{1,200}\.npy$")


def load_outputs(path: Path, max_bytes: int = MAX_OUTPUT_BYTES) -> dict[str, NpzMember]:
    """The arrays in a worker's `outputs.npz`, opened for reading in blocks (nothing is
    loaded yet); raise `HostileOutputError` on anything but plain numeric arrays."""
    if not path.is_file() or path.is_symlink():
        raise HostileOutputError(f"{path}: not a regular file")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ARRAYS:
                raise HostileOutputError(f"{path}: {len(infos)} arrays (at most {MAX_ARRAYS})")
            total = sum(i.file_size for i in infos)
            if total > max_bytes:
                raise HostileOutputError(
                    f"{path}: {total} bytes uncompressed, more than the limit of {max_bytes}"
                )
            for info in infos:
                if not _MEMBER.match(info.filename):
                    raise HostileOutputError(f"{path}: unexpected member {info.filename!r}")
    except zipfile.BadZipFile as e:
        raise HostileOutputError(f"{path}: not an .npz archive ({e})") from None
    # Each member's header is parsed without unpickling; object arrays are refused there.
    arrays = {}
    for info in infos:
        name = info.filename.removesuffix(".npy")
        member = NpzMember(path, info.filename)
        declared = math.prod(member.shape) * member.dtype.itemsize
        if declared > info.file_size:
            # Its reader would make room for what the header says before reading any data.
            raise HostileOutputError(
                f"{path}: array {name!r} declares {declared} bytes (shape {list(member.shape)}) "
                f"in a member of {info.file_size}"
            )
        arrays[name] = member
    return arrays


def load_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object written by a worker, bounded in size and in depth (`MAX_JSON_DEPTH`);
    raise `HostileOutputError` naming the file otherwise."""
    if not path.is_file() or path.is_symlink():
        raise HostileOutputError(f"{path}: not a regular file")
    with path.open("rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise HostileOutputError(f"{path}: larger than {max_bytes} bytes")
    return parse_json(raw, str(path))


def parse_json(raw: bytes, where: str) -> dict[str, Any]:
    """The JSON object in `raw` (read from `where`, named in errors), nested at most
    `MAX_JSON_DEPTH` deep; raise `HostileOutputError` otherwise."""
    too_deep = HostileOutputError(f"{where}: nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HostileOutputError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:  # the parser's own limit (about 1,000 levels): no crash
        raise too_deep from None
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise too_deep
    if not isinstance(data, dict):
        raise HostileOutputError(f"{where}: expected a JSON object")
    return data


MAX_JSON_DEPTH = 64  # what a worker writes is 4 deep; recursive readers stay far from limits
_KEEP = b'"[]{}'
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_STRING = re.compile(rb'"[^"]*"')
_DEPTH_CHUNK = 1 << 22  # brackets per step (32 MiB of running depths)


def json_depth(raw: bytes) -> int:
    """How deep the arrays and objects of the valid JSON text `raw` nest, from its brackets
    outside strings: escapes removed, then all but quotes and brackets, then strings, each a
    pass in C; the running depth is summed in bounded chunks."""
    import numpy as np

    # Escapes left to right, as a parser reads them: `\\` first, then `\"`.
    bare = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP)
    brackets = _STRING.sub(b"", bare)
    depth = deepest = 0
    for start in range(0, len(brackets), _DEPTH_CHUNK):
        chunk = np.frombuffer(brackets, np.uint8, min(_DEPTH_CHUNK, len(brackets) - start), start)
        steps = np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1)
        running = np.cumsum(steps, dtype=np.int64) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


# The shapes of what a worker writes ----------------------------------------------------
#
# A shape is a set of JSON kinds (a leaf: "string", "integer", "number", "boolean",
# "null"), `ListOf(shape)`, `MapOf(shape)` (an object of any keys), `Fields(...)` (an
# object whose named keys, where present, have their shapes; other keys are kept and never
# read) or `Maybe(shape)` (that, or null). `shape_problem` says where a value first departs
# from its shape (docs/ARCHITECTURE.md, "What a worker writes").


@dataclass(frozen=True)
class ListOf:
    item: Shape


@dataclass(frozen=True)
class MapOf:
    value: Shape


@dataclass(frozen=True)
class Fields:
    fields: dict[str, Shape]
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class Maybe:
    shape: Shape


Shape = frozenset[str] | ListOf | MapOf | Fields | Maybe

TEXT = frozenset({"string"})
MAYBE_TEXT = frozenset({"string", "null"})
COUNT = frozenset({"integer"})
NUMBER = frozenset({"number"})  # an integer too
SCALAR = frozenset({"string", "integer", "number", "boolean", "null"})  # shown as text

CPU = Fields(
    {
        "count": frozenset({"integer", "null"}),
        "model": MAYBE_TEXT,
        "model_name": TEXT,
        "flags": ListOf(TEXT),
    }
)
NUMPY = Fields(
    {
        "version": TEXT,
        "blas": MapOf(SCALAR),
        "lapack": MapOf(SCALAR),
        "simd_found": Maybe(ListOf(TEXT)),
    }
)
TORCH = Fields(
    {
        "version": TEXT,
        **dict.fromkeys((*TORCH_SETTINGS, "error"), SCALAR),
        "devices": ListOf(Fields({"name": SCALAR, "capability": ListOf(SCALAR)})),
    }
)
# `envlock.probe.collect()`, every part parity reads: the versions and settings it judges
# and the summary it reports.
FINGERPRINT = Fields(
    {
        "schema": COUNT,
        "python": Fields(
            {
                "version": TEXT,
                "implementation": TEXT,
                "compiler": TEXT,
                "build": ListOf(SCALAR),
                "executable": TEXT,
                "prefix": TEXT,
            }
        ),
        "platform": Fields({"system": TEXT, "release": TEXT, "machine": TEXT, "libc": MAYBE_TEXT}),
        "markers": MapOf(TEXT),
        "cpu": CPU,
        "distributions": ListOf(
            Fields(
                {
                    "name": TEXT,
                    "version": MAYBE_TEXT,
                    "installer": MAYBE_TEXT,
                    "files_sha256": MAYBE_TEXT,
                    "requires": ListOf(TEXT),
                },
                required=("name",),
            )
        ),
        "env": MapOf(TEXT),
        "env_withheld": COUNT,
        "conda": ListOf(MapOf(SCALAR)),
        "numpy": NUMPY,
        "threadpools": ListOf(MapOf(SCALAR)),
        "torch": TORCH,
        # an endpoint known by its lock alone (`parity.runs.replay.lock_fingerprint`)
        "from_lock": Fields({"path": TEXT, "group": TEXT, "requires_python": MAYBE_TEXT}),
    }
)
# What a failing worker writes (`error.json`, `error-<n>.json`).
ERROR = Fields(
    {"stage": TEXT, "type": TEXT, "message": TEXT, "traceback": TEXT},
    required=("stage", "type", "message"),
)


def shape_problem(value: Any, shape: Shape, where: str = "") -> str | None:
    """Where `value` first departs from `shape` (e.g. "cpu.flags[2] must be a string, not
    an integer"), or None. Iterative: no depth of input reaches Python's recursion limit."""
    todo: list[tuple[Any, Shape, str]] = [(value, shape, where)]
    while todo:
        item, expected, at = todo.pop()
        if isinstance(expected, Maybe):
            if item is not None:
                todo.append((item, expected.shape, at))
            continue
        kind = json_kind(item)
        if isinstance(expected, frozenset):
            if kind not in expected and not (kind == "integer" and "number" in expected):
                wanted = " or ".join(_A[k] for k in sorted(expected))
                return f"{at or 'the file'} must be {wanted}, not {_A[kind]}"
        elif isinstance(expected, ListOf):
            if kind != "list":
                return f"{at or 'the file'} must be a list, not {_A[kind]}"
            todo.extend(
                (x, expected.item, f"{at}[{i}]") for i, x in reversed(list(enumerate(item)))
            )
        else:
            if kind != "object":
                return f"{at or 'the file'} must be an object, not {_A[kind]}"
            dot = f"{at}." if at else ""
            if isinstance(expected, MapOf):
                todo.extend((v, expected.value, f"{dot}{k}") for k, v in reversed(item.items()))
                continue
            for key in expected.required:
                if key not in item:
                    return f"{dot}{key} is missing"
            todo.extend(
                (item[k], s, f"{dot}{k}") for k, s in reversed(expected.fields.items()) if k in item
            )
    return None


def json_kind(value: Any) -> str:
    """The JSON kind of a value `json.loads` gave."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


_A = {
    "null": "null",
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "list": "a list",
    "object": "an object",
}


def check_json(path: Path, data: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """`data` (read from `path`), when it has `shape`; else `HostileOutputError` naming the
    file and the field."""
    problem = shape_problem(data, shape)
    if problem is not None:
        raise HostileOutputError(f"{path}: {problem}")
    return data


def load_fingerprint(path: Path) -> dict[str, Any]:
    """A fingerprint a worker wrote (`envlock.probe`), every part parity reads type-checked:
    a wrong type refuses the file (`HostileOutputError` naming the field), since a field
    dropped could make two environments look alike."""
    return check_json(path, load_json(path), FINGERPRINT)


def worker_seconds(path: Path) -> dict[str, float]:
    """The timings in a worker's `result.json`: each finite, non-negative number of
    `seconds`; anything else there is dropped (timings decide nothing)."""
    seconds = load_json(path).get("seconds")
    if not isinstance(seconds, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in seconds.items()
        if json_kind(v) in ("integer", "number") and _finite(v) and v >= 0
    }


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False
