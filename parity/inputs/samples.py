"""Input sets from a folder of real samples: one `.npz` file per sample, in name order.

Each file holds the named input arrays of one sample (`np.savez("0001.npz", lr=img)`);
every file must hold the same names with the same shapes and dtypes. The host stacks
them into the same `(count, *shape)` arrays a seeded input set gives, so workers and the
input digest (`parity.inputs.seeded.digest`) cannot tell the two kinds apart. Files are opened
with `allow_pickle=False` after their sizes are checked; dotfiles are skipped.

When the folder is tracked by DVC (`dvc add samples` writes `samples.dvc` beside it),
`dvc_tracking` reads its content hash and asks DVC whether the folder still matches it.
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parity.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

SUFFIX = ".npz"
MAX_SAMPLES = 100_000
MAX_SAMPLE_BYTES = 1 << 30  # uncompressed, one sample file
MAX_INPUT_BYTES = 8 << 30  # uncompressed, the whole folder
MAX_ARRAYS = 64  # named arrays in one sample
MAX_DVC_FILE_BYTES = 1 << 20
_NAME = re.compile(r"^[A-Za-z_][\w-]*$")


@dataclass(frozen=True)
class SampleFolder:
    """An input set read from a folder: one `.npz` file per sample, sorted by name."""

    config: Path  # the config that names it, for error messages
    folder: Path  # resolved
    shown: str  # as the config writes it
    files: tuple[Path, ...]
    batch_size: int = 64

    @property
    def count(self) -> int:
        """How many samples the folder holds."""
        return len(self.files)

    @property
    def label(self) -> str:
        """The input set in a few words, for progress lines."""
        return f"{self.count} samples from {self.shown}"

    def describe(self) -> dict[str, Any]:
        """The input set as plain data, for reports (the digest is added by the caller)."""
        return {"folder": self.shown, "count": self.count, "batch_size": self.batch_size}

    def fail(self, message: str) -> ConfigError:
        return ConfigError(self.config, "inputs.folder", message)


def sample_folder(config: Path, base: Path, shown: str, batch_size: int) -> SampleFolder:
    """The sample folder `shown` (relative to `base`) with its files listed; raise
    `ConfigError` on `inputs.folder` when it is missing, empty, or holds anything else."""
    folder = (base / shown).resolve()

    def fail(message: str) -> ConfigError:
        return ConfigError(config, "inputs.folder", message)

    if not folder.is_dir():
        raise fail(f"folder not found: {shown}")
    files = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.suffix != SUFFIX or not entry.is_file():
            raise fail(
                f"{shown}/{entry.name} is not a {SUFFIX} file (the folder holds one "
                f"{SUFFIX} file per sample)"
            )
        files.append(entry)
        if len(files) > MAX_SAMPLES:
            raise fail(f"more than {MAX_SAMPLES} samples in {shown}")
    if not files:
        raise fail(f"no {SUFFIX} samples in {shown}")
    return SampleFolder(config, folder, shown, tuple(files), batch_size)


def load_samples(spec: SampleFolder) -> dict[str, np.ndarray]:
    """The whole input set: for each array name, the samples stacked into (count, *shape).

    Raise `ConfigError` on `inputs.folder` naming the file at fault: unreadable, too
    large, not plain numbers, or not shaped like the first sample."""
    import numpy as np

    first: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] | None = None
    stacked: dict[str, list[np.ndarray]] = {}
    total = 0
    for path in spec.files:
        where = f"{spec.shown}/{path.name}"
        total += _checked_size(spec, path, where)
        if total > MAX_INPUT_BYTES:
            raise spec.fail(f"more than {MAX_INPUT_BYTES} bytes of samples in {spec.shown}")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise spec.fail(f"{where}: not a readable .npz file ({e})") from None
        for name, a in arrays.items():
            if not _NAME.match(name):
                raise spec.fail(f"{where}: array name {name!r} is not an identifier")
            if a.dtype.kind not in "biuf":
                raise spec.fail(f"{where}: array {name!r} has dtype {a.dtype}, not plain numbers")
        shapes = {name: (a.shape, a.dtype) for name, a in arrays.items()}
        if first is None:
            if not arrays:
                raise spec.fail(f"{where}: holds no arrays")
            first = shapes
            stacked = {name: [] for name in sorted(arrays)}
        elif shapes != first:
            raise spec.fail(f"{where}: {_mismatch(first, shapes)} (every sample must match)")
        for name, a in arrays.items():
            stacked[name].append(a)
    return {name: np.stack(values) for name, values in stacked.items()}


def _checked_size(spec: SampleFolder, path: Path, where: str) -> int:
    """The uncompressed size of one sample file, checked before anything is loaded: at most
    `MAX_ARRAYS` arrays and `MAX_SAMPLE_BYTES`, each member an `.npy` array whose header
    declares no more data than the member holds (numpy makes room for what a header
    declares before it reads)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ARRAYS:
                raise spec.fail(f"{where}: {len(infos)} arrays (at most {MAX_ARRAYS})")
            size = sum(i.file_size for i in infos)
            if size > MAX_SAMPLE_BYTES:
                raise spec.fail(f"{where}: {size} bytes uncompressed, more than {MAX_SAMPLE_BYTES}")
            for info in infos:
                _check_member(spec, zf, info, where)
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise spec.fail(f"{where}: not a readable .npz file ({e})") from None
    return size


def _check_member(
    spec: SampleFolder, zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str
) -> None:
    import numpy as np

    name = info.filename
    if not name.endswith(".npy"):
        raise spec.fail(f"{where}: member {name!r:.100} is not an .npy array")
    fmt = np.lib.format
    try:
        with zf.open(info) as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f, max_header_size=_MAX_HEADER)
    except (ValueError, SyntaxError) as e:
        raise spec.fail(
            f"{where}: array {name[:-4]!r:.100} is not a readable .npy array ({e})"
        ) from None
    declared = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    if declared > info.file_size:
        raise spec.fail(
            f"{where}: array {name[:-4]!r:.100} declares {declared} bytes (shape "
            f"{list(shape)}) in a member of {info.file_size}"
        )


_MAX_HEADER = 10_000  # numpy's own default bound on an .npy header


def _mismatch(
    first: dict[str, tuple[tuple[int, ...], Any]], found: dict[str, tuple[tuple[int, ...], Any]]
) -> str:
    if set(first) != set(found):
        return f"holds arrays {sorted(found)}, the first sample {sorted(first)}"
    for name in sorted(first):
        if first[name] != found[name]:
            (shape, dtype), (shape0, dtype0) = found[name], first[name]
            return (
                f"array {name!r} is {dtype} {list(shape)}, the first sample's "
                f"{dtype0} {list(shape0)}"
            )
    return "differs from the first sample"


@dataclass(frozen=True)
class DvcTracking:
    """What DVC knows of a sample folder: the content hash `dvc add` recorded, and whether
    the folder still matches it (None when DVC could not be asked)."""

    dvc_file: Path
    md5: str
    path: str
    modified: bool | None

    def describe(self) -> dict[str, Any]:
        """As plain data, for reports."""
        data: dict[str, Any] = {"md5": self.md5, "path": self.path, "file": self.dvc_file.name}
        if self.modified is not None:
            data["modified"] = self.modified
        return data


def dvc_tracking(spec: SampleFolder) -> DvcTracking | None:
    """The DVC tracking of the sample folder, from the `<folder>.dvc` file beside it (None
    when there is none); raise `ConfigError` when that file is not a DVC file for it."""
    import yaml

    dvc_file = spec.folder.parent / f"{spec.folder.name}.dvc"
    if not dvc_file.is_file():
        return None
    shown = f"{spec.shown.rstrip('/')}.dvc"
    if dvc_file.stat().st_size > MAX_DVC_FILE_BYTES:
        raise spec.fail(f"{shown}: larger than {MAX_DVC_FILE_BYTES} bytes")
    try:
        data = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise spec.fail(f"{shown}: not a readable DVC file ({e})") from None
    outs = data.get("outs") if isinstance(data, dict) else None
    out = next(
        (
            o
            for o in outs or []
            if isinstance(o, dict) and str(o.get("path", "")).rstrip("/") == spec.folder.name
        ),
        None,
    )
    md5 = out.get("md5") if out else None
    if not isinstance(md5, str) or not md5.endswith(".dir"):
        raise spec.fail(
            f"{shown}: no 'outs' entry with path {spec.folder.name!r} and a directory md5"
        )
    assert out is not None
    return DvcTracking(dvc_file, md5, str(out["path"]), _modified(dvc_file))


def _modified(dvc_file: Path) -> bool | None:
    """Whether DVC finds the folder changed since `dvc add` (its own status check, which
    reuses its cache of file hashes); None without DVC or outside a DVC repository.

    A folder DVC cannot compare (`not in cache`: the directory listing is not in the
    local cache, e.g. a clone whose cache was never pulled) gives None, not False."""
    try:
        from dvc.exceptions import DvcException  # type: ignore[import-untyped]
        from dvc.repo import Repo  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        root = Repo.find_root(str(dvc_file.parent))
        with Repo(root) as repo:
            status = repo.status(targets=[str(dvc_file)])
    except (DvcException, OSError):
        return None
    changes = [
        state
        for entries in status.values()
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict)
        for state in (entry.get("changed outs") or {}).values()
    ]
    if any(state in ("modified", "deleted", "new") for state in changes):
        return True
    return None if changes else False
