"""Load what a worker wrote, trusting none of it: no pickle, bounded sizes, plain dtypes."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

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
    return {info.filename.removesuffix(".npy"): NpzMember(path, info.filename) for info in infos}


def load_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object written by a worker, size-bounded; raise `HostileOutputError` otherwise."""
    if not path.is_file() or path.is_symlink():
        raise HostileOutputError(f"{path}: not a regular file")
    if path.stat().st_size > max_bytes:
        raise HostileOutputError(f"{path}: larger than {max_bytes} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HostileOutputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise HostileOutputError(f"{path}: expected a JSON object")
    return data
