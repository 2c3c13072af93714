"""Golden bundles: what one environment answered, recorded so a later check needs only it.

`record_bundle` replays the input set in one environment (the training one, typically,
before it is gone) and writes a folder:

    bundle.json       schema_version, when, the environment (backend, lock, digest, group,
                      summary), what its lock pins for its group and the group that
                      installs each package (`lock`, so a later check explains group-only
                      packages as a live one does), the adapter, the input spec and its
                      content digest, the tolerance policies
    fingerprint.json  the environment's fingerprint, as its worker wrote it
    outputs.npz       the worker's outputs, as it wrote them
    manifest.json     every other file's relative path -> {sha256, size}

`load_bundle` reads a folder or a `.tar.gz`/`.tgz`/`.zip` archive of one and trusts none
of it: archives are extracted by hand (no absolute paths, no `..`, no links or devices,
bounded size and member count), every file must match the manifest, nothing may sit
beside it, and outputs are opened without unpickling. `check_against` (in
`parity.check`) compares an environment with a loaded bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import IO, Any

from envlock.environments import BACKENDS
from envlock.envvars import redactor, scrub
from envlock.progress import Progress, quiet
from parity.arrays import OutputArray
from parity.config import ParityConfig
from parity.errors import BundleError, ConfigError, HostileOutputError, ParityError
from parity.outputs import (
    CPU,
    FINGERPRINT,
    MAX_JSON_BYTES,
    MAX_OUTPUT_BYTES,
    NUMBER,
    NUMPY,
    TEXT,
    TORCH,
    Fields,
    MapOf,
    Shape,
    check_json,
    load_json,
    load_outputs,
    parse_json,
    shape_problem,
)
from parity.runs.replay import (
    VERSIONS_FROM,
    EnvironmentSummary,
    EnvRun,
    LockView,
    WorkFolder,
    describe_inputs,
    replay_environments,
    summary,
)

SCHEMA_VERSION = "1"
BUNDLE_FILE = "bundle.json"
MANIFEST_FILE = "manifest.json"
FINGERPRINT_FILE = "fingerprint.json"
OUTPUTS_FILE = "outputs.npz"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
ARCHIVE_NAMES = ".tar.gz, .tgz or .zip"
MAX_MEMBERS = 256  # a bundle holds four files; room for what later schemas add
MAX_BUNDLE_BYTES = MAX_OUTPUT_BYTES + 4 * MAX_JSON_BYTES
_CHUNK = 1 << 20


@dataclass
class Bundle:
    """A recorded, verified golden bundle: one environment's outputs on one input set.

    `root` is the folder its files are read from (for an archive, a temporary extraction
    that `close()` removes; use the bundle as a context manager)."""

    path: Path
    root: Path
    schema_version: str
    created: str
    config: str
    adapter: str
    environment: EnvironmentSummary
    inputs: dict[str, Any]
    tolerance: dict[str, Any]
    fingerprint: dict[str, Any]
    outputs: dict[str, OutputArray]
    manifest_digest: str
    extracted: Path | None = field(default=None, repr=False)
    # What the environment's lock pinned (None: it had no lock, or the bundle was recorded
    # by a parity that did not record it, which then explains a group-only package only
    # when the checked environment has the very same lock).
    lock: LockView | None = None

    @property
    def input_digest(self) -> str:
        """The content digest of the input set the outputs answer."""
        return str(self.inputs.get("digest", ""))

    def close(self) -> None:
        """Remove the temporary extraction of an archive (nothing for a folder)."""
        if self.extracted is not None:
            shutil.rmtree(self.extracted, ignore_errors=True)
            self.extracted = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def record_bundle(
    config: ParityConfig,
    env_name: str,
    out_dir: Path,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    archive: bool = False,
) -> Bundle:
    """Replay the input set in environment `env_name` and write a golden bundle at
    `out_dir`, atomically: a folder, or with `archive` one `.tar.gz`, `.tgz` or `.zip`
    file (the format by its name); the bundle, read back and verified (close it when done).

    Raise `BundleError` when `out_dir` holds something and `overwrite` is false, and the
    environment's failure (exit code 3) when it cannot run the model."""
    say = progress or quiet
    spec = _environment(config, env_name)
    out_dir = Path(out_dir)
    if archive:
        _check_archive_target(out_dir, overwrite)
    else:
        _check_target(out_dir, overwrite)
    with WorkFolder(None, say) as work:
        run = EnvRun(spec)
        digest, _ = replay_environments(config, [run], work.path, cache_dir, say, calibrate=False)
        if run.error:
            work.keep = True  # its log is the evidence, as for a check
            prefix = f"environment {env_name!r}"
            message = run.error if run.error.startswith(prefix) else f"{prefix}: {run.error}"
            raise ParityError(message)
        _refuse_secret_names(env_name, run.outputs)
        if archive:
            staging = work.path / "bundle"
            staging.mkdir()
        else:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
            staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        try:
            shutil.copyfile(work.path / env_name / FINGERPRINT_FILE, staging / FINGERPRINT_FILE)
            shutil.copyfile(work.path / env_name / OUTPUTS_FILE, staging / OUTPUTS_FILE)
            inputs = describe_inputs(config, digest, say)
            _write_json(staging / BUNDLE_FILE, _describe(config, run, inputs))
            _write_manifest(staging)
            if archive:
                _pack(staging, out_dir)
            else:
                _replace(staging, out_dir, overwrite)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    say(f"bundle written: {out_dir}")
    return load_bundle(out_dir)


def _refuse_secret_names(env_name: str, outputs: Iterable[str]) -> None:
    """Refuse to record an output named after the value of a secret-looking variable of
    ours: a bundle is made to be shared, and its outputs file keeps the names as they are."""
    secrets = redactor()
    for name in outputs:
        if secrets.redact(name) != name:
            raise ParityError(
                f"environment {env_name!r}: the output {secrets.redact(name)!r} is named after "
                "the value of a secret-looking environment variable; not recorded"
            )


def _check_archive_target(archive: Path, overwrite: bool) -> None:
    if not archive.name.endswith(ARCHIVE_SUFFIXES):
        raise BundleError(f"{archive}: an archive's name must end in {ARCHIVE_NAMES}")
    if archive.is_dir():
        raise BundleError(f"{archive} is a folder; an archive is one file")
    if archive.exists() and not overwrite:
        raise BundleError(f"{archive} exists; pass --overwrite to replace it")


def _pack(folder: Path, archive: Path) -> None:
    """Write the bundle folder as one archive (members at its root), atomically."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.name}.", dir=archive.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for name in names:
                    zf.write(folder / name, name)
        else:
            with tarfile.open(tmp, "w:gz") as tf:
                for name in names:
                    tf.add(folder / name, name, recursive=False)
        tmp.chmod(0o644)  # mkstemp makes it private; a bundle is meant to be shared
        tmp.replace(archive)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_bundle(path: Path, *, extract_to: Path | None = None) -> Bundle:
    """The golden bundle at `path` (a folder or an archive), verified against its manifest;
    raise `BundleError` (exit code 2) naming the file at fault otherwise.

    An archive is extracted into `extract_to` (an empty or new folder), else into a
    temporary folder the bundle's `close()` removes."""
    path = Path(path)
    if path.is_dir():
        return _read(path, path, None)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle (a folder or a {ARCHIVE_NAMES} archive)")
    if not path.name.endswith(ARCHIVE_SUFFIXES):
        raise BundleError(f"{path}: not a bundle folder or a {ARCHIVE_NAMES} archive")
    owned = extract_to is None
    target = Path(extract_to or tempfile.mkdtemp(prefix="parity-bundle-"))
    try:
        target.mkdir(parents=True, exist_ok=True)
        _extract(path, target)
        root = target
        if not (root / BUNDLE_FILE).exists():
            # An archive of the folder itself (`tar czf b.tgz bundle/`): one folder inside.
            entries = list(root.iterdir())
            if len(entries) == 1 and entries[0].is_dir():
                root = entries[0]
        return _read(path, root, target if owned else None)
    except BaseException:
        if owned:
            shutil.rmtree(target, ignore_errors=True)
        raise


def _environment(config: ParityConfig, name: str) -> Any:
    names = [e.name for e in config.environments]
    if name not in names:
        raise ConfigError(config.path, None, f"no environment {name!r} (have: {', '.join(names)})")
    return config.environment(name)


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise BundleError(f"{out_dir} is not empty; pass --overwrite to replace it")


def _replace(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished bundle into place; an old one goes only once the new one is there."""
    old = None
    if out_dir.exists():
        _check_target(out_dir, overwrite)
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
        out_dir.replace(old / "bundle")
    try:
        staging.replace(out_dir)
    except BaseException:
        if old is not None:
            (old / "bundle").replace(out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _describe(config: ParityConfig, run: EnvRun, inputs: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": str(config.path),
        "adapter": config.adapter,
        "environment": asdict(summary(run)),
        "lock": view.to_dict() if (view := run.lock_view()) else None,
        "inputs": inputs,
        "tolerance": {
            "default": config.tolerance.to_dict(),
            "outputs": {k: v.to_dict() for k, v in sorted(config.output_tolerances.items())},
        },
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # No value of a secret-looking variable of ours goes into a bundle (envlock.envvars).
    secrets = redactor()
    text = json.dumps(scrub(data, secrets), indent=2, sort_keys=False) + "\n"
    path.write_text(secrets.redact(text), encoding="utf-8")


def _write_manifest(folder: Path) -> None:
    entries = {}
    for name in sorted(p.name for p in folder.iterdir()):
        entries[name] = {"sha256": _sha256(folder / name), "size": (folder / name).stat().st_size}
    _write_json(folder / MANIFEST_FILE, {"files": entries})


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


# Reading -------------------------------------------------------------------------------


def _read(path: Path, root: Path, extracted: Path | None) -> Bundle:
    """Verify the bundle folder `root` (read from `path`) and open it."""
    meta = _json(path, root, BUNDLE_FILE)
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        if version is not None and not isinstance(version, str):
            raise BundleError(
                f"{path}: {BUNDLE_FILE}: schema_version must be a string such as "
                f"{SCHEMA_VERSION!r}, not {type(version).__name__} {version!r}"
            )
        if isinstance(version, str) and version.isdigit() and int(version) > int(SCHEMA_VERSION):
            raise BundleError(
                f"{path}: written by a newer parity (bundle schema_version {version}); this "
                f"parity reads schema_version {SCHEMA_VERSION}: upgrade parity to read it"
            )
        raise BundleError(
            f"{path}: {BUNDLE_FILE}: unknown schema_version {version!r} "
            f"(this parity reads {SCHEMA_VERSION!r})"
        )
    manifest = _manifest(path, root)
    manifest_digest = _sha256(root / MANIFEST_FILE)
    present = set(_files(path, root))
    extra = sorted(present - set(manifest) - {MANIFEST_FILE})
    if extra:
        raise BundleError(f"{path}: {extra[0]} is not in the bundle's manifest")
    for name, (digest, size) in sorted(manifest.items()):
        if name not in present:
            raise BundleError(f"{path}: {name} is in the manifest but missing from the bundle")
        found = _sha256(root / name)
        found_size = (root / name).stat().st_size
        if found != digest or found_size != size:
            sizes = f" ({size} bytes expected, {found_size} found)" if found_size != size else ""
            raise BundleError(
                f"{path}: {name} does not match the manifest: expected {digest}, "
                f"found {found}{sizes}"
            )
    for name in (BUNDLE_FILE, FINGERPRINT_FILE, OUTPUTS_FILE):
        if name not in manifest:
            raise BundleError(f"{path}: {name} is not in the bundle's manifest")
    fingerprint = _json(path, root, FINGERPRINT_FILE, FINGERPRINT)
    try:
        outputs: dict[str, OutputArray] = dict(load_outputs(root / OUTPUTS_FILE))
    except HostileOutputError as e:
        raise BundleError(f"{path}: {e}") from None
    return Bundle(
        path=path,
        root=root,
        schema_version=SCHEMA_VERSION,
        created=_field(path, meta, "created", str),
        config=_field(path, meta, "config", str),
        adapter=_field(path, meta, "adapter", str),
        environment=_summary(path, _field(path, meta, "environment", dict)),
        inputs=_inputs(path, _field(path, meta, "inputs", dict)),
        tolerance=_field(path, meta, "tolerance", dict),
        fingerprint=fingerprint,
        outputs=outputs,
        manifest_digest=manifest_digest,
        extracted=extracted,
        lock=_lock_view(path, meta.get("lock")),
    )


def _json(path: Path, root: Path, name: str, shape: Shape | None = None) -> dict[str, Any]:
    file = root / name
    if not file.exists():
        raise BundleError(f"{path}: no {name} (not a parity bundle?)")
    try:
        data = load_json(file)
        return data if shape is None else check_json(file, data, shape)
    except HostileOutputError as e:
        raise BundleError(f"{path}: {name}: {str(e).removeprefix(f'{file}: ')}") from None


def _manifest(path: Path, root: Path) -> dict[str, tuple[str, int]]:
    return _manifest_entries(path, _json(path, root, MANIFEST_FILE))


def _manifest_entries(path: Path, data: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """The manifest's entries, relative path -> (sha256, size), each checked."""
    files = data.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path}: {MANIFEST_FILE}: expected an object 'files'")
    out = {}
    for name, entry in files.items():
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        if (
            not isinstance(digest, str)
            or not digest.startswith("sha256:")
            or not isinstance(size, int)
            or isinstance(size, bool)
            or size < 0
        ):
            raise BundleError(f"{path}: {MANIFEST_FILE}: entry {name!r:.200} needs sha256 and size")
        _member_path(path, name)
        if name == MANIFEST_FILE:
            raise BundleError(f"{path}: {MANIFEST_FILE} cannot list itself")
        out[name] = (digest, size)
    return out


def _files(path: Path, root: Path) -> Iterator[str]:
    """Every file under `root`, relative and in POSIX form; anything else is refused."""
    for folder, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            full = Path(folder) / name
            mode = full.lstat().st_mode
            rel = full.relative_to(root).as_posix()
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise BundleError(f"{path}: {rel} is not a regular file")
            yield rel


def _field(path: Path, meta: dict[str, Any], key: str, kind: type) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind):
        raise BundleError(f"{path}: {BUNDLE_FILE}: {key!r} is missing or not a {kind.__name__}")
    return value


def _inputs(path: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    digest = inputs.get("digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise BundleError(f"{path}: {BUNDLE_FILE}: inputs.digest is missing")
    return inputs


def _summary(path: Path, data: dict[str, Any]) -> EnvironmentSummary:
    """The recorded environment summary, type-checked; fields a later schema adds are
    ignored."""
    values = {k: v for k, v in data.items() if k in _SUMMARY_TYPES}
    missing = sorted(set(_SUMMARY_TYPES) - _SUMMARY_LATER - set(values))
    if missing:
        raise BundleError(f"{path}: {BUNDLE_FILE}: environment lacks {', '.join(missing)}")
    for key, kinds in _SUMMARY_TYPES.items():
        if key in values and not isinstance(values[key], kinds):
            raise BundleError(f"{path}: {BUNDLE_FILE}: environment.{key} has the wrong type")
    problem = shape_problem(values, _SUMMARY_SHAPE, "environment")
    if problem is not None:
        raise BundleError(f"{path}: {BUNDLE_FILE}: {problem}")
    if not _NAME.match(values["name"]):
        raise BundleError(f"{path}: {BUNDLE_FILE}: environment.name must be an identifier")
    if values["backend"] not in BACKENDS:
        raise BundleError(
            f"{path}: {BUNDLE_FILE}: environment.backend must be one of {', '.join(BACKENDS)}"
        )
    if values.get("versions_from") not in VERSIONS_FROM:
        raise BundleError(
            f"{path}: {BUNDLE_FILE}: environment.versions_from must be one of "
            f"{', '.join(map(str, VERSIONS_FROM))}"
        )
    return EnvironmentSummary(**values)


def _lock_view(path: Path, data: Any) -> LockView | None:
    """The recorded view of the environment's lock, type-checked; None when the bundle has
    none (an environment without a lock, or a bundle recorded before parity kept it)."""
    if data is None:
        return None
    where = f"{path}: {BUNDLE_FILE}: lock"
    if not isinstance(data, dict):
        raise BundleError(f"{where} must be an object")
    for key in ("path", "group"):
        if not isinstance(data.get(key), str):
            raise BundleError(f"{where}.{key} is missing or not a str")
    for key in ("pins", "groups"):
        value = data.get(key)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise BundleError(f"{where}.{key} must map package names to strings")
    return LockView(data["path"], data["group"], dict(data["pins"]), dict(data["groups"]))


_NAME = re.compile(r"^[A-Za-z_][\w-]{0,99}$")  # as environment names in a config
_OPTIONAL = (str, type(None))
_SUMMARY_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "backend": (str,),
    "description": (str,),
    "lock": _OPTIONAL,
    "lock_digest": _OPTIONAL,
    "group": _OPTIONAL,
    "python": _OPTIONAL,
    "platform": _OPTIONAL,
    "packages": (dict,),
    "env": (dict,),
    "libraries": (dict,),
    "cpu": (dict,),
    "created": (bool,),
    "seconds": (dict,),
    "fingerprinted": (bool,),
    "versions_from": _OPTIONAL,
}
# What the summary's objects hold, as `summary` makes them from a fingerprint.
_SUMMARY_SHAPE = Fields(
    {
        "packages": MapOf(TEXT),
        "env": MapOf(TEXT),
        "libraries": Fields({"numpy": NUMPY, "torch": TORCH}),
        "cpu": CPU,
        "seconds": MapOf(NUMBER),
    }
)
# Fields added after bundles were first written: an older bundle lacks them (their defaults).
_SUMMARY_LATER = {"fingerprinted", "versions_from"}
assert set(_SUMMARY_TYPES) == {f.name for f in fields(EnvironmentSummary)}


# Archives ------------------------------------------------------------------------------


def _member_path(archive: Path, name: str) -> PurePosixPath:
    """A member's name as a safe relative path, or `BundleError`."""
    p = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or p.is_absolute()
        or ".." in p.parts
        or (p.parts and ":" in p.parts[0])
    ):
        raise BundleError(f"{archive}: refused member {name!r} (absolute or escaping path)")
    return p


def _extract(archive: Path, target: Path) -> None:
    """Extract `archive` into `target` by hand: every member is checked before anything is
    written (a plain file or folder, a safe path, listed in the archive's own manifest with
    the size its header declares, the count and total bounded), and only plain files and
    folders are made, each exactly the size declared."""
    members = _Members(archive)
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                if len(infos) > MAX_MEMBERS:
                    raise BundleError(f"{archive}: more than {MAX_MEMBERS} members; refused")
                for info in infos:
                    kind = stat.S_IFMT(info.external_attr >> 16)
                    if info.flag_bits & 0x1:
                        raise BundleError(
                            f"{archive}: refused member {info.filename!r} (encrypted)"
                        )
                    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                        raise BundleError(
                            f"{archive}: refused member {info.filename!r} (not a file or folder)"
                        )
                    members.add(info.filename, info.file_size, info.is_dir(), info)
                found = members.manifest_member()
                if found is not None:
                    with zf.open(found) as src:
                        members.read_manifest(src)
                members.check_all()
                for rel, size, info in members.files:
                    if info.is_dir():
                        (target / rel).mkdir(parents=True, exist_ok=True)
                    else:
                        with zf.open(info) as src:
                            _copy(archive, src, target / rel, size)
        else:
            with tarfile.open(archive, "r:gz") as tf:
                # Headers are read in order (each member's data is skipped, not written);
                # once the manifest is read, each later member is checked as soon as its
                # header is, before the archive is read past it.
                for ti in tf:
                    if not (ti.isfile() or ti.isdir()):
                        raise BundleError(
                            f"{archive}: refused member {ti.name!r} (a link or device, "
                            "not a file or folder)"
                        )
                    members.add(ti.name, ti.size, ti.isdir(), ti)
                    if members.manifest is None and members.manifest_member() is ti:
                        reader = tf.extractfile(ti)
                        assert reader is not None  # a regular file always has a reader
                        with reader:
                            members.read_manifest(reader)
                members.check_all()
                for rel, size, ti in members.files:
                    if ti.isdir():
                        (target / rel).mkdir(parents=True, exist_ok=True)
                    else:
                        reader = tf.extractfile(ti)
                        assert reader is not None
                        with reader:
                            _copy(archive, reader, target / rel, size)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise BundleError(f"{archive}: not a readable archive ({e})") from None


class _Members:
    """An archive's members as they are listed, each checked before anything is extracted:
    a safe path, not twice, at most `MAX_MEMBERS` and `MAX_BUNDLE_BYTES` in all, and once
    the archive's manifest is read (`read_manifest`), listed in it with its size."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.files: list[tuple[PurePosixPath, int, Any]] = []
        self.manifest: dict[str, tuple[str, int]] | None = None
        self.folder: PurePosixPath | None = None  # where the manifest is: the bundle's root
        self._seen: set[PurePosixPath] = set()
        self._total = 0

    def add(self, name: str, size: int, is_dir: bool, handle: Any) -> None:
        if len(self.files) >= MAX_MEMBERS:
            raise BundleError(f"{self.archive}: more than {MAX_MEMBERS} members; refused")
        rel = _member_path(self.archive, name)
        if rel in self._seen:
            raise BundleError(f"{self.archive}: member {str(rel)!r} appears twice")
        self._seen.add(rel)
        self._total += size
        if self._total > MAX_BUNDLE_BYTES:
            raise BundleError(
                f"{self.archive}: more than {MAX_BUNDLE_BYTES} bytes uncompressed "
                f"(member {str(rel)!r} declares {size}); refused"
            )
        self.files.append((rel, size, handle))
        if self.manifest is not None and not is_dir:
            self._check(rel, size)

    def manifest_member(self) -> Any:
        """The member that is the bundle's manifest: `manifest.json` at the archive's root
        or inside its one folder (an archive of the bundle's folder itself)."""
        for rel, _, handle in self.files:
            if rel.name == MANIFEST_FILE and len(rel.parts) <= 2 and not _is_dir(handle):
                return handle
        return None

    def read_manifest(self, src: IO[bytes]) -> None:
        """Read the manifest from its member (at most `MAX_JSON_BYTES`) and check every
        member listed so far against it."""
        handle = self.manifest_member()
        rel = next(r for r, _, h in self.files if h is handle)
        where = f"{self.archive}: {rel}"
        raw = src.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise BundleError(f"{where}: larger than {MAX_JSON_BYTES} bytes")
        try:
            data = parse_json(raw, where)
        except HostileOutputError as e:
            raise BundleError(str(e)) from None
        self.manifest = _manifest_entries(self.archive, data)
        self.folder = rel.parent
        for member, size, handle in self.files:
            if not _is_dir(handle):
                self._check(member, size)

    def check_all(self) -> None:
        """Refuse an archive without a manifest (nothing in it can be checked)."""
        if self.manifest is None:
            raise BundleError(f"{self.archive}: no {MANIFEST_FILE} (not a parity bundle?)")

    def _check(self, rel: PurePosixPath, size: int) -> None:
        assert self.manifest is not None and self.folder is not None
        if rel == self.folder / MANIFEST_FILE:
            if size > MAX_JSON_BYTES:
                raise BundleError(f"{self.archive}: {rel} declares {size} bytes; refused")
            return
        try:
            name = rel.relative_to(self.folder).as_posix()
        except ValueError:  # beside the folder that holds the manifest
            name = None
        if name not in self.manifest:
            raise BundleError(
                f"{self.archive}: member {str(rel)!r} is not in the bundle's manifest; refused"
            )
        listed = self.manifest[name][1]
        if size != listed:
            raise BundleError(
                f"{self.archive}: member {str(rel)!r} declares {size} bytes, the manifest "
                f"{listed}; refused"
            )


def _is_dir(handle: Any) -> bool:
    return bool(handle.is_dir() if isinstance(handle, zipfile.ZipInfo) else handle.isdir())


def _copy(archive: Path, src: IO[bytes], dest: Path, size: int) -> None:
    """Copy one member, never more bytes than its header declares."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with dest.open("xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > size:
                raise BundleError(f"{archive}: member {dest.name!r} is larger than declared")
            out.write(chunk)
    if written != size:
        raise BundleError(f"{archive}: member {dest.name!r} holds {written} bytes, {size} declared")
