"""Read a conda-lock lockfile (`conda-lock.yml`, or any name) into a `LockedEnv`.

This module owns conda-lock's file format as envlock reads it: lock versions 1 and 2 (the
versions conda-lock 4's `parse_conda_lock_file` reads; its writer writes 1), from one safe
YAML parse, checked against the schema of conda-lock's models (`conda_lock.lockfile.v1` and
`v2prelim`) with their wording. conda-lock itself is not imported: importing it loads its
solvers and vendored Poetry, seconds before the first line is read; the tests check that
conda-lock's own parser reads the corpus as envlock does.

conda-lock records, per platform, every conda and pip package with its categories. A
platform becomes a marker (`linux-64` -> `sys_platform == 'linux' and platform_machine ==
'x86_64'`) and a category other than `main` a group (`'train' in dependency_groups`), so
conda locks select packages exactly as PEP 751 locks do. conda-lock writes one entry per
category (version 1 has a single `category`); entries identical but for their category are
one package in the union of their categories, as conda-lock's parser merges them. Entries
for one package and platform that differ in anything else are refused.

Lock files are untrusted and conda-lock files for CUDA stacks reach tens of MB, so parsing
is bounded (no YAML aliases or merge keys, limited nesting) and fast: what conda-lock's
writer writes is read by a strict line grammar that yields exactly what `yaml.safe_load`
would, and anything outside that grammar goes to PyYAML (its C loader when present).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from envlock.errors import LockFileError
from envlock.locked import MAIN, LockedEnv, LockedFile, LockedPackage
from envlock.names import canonical

PLATFORM_MARKERS = {
    "linux-64": "sys_platform == 'linux' and platform_machine == 'x86_64'",
    "linux-aarch64": "sys_platform == 'linux' and platform_machine == 'aarch64'",
    "linux-ppc64le": "sys_platform == 'linux' and platform_machine == 'ppc64le'",
    "osx-64": "sys_platform == 'darwin' and platform_machine == 'x86_64'",
    "osx-arm64": "sys_platform == 'darwin' and platform_machine == 'arm64'",
    "win-64": "sys_platform == 'win32' and platform_machine == 'AMD64'",
}

# The names conda-lock writes by default; `read_lock` reads any other name by its content.
FILE_NAMES = ("conda-lock.yml", "conda-lock.yaml")
FILE_SUFFIXES = (".conda-lock.yml", ".conda-lock.yaml")
LOCK_VERSIONS = (1, 2)
EXPECTED = "a conda-lock file (a YAML mapping with version, metadata and package)"
TOP_KEYS = ("version", "metadata", "package")
# conda-lock files nest five levels (metadata.channels[i].used_env_vars[j]); far more is hostile.
MAX_DEPTH = 8
NEEDS_YAML = "reading conda-lock files needs PyYAML: pip install 'envlock-parity[conda]'"


def read_conda_lock(path: Path) -> LockedEnv:
    """Parse and validate the conda-lock file `path`; raise `LockFileError` naming the place."""
    raw = path.read_bytes()
    return conda_lock_from(path, raw, parse_yaml(path, raw))


def looks_like_conda_lock(data: object) -> bool:
    """Whether parsed YAML is meant as a conda-lock file: a mapping with two of its keys."""
    return isinstance(data, dict) and sum(key in data for key in TOP_KEYS) >= 2


def parse_yaml(path: Path, raw: bytes) -> Any:
    """`raw` parsed as `yaml.safe_load` would, refusing what only a hostile file holds."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LockFileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    with _no_cycle_collection():
        fast = _fast_parse(text)
        return fast if fast is not None else _load(path, text)


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause the cycle collector while a lock's containers are built: a large lock makes
    hundreds of thousands, which would trigger collections that scan them all again and
    again (half the time to read one), and none of them can be part of a cycle."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def conda_lock_from(path: Path, raw: bytes, data: Any) -> LockedEnv:
    """The `LockedEnv` of a conda-lock file whose bytes are `raw` and parsed YAML `data`."""
    with _no_cycle_collection():
        return _conda_lock_from(path, raw, data)


def _conda_lock_from(path: Path, raw: bytes, data: Any) -> LockedEnv:
    version = _version(path, raw, data)
    try:
        metadata = _metadata(data)
        packages = _packages(data, version, metadata["platforms"])
    except _Invalid as e:
        raise LockFileError(path, e.message, where=e.where) from None
    locked = [_locked(package) for package in packages]
    categories: set[str] = set()
    for package in packages:
        categories |= package.categories
    return LockedEnv(
        path=path,
        digest="sha256:" + hashlib.sha256(raw).hexdigest(),
        flavor="conda-lock",
        requires_python=_python_version(locked),
        groups=(MAIN, *sorted(categories - {MAIN})),
        packages=tuple(locked),
        created_by="conda-lock",
        tool={"platforms": metadata["platforms"], "content_hash": metadata["content_hash"]},
    )


def _version(path: Path, raw: bytes, data: Any) -> int:
    """The lock version of a parsed document, or `LockFileError`."""
    if not isinstance(data, dict):
        if data is None and not raw.strip():
            raise LockFileError(path, f"the file is empty: expected {EXPECTED}")
        found = "nothing (null)" if data is None else f"a {_kind(data)}"
        raise LockFileError(path, f"expected {EXPECTED}, found {found}", where="top level")
    version = data.get("version")
    if version is None:
        raise LockFileError(path, "MissingLockfileVersion: conda-lock writes version: 1", "version")
    if type(version) is not int:
        raise LockFileError(
            path, f"must be the integer 1 or 2, not the {_kind(version)} {version!r}", "version"
        )
    if version not in LOCK_VERSIONS:
        raise LockFileError(
            path,
            f"UnknownLockfileVersion: {version} (envlock reads conda-lock versions 1 and 2)",
            where="version",
        )
    return version


def _kind(value: object) -> str:
    kinds = {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer"}
    return kinds.get(type(value), type(value).__name__)


# --- conda-lock's schema ----------------------------------------------------------------------
# The fields, types and messages of conda-lock's pydantic models; the place is pydantic's
# `loc` (`package.0.hash`), as conda-lock users see it.


class _Invalid(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


_MISSING = object()
_STRING = "Input should be a valid string"
_DICT = "Input should be a valid dictionary"
_LIST = "Input should be a valid list"
_REQUIRED = "Field required"
_EXTRA = "Extra inputs are not permitted"
# pydantic's lax booleans (conda-lock writes true and false)
_BOOLEANS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}


def _get(mapping: dict[Any, Any], key: str, where: str, required: bool = True) -> Any:
    value = mapping.get(key, _MISSING)
    if value is _MISSING and required:
        raise _Invalid(f"{where}.{key}" if where else key, _REQUIRED)
    return value


def _string(value: Any, where: str, optional: bool = False) -> Any:
    if type(value) is not str and not (optional and value in (None, _MISSING)):
        raise _Invalid(where, _STRING)
    return value


def _mapping(value: Any, where: str, fields: tuple[str, ...] | None) -> dict[Any, Any]:
    """`value` as a mapping; with `fields`, one that has no other key."""
    if type(value) is not dict:
        raise _Invalid(where, _DICT)
    if fields is not None:
        for key in value:
            if key not in fields:
                raise _Invalid(f"{where}.{key}" if where else str(key), _EXTRA)
    return value


def _strings(value: Any, where: str) -> list[str]:
    if type(value) is not list:
        raise _Invalid(where, _LIST)
    for i, item in enumerate(value):
        _string(item, f"{where}.{i}")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    mapping = _mapping(value, where, None)
    for key, item in mapping.items():
        _string(key, f"{where}.{key}.[key]")
        _string(item, f"{where}.{key}")
    return mapping


_META = (
    "content_hash",
    "channels",
    "platforms",
    "sources",
    "time_metadata",
    "git_metadata",
    "inputs_metadata",
    "custom_metadata",
)


def _metadata(data: dict[str, Any]) -> dict[str, Any]:
    """conda-lock's `LockMeta`, checked after `package` is known to be a list (its order)."""
    if type(_get(data, "package", "")) is not list:
        raise _Invalid("package", _LIST)
    for key in data:
        if key not in TOP_KEYS:
            raise _Invalid(str(key), _EXTRA)
    meta = _mapping(_get(data, "metadata", ""), "metadata", _META)
    where = "metadata"
    content_hash = _string_map(_get(meta, "content_hash", where), f"{where}.content_hash")
    channels = _get(meta, "channels", where)
    if type(channels) is not list:
        raise _Invalid(f"{where}.channels", _LIST)
    for i, channel in enumerate(channels):
        at = f"{where}.channels.{i}"
        if type(channel) is not str:
            _mapping(channel, at, None)  # a pydantic BaseModel: other keys are ignored
            _string(_get(channel, "url", at), f"{at}.url")
            _strings(_get(channel, "used_env_vars", at), f"{at}.used_env_vars")
    platforms = _strings(_get(meta, "platforms", where), f"{where}.platforms")
    _strings(_get(meta, "sources", where), f"{where}.sources")
    time = meta.get("time_metadata")
    if time is not None:
        time = _mapping(time, f"{where}.time_metadata", ("created_at",))
        _string(_get(time, "created_at", f"{where}.time_metadata"), f"{where}.time_metadata")
    git = meta.get("git_metadata")
    if git is not None:
        fields = ("git_user_name", "git_user_email", "git_sha")
        for key, value in _mapping(git, f"{where}.git_metadata", fields).items():
            _string(value, f"{where}.git_metadata.{key}", optional=True)
    inputs = meta.get("inputs_metadata")
    if inputs is not None:
        for name, digests in _mapping(inputs, f"{where}.inputs_metadata", None).items():
            at = f"{where}.inputs_metadata.{name}"
            _mapping(digests, at, ("md5", "sha256"))
            for key in ("md5", "sha256"):
                _string(_get(digests, key, at), f"{at}.{key}", optional=True)
    custom = meta.get("custom_metadata")
    if custom is not None:
        _string_map(custom, f"{where}.custom_metadata")
    return {"platforms": list(platforms), "content_hash": dict(content_hash)}


_FIELDS = ("name", "version", "manager", "platform", "dependencies", "url", "hash", "source")
_V1_FIELDS = (*_FIELDS, "build", "category", "optional")
_V2_FIELDS = (*_FIELDS, "build", "categories")


_KEYS = {1: frozenset(_V1_FIELDS), 2: frozenset(_V2_FIELDS)}
_HASH_KEYS = frozenset(("md5", "sha256"))
_STR = frozenset((str,))
_STR_OR_NONE = frozenset((str, type(None)))
_NO_DEPENDENCIES: dict[str, str] = {}


def _entry(dep: Any, where: str, version: int) -> set[str]:
    """Check one package entry against conda-lock's `LockedDependency`; its categories."""
    # Entries as conda-lock writes them pass this, in one expression: a lock has 100,000s.
    if type(dep) is dict and dep.keys() <= _KEYS[version]:
        hashes = dep.get("hash")
        dependencies = dep.get("dependencies", _NO_DEPENDENCIES)
        if (
            type(dep.get("name")) is str
            and type(dep.get("version")) is str
            and type(dep.get("platform")) is str
            and type(dep.get("url")) is str
            and dep["url"]
            and type(hashes) is dict
            and hashes.keys() <= _HASH_KEYS
            and set(map(type, hashes.values())) <= _STR_OR_NONE
            and (
                dep.get("manager") == "pip"
                or (dep.get("manager") == "conda" and hashes.get("md5") is not None)
            )
            and type(dependencies) is dict
            and set(map(type, dependencies)) <= _STR
            and set(map(type, dependencies.values())) <= _STR
            and dep.get("source") is None
            and type(dep.get("build")) in _STR_OR_NONE
        ):
            if version == 1:
                category = dep.get("category", MAIN)
                if type(category) is str and type(dep.get("optional")) is bool:
                    return {category}
            else:
                listed = dep.get("categories", ())
                if type(listed) is list and set(map(type, listed)) <= _STR:
                    return set(listed) or {MAIN}
    return _entry_in_detail(dep, where, version)


def _entry_in_detail(dep: Any, where: str, version: int) -> set[str]:
    """`_entry`, field by field: the first fault, in conda-lock's words; else the categories."""
    _mapping(dep, where, None)
    for key in ("name", "version", "manager", "platform"):
        _string(_get(dep, key, where), f"{where}.{key}")
    if dep["manager"] not in ("conda", "pip"):
        raise _Invalid(f"{where}.manager", "Input should be 'conda' or 'pip'")
    dependencies = dep.get("dependencies")
    if dependencies is not None or "dependencies" in dep:
        _string_map(dependencies, f"{where}.dependencies")
    if not _string(_get(dep, "url", where), f"{where}.url"):
        raise _Invalid(f"{where}.url", "Value error, URL cannot be empty")
    hashes = _mapping(_get(dep, "hash", where), f"{where}.hash", ("md5", "sha256"))
    for key, value in hashes.items():
        _string(value, f"{where}.hash.{key}", optional=True)
    if dep["manager"] == "conda" and hashes.get("md5") is None:
        raise _Invalid(f"{where}.hash", "Value error, conda package hashes must use MD5")
    source = dep.get("source")
    if source is not None:
        _mapping(source, f"{where}.source", ("type", "url"))
        if _get(source, "type", f"{where}.source") != "url":
            raise _Invalid(f"{where}.source.type", "Input should be 'url'")
        _string(_get(source, "url", f"{where}.source"), f"{where}.source.url")
    _string(dep.get("build"), f"{where}.build", optional=True)
    if version == 1:
        category = _string(dep.get("category", MAIN), f"{where}.category")
        optional = _get(dep, "optional", where)
        if type(optional) is not bool and str(optional).lower() not in _BOOLEANS:
            raise _Invalid(f"{where}.optional", "Input should be a valid boolean")
        categories = {category}
    else:
        listed = dep.get("categories", [])
        if type(listed) not in (list, set):
            raise _Invalid(f"{where}.categories", "Input should be a valid set")
        for i, category in enumerate(listed):
            _string(category, f"{where}.categories.{i}")
        categories = set(listed) or {MAIN}  # what conda-lock never writes: read as main
    for key in dep:
        if key not in (_V1_FIELDS if version == 1 else _V2_FIELDS):
            raise _Invalid(f"{where}.{key}", _EXTRA)
    return categories


# --- packages ---------------------------------------------------------------------------------


class _Package:
    """One package of the lock: its first entry (`index` in the file) and all its categories."""

    __slots__ = ("categories", "dep", "index", "name")

    def __init__(self, index: int, dep: dict[str, Any], name: str, categories: set[str]) -> None:
        self.index = index
        self.dep = dep
        self.name = name
        self.categories = categories


# A category becomes a group, named in markers and on the command line (`--group`).
_GROUP_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_NOT_A_GROUP = "cannot be a group name (letters, digits, and '.', '_', '-' between them)"
# What the entries of one package must agree on (all but their category).
_SAME = ("version", "build", "url", "hash", "dependencies", "source")
_SHOWN = ("version", "build")


def _packages(data: dict[str, Any], version: int, platforms: list[str]) -> list[_Package]:
    """The lock's packages: entries checked, those identical but for category merged."""
    packages: dict[tuple[str, str, str], _Package] = {}
    groups: set[str] = set()  # the categories seen, each a valid group name
    for i, dep in enumerate(data["package"]):
        cats = _entry(dep, f"package.{i}", version)
        manager, platform = dep["manager"], dep["platform"]
        name = _canonical(dep["name"]) if manager == "pip" else dep["name"]
        key = (name, manager, platform)
        for category in cats - groups:
            if not _GROUP_NAME.fullmatch(category):
                where = f"package[{i}] ({dep['name']} for {platform})"
                raise _Invalid(where, f"category {category!r} {_NOT_A_GROUP}")
            groups.add(category)
        first = packages.get(key)
        if first is None:
            _check(dep, i, platforms)
            packages[key] = _Package(i, dep, name, cats)
            continue
        twice = f"{manager} package {dep['name']!r} is locked twice for {platform}"
        also = f"also package[{first.index}]"
        differ = [
            f
            for f in _SAME
            if dep.get(f) != first.dep.get(f) and _field(dep, f) != _field(first.dep, f)
        ]
        if differ:
            said = [
                f"{f} {dep.get(f)} here, {first.dep.get(f)} there"
                if f in _SHOWN
                else f"a different {f}"
                for f in differ
            ]
            raise _Invalid(f"package[{i}]", f"{twice} ({also}): {'; '.join(said)}")
        repeated = cats & first.categories
        if repeated:
            listed = ", ".join(repr(c) for c in sorted(repeated))
            raise _Invalid(f"package[{i}]", f"{twice} in category {listed} ({also})")
        first.categories |= cats
    return list(packages.values())


def _field(dep: dict[str, Any], name: str) -> Any:
    """A field as conda-lock's model holds it: absent, null and empty the same."""
    value = dep.get(name)
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None} or None
    return value


_canonical = functools.lru_cache(maxsize=65536)(canonical)


def _check(dep: dict[str, Any], index: int, platforms: list[str]) -> None:
    """What envlock needs beyond conda-lock's schema: a known platform, a valid version."""
    platform, manager, version = dep["platform"], dep["manager"], dep["version"]
    where = f"package[{index}] ({dep['name']} for {platform})"
    if not dep["name"].strip():
        raise _Invalid(f"package[{index}]", "a package without a name")
    if platform not in PLATFORM_MARKERS:
        raise _Invalid(where, f"unknown platform {platform!r}")
    if platform not in platforms:
        raise _Invalid(where, f"platform {platform!r} is not in metadata.platforms")
    fault = _pip_version_fault(version) if manager == "pip" else _conda_version_fault(version)
    if fault:
        raise _Invalid(where, f"{manager} package version {version!r} is {fault}")
    hashes = dep["hash"]
    if not hashes.get("sha256") and not hashes.get("md5"):
        raise _Invalid(where, "no hash for this package")


def _locked(package: _Package) -> LockedPackage:
    dep = package.dep
    manager, url = dep["manager"], dep["url"]
    file = LockedFile(
        url.rsplit("/", 1)[-1].split("#", 1)[0], url, None, dep["hash"].get("sha256"), None
    )
    return LockedPackage(
        name=package.name,
        version=dep["version"],
        marker=_marker(dep["platform"], frozenset(package.categories)),
        wheels=(file,) if manager == "pip" else (),
        sdist=file if manager == "conda" else None,
        manager=manager,
        build=dep.get("build"),
        channel=_channel(url),
    )


@functools.lru_cache(maxsize=1024)
def _marker(platform: str, categories: frozenset[str]) -> str:
    """The platform's marker; outside `main`, and one of the package's groups."""
    marker = PLATFORM_MARKERS[platform]
    if MAIN in categories:
        return marker
    condition = " or ".join(f"'{c}' in dependency_groups" for c in sorted(categories))
    return f"({marker}) and ({condition})"


@functools.lru_cache(maxsize=4096)
def _pip_version_fault(version: str) -> str | None:
    from packaging.version import InvalidVersion, Version

    try:
        Version(version)
    except InvalidVersion:
        return "not a PEP 440 version"
    return None


_CONDA_VERSION_CHARS = re.compile(r"[*.+!_0-9a-z]+")


@functools.lru_cache(maxsize=4096)
def _conda_version_fault(version: str) -> str | None:
    """Why conda would refuse `version` (the rules of its `VersionOrder`), or None."""
    v = version.strip().lower()
    if not v:
        return "empty"
    if not _CONDA_VERSION_CHARS.fullmatch(v):
        # conda reads dashes as underscores in a version that has no underscore.
        if "-" in v and "_" not in v and _CONDA_VERSION_CHARS.fullmatch(v.replace("-", "_")):
            v = v.replace("-", "_")
        else:
            return "not a conda version (a character conda does not allow)"
    epoch, *rest = v.split("!") if "!" in v else ("0", v)
    if len(rest) != 1 or not epoch.isdigit():
        return "not a conda version (a bad epoch before '!')"
    public, *local = rest[0].split("+")
    if len(local) > 1 or not public:
        return "not a conda version (a bad local part after '+')"
    if public.endswith("_"):  # openssl-like `1.0.1_`: conda keeps the underscore
        public = public[:-1]
    for part in (public, *local):
        if "" in part.replace("_", ".").split("."):
            return "not a conda version (an empty component)"
    return None


def _channel(url: str) -> str | None:
    """`https://conda.anaconda.org/conda-forge/linux-64/x.conda` -> `conda-forge`."""
    parts = url.split("/")
    return parts[-3] if len(parts) >= 3 else None


def _python_version(packages: list[LockedPackage]) -> str | None:
    for p in packages:
        if p.manager == "conda" and p.name == "python":
            major_minor = ".".join(p.version.split(".")[:2])
            return f"=={major_minor}.*"
    return None


# --- YAML -------------------------------------------------------------------------------------


class _Refused(Exception):
    """A construct a conda-lock file never holds and a hostile one uses; where it starts."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.mark = mark


_ALIAS = "a node used again through a YAML alias (*name): conda-lock files have none"


@functools.cache
def _loader() -> type:
    """PyYAML's safe loader (in C when built with libyaml) refusing aliases and merge keys.

    An alias (`*a`) reuses a node; nested ones expand exponentially (a "billion laughs"), in
    memory and in everything that walks the result, so none is accepted.
    """
    import yaml

    base = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader

    class Loader(base):  # type: ignore[misc,valid-type]
        def construct_object(self, node: Any, deep: bool = False) -> Any:
            if node in self.constructed_objects or node in self.recursive_objects:
                raise _Refused(_ALIAS, node.start_mark)
            return super().construct_object(node, deep)

        def flatten_mapping(self, node: Any) -> None:
            for key, _ in node.value:
                if key.tag == "tag:yaml.org,2002:merge":
                    message = "a YAML merge key (<<): conda-lock files have none"
                    raise _Refused(message, key.start_mark)
            super().flatten_mapping(node)

    return Loader


def _load(path: Path, text: str) -> Any:
    """`text` through PyYAML's safe loader, every failure a `LockFileError` with its place."""
    try:
        import yaml
    except ImportError:
        raise LockFileError(path, NEEDS_YAML) from None
    try:
        data = yaml.load(text, Loader=_loader())
    except _Refused as e:
        raise LockFileError(path, str(e), where=_place(e.mark)) from None
    except RecursionError:  # the pure-Python loader recurses once per level
        raise LockFileError(path, f"nested too deeply (more than {MAX_DEPTH} levels)") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context
        raise LockFileError(path, f"not valid YAML: {problem}", where=_place(mark)) from None
    except yaml.YAMLError as e:  # the reader's (an unprintable character) say where themselves
        raise LockFileError(path, f"not valid YAML: {e}") from None
    _check_depth(path, data)
    return data


def _place(mark: Any) -> str | None:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else None


def _check_depth(path: Path, data: Any) -> None:
    """Refuse nesting beyond `MAX_DEPTH`, without recursing (the data is a tree: no aliases)."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, dict):
            children = [(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            children = [(v, f"{where}.{i}") for i, v in enumerate(value)]
        else:
            continue
        if depth == MAX_DEPTH:
            raise LockFileError(path, f"nested too deeply (more than {MAX_DEPTH} levels)", where)
        stack.extend((v, w, depth + 1) for v, w in children if isinstance(v, dict | list))


# The fast path. conda-lock's writer (`yaml.dump`, block style) writes `package:` last, at the
# start of a line, as a list of mappings whose lines are `- key: value`, `  key: value`,
# `  key:` opening a mapping (`    key: value` lines) or a list (`  - value` lines). Scalars
# are plain (no space, no indicator first; resolved as PyYAML resolves them), single-quoted
# on one line, `{}` or `[]`. Any other line (a comment, a blank line, an alias, a tab, a
# number where a string belongs) or a non-printable character sends the file to PyYAML.
_PLAIN = r"[^\s'\"#&*!|>%@`{}\[\],?:\-]\S*(?<!:)"
_VALUE = rf"'((?:[^'\n\r\x85\u2028\u2029]|'')*)'|(\{{\}}|\[\])|({_PLAIN})"
_KEY = r"[A-Za-z0-9_.][A-Za-z0-9_.+\-]*"
_LINE = re.compile(rf"(- |  - |    |  )(?:({_KEY}):(?: (?:{_VALUE}))?|(?:{_VALUE}))\n")
_PACKAGE = re.compile(r"^package:\n", re.MULTILINE)
# YAML's printable characters (PyYAML's reader); libyaml also refuses a BOM past the start.
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
_CLOSED = object()  # no field of the current entry takes the next lines


class _Declined(Exception):
    """The fast path leaves this file to PyYAML."""


def _fast_parse(text: str) -> dict[str, Any] | None:
    """What `yaml.safe_load(text)` gives, for a file shaped as conda-lock writes; else None."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")  # YAML reads CRLF as LF (conda-lock on Windows)
    found = _PACKAGE.search(text)
    if found is None or _NON_PRINTABLE.search(text, found.end()):
        return None
    try:
        # The rest of the file, with an empty list in place of `package`, is small: PyYAML
        # reads it. If `package:` ends it as a top-level key, the list below is its value.
        head = _load(Path("-"), text[: found.start()] + "package: []\n")
    except LockFileError:
        return None  # read again whole, so that the error names the right place
    if not isinstance(head, dict) or head.get("package") != []:
        return None
    try:
        head["package"] = _fast_packages(text[found.end() :])
    except _Declined:
        return None
    return head


def _fast_packages(section: str) -> list[dict[Any, Any]]:
    """The list of mappings `section` holds (see `_LINE`), or `_Declined`."""
    risky, resolve = _resolver()
    packages: list[dict[Any, Any]] = []
    entry: dict[Any, Any] = {}
    opened: Any = _CLOSED  # the key whose mapping or list the next lines fill
    pos = 0
    value: Any
    for m in _LINE.finditer(section):
        if m.start() != pos:
            raise _Declined
        pos = m.end()
        lead, key, quoted, empty, plain, item_quoted, item_empty, item_plain = m.groups()
        if key is None:  # `  - value`: an item of the list `opened`
            if lead != "  - " or opened is _CLOSED:
                raise _Declined
            if item_plain is not None:
                value = resolve(item_plain) if item_plain[0] in risky else item_plain
            elif item_quoted is not None:
                value = item_quoted.replace("''", "'")
            else:
                value = {} if item_empty == "{}" else []
            block = entry[opened]
            if block is None:
                block = entry[opened] = []
            elif type(block) is not list:
                raise _Declined
            block.append(value)
            continue
        if key[0] in risky:
            key = resolve(key)
        if plain is not None:
            value = resolve(plain) if plain[0] in risky else plain
        elif quoted is not None:
            value = quoted.replace("''", "'")
        elif empty is not None:
            value = {} if empty == "{}" else []
        else:
            value = _CLOSED
        if lead == "  " and packages:
            if value is _CLOSED:
                entry[key] = None  # YAML's null, unless lines below fill it
                opened = key
            else:
                entry[key] = value
                opened = _CLOSED
        elif lead == "    " and value is not _CLOSED and opened is not _CLOSED:
            block = entry[opened]
            if block is None:
                block = entry[opened] = {}
            elif type(block) is not dict:
                raise _Declined
            block[key] = value
        elif lead == "- " and value is not _CLOSED:
            entry = {key: value}
            packages.append(entry)
            opened = _CLOSED
        else:
            raise _Declined
    if pos != len(section):
        raise _Declined
    return packages


_STR_TAG = "tag:yaml.org,2002:str"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_BOOLS = {"yes": True, "no": False, "true": True, "false": False, "on": True, "off": False}


def _resolver() -> tuple[frozenset[str], Any]:
    """The first characters of plain scalars PyYAML may read as other than a string, and a
    function giving such a scalar's value (a string or a boolean; `_Declined` otherwise)."""
    import yaml

    resolvers = yaml.resolver.Resolver.yaml_implicit_resolvers
    patterns = {r.pattern for rs in resolvers.values() for _, r in rs}
    union = re.compile("|".join(f"(?:{p})" for p in sorted(patterns)), re.VERBOSE)
    resolver = yaml.resolver.Resolver()
    cache: dict[str, Any] = {}

    def resolve(raw: str) -> Any:
        value = cache.get(raw, _CLOSED)
        if value is _CLOSED:
            tag = (
                _STR_TAG
                if union.match(raw) is None
                else resolver.resolve(yaml.ScalarNode, raw, (True, False))
            )
            if tag == _STR_TAG:
                value = raw
            elif tag == _BOOL_TAG:
                value = _BOOLS[raw.lower()]
            else:
                raise _Declined  # a number, a null, a date: PyYAML constructs them
            cache[raw] = value
        return value

    return frozenset(c for c in resolvers if c), resolve
