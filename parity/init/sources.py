"""The user's dependency sources read into a lock spec's two groups, `main` and `train`.

Three sources: a pip requirements file (`-r` includes, comments, line continuations,
markers, hashes, index options), a `pyproject.toml` (PEP 621 dependencies, optional
dependencies and PEP 735 dependency groups, a uv project's `[tool.uv]` index settings),
and a conda `environment.yml` (its `pip:` section, and conda packages mapped to their PyPI
names where the mapping is obvious). Whatever a lock spec cannot hold (an editable or local
path requirement, a conda package with no PyPI equivalent, credentials in an index URL)
is refused with a `ConfigError` naming the file and the line (exit 2).
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from parity.errors import ConfigError, ParityError


class InitError(ConfigError):
    """Input `parity init` cannot use: a file and the place in it that is wrong, or an
    option (`path` None: the message names the option). Exit 2."""

    def __init__(self, path: Path | str | None, key: str | None, message: str) -> None:
        if path is not None:
            super().__init__(path, key, message)
            return
        self.path, self.key, self.detail = "", key, message
        ParityError.__init__(self, f"{key}: {message}" if key else message)


# Groups (PEP 735) and extras (PEP 621) taken as training-only when no --train-group is given.
TRAIN_GROUPS = ("train", "training")
# `[tool.uv]` settings carried from a uv project into the spec: where packages come from
# and which versions may be chosen, nothing about the project's own build.
UV_KEYS = (
    "index",
    "index-url",
    "extra-index-url",
    "find-links",
    "prerelease",
    "constraint-dependencies",
    "override-dependencies",
    "exclude-newer",
    "environments",
)


@dataclass
class Dependencies:
    """What a lock spec gets: requirements per group, `[tool.uv]` settings, the Python
    version asked for, and notes saying what was decided (printed by `parity init`)."""

    main: list[str] = field(default_factory=list)
    train: list[str] = field(default_factory=list)
    uv: dict[str, Any] = field(default_factory=dict)
    requires_python: str | None = None
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def add(self, requirement: str, group: str) -> None:
        """Add `requirement` to `group` ("main" or "train") unless it is there already; a
        train requirement that main holds as it is is dropped (main is in both)."""
        target = self.main if group == "main" else self.train
        if requirement in target or (group == "train" and requirement in self.main):
            return
        target.append(requirement)

    def move_to_train(self, names: list[str]) -> None:
        """`--train NAME`: move NAME's requirements from main to train; a NAME main does
        not hold is added to train as a requirement of its own."""
        for given in names:
            try:
                wanted = canonicalize_name(Requirement(given).name)
            except InvalidRequirement:
                raise InitError(None, "--train", f"not a package name: {given!r}") from None
            moving = [r for r in self.main if _name(r) == wanted]
            if moving:
                self.main = [r for r in self.main if r not in moving]
                for r in moving:
                    self.add(r, "train")
            else:
                self.add(given, "train")

    def drop(self, names: list[str]) -> None:
        """`--drop NAME`: leave NAME out of both groups."""
        dropped = {canonicalize_name(n) for n in names}
        self.main = [r for r in self.main if _name(r) not in dropped]
        self.train = [r for r in self.train if _name(r) not in dropped]


def _name(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


def _requirement(text: str, where: str, path: Path) -> str:
    """`text` checked as a PEP 508 requirement a lock can pin (a name, not a local path)."""
    try:
        req = Requirement(text)
    except InvalidRequirement as e:
        raise InitError(path, where, f"not a requirement a lock can hold: {text!r} ({e})") from None
    if req.url and req.url.startswith("file:"):
        raise InitError(
            path, where, f"{text!r} is a local file; a shared lock needs a published package"
        )
    return str(req)


# --- requirements files -------------------------------------------------------------------

_COMMENT = re.compile(r"(^|\s+)#.*$")
_HASH = re.compile(r"\s--hash[=\s]\S+")
_OPTION = re.compile(r"^(-[A-Za-z]|--[a-z-]+)(?:[=\s]\s*(.*))?$")
_IGNORED_OPTIONS = {"--no-deps", "--prefer-binary", "--trusted-host", "--use-feature"}


def read_requirements(
    path: Path, deps: Dependencies, group: str, *, _seen: tuple[Path, ...] = ()
) -> None:
    """Add what the pip requirements file `path` names to `group` of `deps` (with its
    `-r` includes; `-c` constraints and index options into `deps.uv`)."""
    path = path.resolve()
    if path in _seen:
        raise InitError(path, None, "includes itself (through -r)")
    _requirement_lines(_read_text(path), path, path.parent, deps, group, (*_seen, path))
    deps.sources.append(str(path))


def _requirement_lines(
    text: str, path: Path, base: Path, deps: Dependencies, group: str, seen: tuple[Path, ...]
) -> None:
    hashes = False
    for number, line in _logical_lines(text):
        where = f"line {number}"
        line = _COMMENT.sub("", line).strip()
        if not line:
            continue
        if " --hash" in f" {line}":
            hashes = True
            line = _HASH.sub("", f" {line}").strip()
        option = _OPTION.match(line) if line.startswith("-") else None
        if option is None:
            if _looks_like_path(line):
                raise InitError(
                    path,
                    where,
                    f"{line!r} is a local path; a shared lock needs published packages "
                    "(put the project's folder in [model] paths instead)",
                )
            deps.add(_requirement(line, where, path), group)
            continue
        flag, value = option.group(1), (option.group(2) or "").strip()
        if flag in ("-r", "--requirement"):
            read_requirements(_beside(base, path, value, where), deps, group, _seen=seen)
        elif flag in ("-c", "--constraint"):
            constraints = Dependencies()
            included = _beside(base, path, value, where)
            read_requirements(included, constraints, "main", _seen=seen)
            _extend(deps.uv, "constraint-dependencies", constraints.main)
            deps.uv.update({k: v for k, v in constraints.uv.items() if k not in deps.uv})
        elif flag in ("-i", "--index-url"):
            deps.uv["index-url"] = _index_url(value, path, where)
        elif flag == "--extra-index-url":
            _extend(deps.uv, "extra-index-url", [_index_url(value, path, where)])
        elif flag in ("-f", "--find-links"):
            _extend(deps.uv, "find-links", [value])
        elif flag == "--pre":
            deps.uv["prerelease"] = "allow"
        elif flag in _IGNORED_OPTIONS:
            deps.notes.append(f"{path.name} {where}: {flag} ignored (a lock pins every file)")
        elif flag in ("-e", "--editable"):
            raise InitError(
                path,
                where,
                f"an editable install ({line!r}) cannot go into a shared lock; "
                "put the project's folder in [model] paths instead",
            )
        else:
            raise InitError(path, where, f"the option {flag} has no place in a lock spec")
    if hashes:
        deps.notes.append(
            f"{path.name}: its --hash values were left out; the lock pins every file by hash"
        )


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with `\\` continuations joined, each with the number of its first line."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        out.append((start, pending + raw))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def _looks_like_path(line: str) -> bool:
    return line.startswith((".", "/", "~")) or line.endswith((".whl", ".tar.gz", ".zip"))


def _beside(base: Path, path: Path, value: str, where: str) -> Path:
    if not value:
        raise InitError(path, where, "names no file")
    target = (base / value).resolve()
    if not target.is_file():
        raise InitError(path, where, f"includes {value}, which does not exist")
    return target


def _index_url(url: str, path: Path, where: str) -> str:
    if re.match(r"^[a-z+]+://[^/@\s]*:[^/@\s]*@", url):
        raise InitError(
            path,
            where,
            "an index URL with a password would be written into the lock spec; "
            "give its credentials in UV_INDEX_<NAME>_USERNAME/_PASSWORD variables instead",
        )
    return url


def _extend(table: dict[str, Any], key: str, values: list[str]) -> None:
    items = table.setdefault(key, [])
    items.extend(v for v in values if v not in items)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise InitError(path, None, "file not found")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InitError(path, None, f"cannot be read: {e}") from None


# --- pyproject.toml -----------------------------------------------------------------------


def read_pyproject(path: Path, deps: Dependencies, train_groups: list[str] | None) -> None:
    """Add a PEP 621 project's dependencies to main and its training groups or extras
    (`train_groups`, default `train` and `training`) to train; carry its `[tool.uv]`
    index settings."""
    try:
        data = tomllib.loads(_read_text(path))
    except tomllib.TOMLDecodeError as e:
        raise InitError(path, None, f"not valid TOML: {e}") from None
    project = data.get("project")
    if not isinstance(project, dict):
        raise InitError(path, "project", "missing: not a PEP 621 project")
    own = canonicalize_name(str(project.get("name", "")))
    extras = _table(project.get("optional-dependencies", {}), path, "project.optional-dependencies")
    groups = _table(data.get("dependency-groups", {}), path, "dependency-groups")
    for i, item in enumerate(
        _strings(project.get("dependencies", []), path, "project.dependencies")
    ):
        for r in _expand(item, own, extras, path, f"project.dependencies[{i}]"):
            deps.add(r, "main")
    chosen = (
        train_groups
        if train_groups is not None
        else [g for g in (*groups, *extras) if g in TRAIN_GROUPS]
    )
    for name in chosen:
        if name in groups:
            for r in _group(groups, name, own, extras, path, ()):
                deps.add(r, "train")
        elif name in extras:
            for i, item in enumerate(
                _strings(extras[name], path, f"project.optional-dependencies.{name}")
            ):
                for r in _expand(item, own, extras, path, f"optional-dependencies.{name}[{i}]"):
                    deps.add(r, "train")
        else:
            raise InitError(
                path, None, f"has no dependency group or extra {name!r} (--train-group)"
            )
    unused = sorted(n for n in (*groups, *extras) if n not in chosen)
    if unused:
        deps.notes.append(
            f"{path.name}: left out {', '.join(unused)} (name one with --train-group to put "
            "it in train)"
        )
    requires = project.get("requires-python")
    if isinstance(requires, str):
        deps.requires_python = requires
    tool_uv = data.get("tool", {}).get("uv", {})
    if isinstance(tool_uv, dict):
        sources = tool_uv.get("sources", {})
        for name, source in sources.items() if isinstance(sources, dict) else []:
            entries = source if isinstance(source, list) else [source]
            if any(isinstance(s, dict) and ("path" in s or "workspace" in s) for s in entries):
                raise InitError(
                    path,
                    f"tool.uv.sources.{name}",
                    "a local or workspace source cannot go into "
                    "a shared lock; publish it or put its folder in [model] paths",
                )
        if sources:
            deps.uv["sources"] = sources
        deps.uv.update({k: tool_uv[k] for k in UV_KEYS if k in tool_uv})
    deps.sources.append(str(path.resolve()))


def _table(value: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InitError(path, where, "must be a table")
    return value


def _strings(value: Any, path: Path, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InitError(path, where, "must be a list of requirement strings")
    return value


def _expand(item: str, own: str, extras: dict[str, Any], path: Path, where: str) -> list[str]:
    """`item`, or what the project's own extras it names hold (`myproject[train]`)."""
    text = _requirement(item, where, path)
    req = Requirement(text)
    if canonicalize_name(req.name) != own:
        return [text]
    out: list[str] = []
    for extra in sorted(req.extras):
        for i, r in enumerate(
            _strings(extras.get(extra, []), path, f"optional-dependencies.{extra}")
        ):
            out += _expand(r, own, extras, path, f"optional-dependencies.{extra}[{i}]")
    return out


def _group(
    groups: dict[str, Any],
    name: str,
    own: str,
    extras: dict[str, Any],
    path: Path,
    seen: tuple[str, ...],
) -> list[str]:
    if name in seen:
        raise InitError(path, f"dependency-groups.{name}", "includes itself")
    items = groups.get(name)
    if not isinstance(items, list):
        raise InitError(path, f"dependency-groups.{name}", "missing or not a list")
    out: list[str] = []
    for i, item in enumerate(items):
        where = f"dependency-groups.{name}[{i}]"
        if isinstance(item, dict) and isinstance(item.get("include-group"), str):
            out += _group(groups, item["include-group"], own, extras, path, (*seen, name))
        elif isinstance(item, str):
            out += _expand(item, own, extras, path, where)
        else:
            raise InitError(path, where, "must be a requirement or {include-group = ...}")
    return out


# --- conda environment.yml ----------------------------------------------------------------

# conda names whose PyPI package is named otherwise.
CONDA_TO_PYPI = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "py-opencv": "opencv-python",
    "opencv": "opencv-python",
    "matplotlib-base": "matplotlib",
    "tensorflow-base": "tensorflow",
    "pytables": "tables",
    "msgpack-python": "msgpack",
    "pyqt": "PyQt5",
    "python-graphviz": "graphviz",
    "lightgbm": "lightgbm",
    "py-xgboost": "xgboost",
    "ruamel_yaml": "ruamel.yaml",
}
# conda packages that are not Python packages: libraries, compilers, the interpreter's
# own parts. No PyPI package stands for them, so they are refused unless --drop names them
# (a wheel brings what it needs of them itself).
CONDA_ONLY = {
    "blas",
    "bzip2",
    "ca-certificates",
    "cudatoolkit",
    "cudnn",
    "cuda",
    "cuda-toolkit",
    "cuda-version",
    "ffmpeg",
    "gcc",
    "gxx",
    "gfortran",
    "icu",
    "intel-openmp",
    "ld_impl_linux-64",
    "llvm-openmp",
    "mkl",
    "nccl",
    "ncurses",
    "openblas",
    "openssl",
    "pytorch-cuda",
    "pytorch-mutex",
    "readline",
    "sqlite",
    "tbb",
    "tk",
    "tzdata",
    "xz",
    "zlib",
    "zstd",
    "libffi",
    "cpuonly",
}
# The installer's own packages: nothing to lock.
CONDA_TOOLS = {"pip", "setuptools", "wheel", "conda", "mamba"}
_CONDA_SPEC = re.compile(
    r"^(?:(?P<channel>[\w./-]+)::)?(?P<name>[A-Za-z0-9_.-]+)\s*(?P<version>[^\s\[]*)?\s*"
    r"(?P<build>\S*)$"
)


def read_environment(path: Path, deps: Dependencies, drop: list[str]) -> None:
    """Add a conda environment file's packages to main: its `pip:` section as pip reads it,
    its conda packages under their PyPI names; the `python` pin becomes requires-python."""
    data = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("dependencies"), list):
        raise InitError(path, "dependencies", "missing: not a conda environment file")
    dropped = {canonicalize_name(d) for d in drop}
    unmappable: list[str] = []
    for i, item in enumerate(data["dependencies"]):
        where = f"dependencies[{i}]"
        if isinstance(item, dict) and set(item) == {"pip"}:
            lines = item["pip"]
            if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
                raise InitError(path, f"{where}.pip", "must be a list of pip requirement lines")
            _pip_section(path, lines, deps)
            continue
        if not isinstance(item, str):
            raise InitError(path, where, "must be a conda package spec or a pip: list")
        match = _CONDA_SPEC.match(item.strip())
        if match is None:
            raise InitError(path, where, f"not a conda package spec: {item!r}")
        name = match.group("name").lower()
        version = _conda_version(match.group("version") or "", path, where, item)
        if name == "python":  # the minor version: a patch release is the machine's choice
            minor = re.match(r"^==(\d+\.\d+)", version)
            deps.requires_python = f"=={minor.group(1)}.*" if minor else (version or None)
            continue
        if name in CONDA_TOOLS or canonicalize_name(name) in dropped:
            continue
        if name in CONDA_ONLY or name.startswith(("lib", "_", "r-", "cuda-")):
            unmappable.append(item)
            continue
        pypi = CONDA_TO_PYPI.get(name, name)
        if pypi != name:
            deps.notes.append(f"{path.name}: conda's {name} is {pypi} on PyPI")
        deps.add(_requirement(pypi + version, where, path), "main")
    if unmappable:
        raise InitError(
            path,
            "dependencies",
            f"no PyPI package stands for {', '.join(unmappable)} (system libraries conda "
            "installs; a wheel brings its own): leave them out with --drop NAME, or remove "
            "them from the file",
        )
    deps.sources.append(str(path.resolve()))


def _pip_section(path: Path, lines: list[str], deps: Dependencies) -> None:
    """An environment file's `pip:` lines, read as a requirements file beside it would be
    (so `-r requirements.txt` there is relative to the environment file)."""
    _requirement_lines("\n".join(lines), path, path.parent, deps, "main", (path.resolve(),))


def _conda_version(version: str, path: Path, where: str, item: str) -> str:
    """A conda version spec as a PEP 440 specifier: `=1.26` and `1.26.*` are `==1.26.*`,
    `=1.26.4=build` is `==1.26.4` (the build string is conda's), operators stay."""
    version = version.strip()
    if not version:
        return ""
    if version.startswith("=") and not version.startswith("=="):
        version = version[1:].split("=", 1)[0]
        return f"=={version}" if version.endswith("*") else f"=={version}.*"
    if version.startswith("=="):
        return "==" + version[2:].split("=", 1)[0]
    if version[0].isdigit():
        version = version.split("=", 1)[0]
        return f"=={version}"
    if "|" in version:
        raise InitError(path, where, f"{item!r}: an 'or' of versions has no PEP 440 form")
    return version


def load_yaml(path: Path) -> Any:
    """A YAML file (MLmodel, environment.yml) as data, with the safe loader only."""
    try:
        import yaml
    except ImportError:
        raise InitError(
            path, None, "reading YAML needs PyYAML: pip install pyyaml (MLflow brings it)"
        ) from None
    try:
        return yaml.safe_load(_read_text(path))
    except yaml.YAMLError as e:
        raise InitError(path, None, f"not valid YAML: {e}") from None


def python_minor() -> str:
    """This interpreter's `==X.Y.*`: what a spec requires when no source says."""
    return f"=={sys.version_info.major}.{sys.version_info.minor}.*"
