"""Whether a set of pinned versions can be installed together, decided before building it.

`parity bisect` combines two locks (envlock.combine): some packages at the candidate's
version, the rest at the reference's. Not every combination is installable: scipy 1.11.4
requires numpy<1.28, so NumPy 2 cannot move without scipy. Building such a combination
and asking `uv pip check` afterwards costs a whole environment; this module answers the
question from metadata alone, a *resolution* of exact pins:

- `PinnedMetadata` gives each pinned version's `Requires-Dist`: from the `*.dist-info`
  of environments already built from the two locks (the reference and candidate venvs
  hold every version a combination can pin, so no network is needed), else from the
  index's PEP 658 `.metadata` file beside the lock's wheel, cached under the cache folder.
- `conflicts(pins, metadata, environment)` lists every requirement a pin breaks:
  `scipy 1.11.4 requires numpy<1.28.0,>=1.21.6` when numpy is pinned at 2.2.6.
- `installable_closure(...)` takes the packages asked to move and adds whatever they
  drag: each package a broken requirement joins to them that the two sides differ in,
  until nothing is broken (installable) or something stays broken however many differing
  packages move (not installable).

Markers are evaluated for the environment's interpreter (`marker_environment`), extras
requested by a requirement are followed. A package whose metadata cannot be found is
assumed to require nothing (and named in `unknown`): the build's `uv pip check` still
catches what this missed.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

import envlock.probe
from envlock.lockfile import LockedEnv

METADATA_CACHE = "metadata"  # the cache subfolder PEP 658 metadata files are kept in
_MAX_METADATA = 4 * 1024 * 1024  # a METADATA file larger than this is refused


def marker_environment(python: Path | None = None) -> dict[str, str]:
    """The PEP 508 marker variables of `python` (default: this interpreter), as the
    fingerprint probe records them (`envlock.probe.markers`, run there: `--markers`)."""
    if python is None:
        return {k: str(v) for k, v in default_environment().items()}
    proc = subprocess.run(
        [str(python), "-s", str(Path(envlock.probe.__file__)), "--markers"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        return {k: str(v) for k, v in default_environment().items()}
    return {str(k): str(v) for k, v in json.loads(proc.stdout).items()}


@dataclass(frozen=True)
class Conflict:
    """A pinned package's requirement that another pin breaks (`found` None: not pinned)."""

    requirer: str
    requirer_version: str
    requirement: str  # as `Requires-Dist` gives it, without its marker: `numpy<1.28.0,>=1.21.6`
    required: str
    found: str | None

    def describe(self) -> str:
        """`scipy 1.11.4 requires numpy<1.28.0,>=1.21.6` (and what it gets instead)."""
        got = f"not {self.required} {self.found}" if self.found else f"{self.required} is absent"
        return f"{self.requirer} {self.requirer_version} requires {self.requirement} ({got})"

    def short(self) -> str:
        """`scipy 1.11.4 requires numpy<1.28.0,>=1.21.6`."""
        return f"{self.requirer} {self.requirer_version} requires {self.requirement}"


class PinnedMetadata:
    """`Requires-Dist` of pinned versions: from installed `*.dist-info` folders first, else
    from the PEP 658 `.metadata` file of one of the lock's wheels (cached)."""

    def __init__(
        self,
        site_packages: Iterable[Path] = (),
        locks: Sequence[LockedEnv] = (),
        cache_dir: Path | None = None,
        network: bool = True,
    ) -> None:
        self._installed: dict[tuple[str, str], Path] = {}
        for folder in site_packages:
            for info in sorted(folder.glob("*.dist-info")) if folder.is_dir() else ():
                name, sep, version = info.name[: -len(".dist-info")].partition("-")
                if sep and (info / "METADATA").is_file():
                    self._installed.setdefault(
                        (canonicalize_name(name), version), info / "METADATA"
                    )
        self._urls: dict[tuple[str, str], list[str]] = {}
        for lock in locks:
            for p in lock.packages:
                urls = [w.url for w in p.wheels if w.url]
                self._urls.setdefault((p.name, p.version), urls)
        self._cache = cache_dir / METADATA_CACHE if cache_dir else None
        self._network = network
        self._parsed: dict[tuple[str, str], list[Requirement] | None] = {}

    def requires(self, name: str, version: str) -> list[Requirement] | None:
        """Every `Requires-Dist` of `name==version` (markers included), None if unknown."""
        key = (canonicalize_name(name), version)
        if key not in self._parsed:
            text = self._text(key)
            self._parsed[key] = None if text is None else _requirements(text)
        return self._parsed[key]

    def _text(self, key: tuple[str, str]) -> str | None:
        path = self._installed.get(key) or self._installed.get((key[0], _normal(key[1])))
        if path is not None:
            return path.read_text(encoding="utf-8", errors="replace")
        for url in self._urls.get(key, []):
            text = self._fetch(url + ".metadata")
            if text is not None:
                return text
        return None

    def _fetch(self, url: str) -> str | None:
        cached = None
        if self._cache is not None:
            cached = self._cache / hashlib.sha256(url.encode()).hexdigest()[:32]
            if cached.is_file():
                return cached.read_text(encoding="utf-8", errors="replace")
        if not self._network or not url.startswith("https://"):
            return None
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data: bytes = response.read(_MAX_METADATA + 1)
        except OSError:
            return None
        if len(data) > _MAX_METADATA:
            return None
        text = data.decode("utf-8", errors="replace")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(cached)
        return text


def _normal(version: str) -> str:
    try:
        return str(Version(version))
    except InvalidVersion:
        return version


def _requirements(metadata: str) -> list[Requirement]:
    message = email.parser.Parser().parsestr(metadata, headersonly=True)
    found = []
    for line in message.get_all("Requires-Dist") or []:
        try:
            found.append(Requirement(str(line)))
        except InvalidRequirement:
            continue
    return found


def conflicts(
    pins: Mapping[str, str],
    metadata: PinnedMetadata,
    environment: Mapping[str, str],
    unknown: set[str] | None = None,
) -> list[Conflict]:
    """Every requirement of a pinned version that the other pins break, sorted; packages
    whose metadata is unknown are added to `unknown` (when given)."""
    found: set[Conflict] = set()
    queue: list[tuple[str, str]] = [(name, "") for name in pins]
    seen: set[tuple[str, str]] = set()
    while queue:
        name, extra = queue.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        requirements = metadata.requires(name, pins[name])
        if requirements is None:
            if unknown is not None:
                unknown.add(name)
            continue
        for req in requirements:
            if req.marker is not None and not req.marker.evaluate({**environment, "extra": extra}):
                continue
            if extra and (req.marker is None or "extra" not in str(req.marker)):
                continue  # the base requirements are checked with extra ""
            required = canonicalize_name(req.name)
            version = pins.get(required)
            if version is None or not req.specifier.contains(version, prereleases=True):
                text = f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}"
                text = f"{canonicalize_name(text)}{req.specifier}"
                found.add(Conflict(name, pins[name], text, required, version))
                continue
            queue.extend((required, canonicalize_name(e)) for e in req.extras)
    return sorted(found, key=lambda c: (c.requirer, c.required, c.requirement))


@dataclass(frozen=True)
class Closure:
    """What moving `asked` takes: `packages` (asked, plus what they drag), why each dragged
    package had to come (`dragged`: name -> the requirement that joins it), and, when no
    set of differing packages makes it installable, the requirements still broken."""

    asked: tuple[str, ...]
    packages: tuple[str, ...]
    dragged: dict[str, Conflict] = field(default_factory=dict)
    broken: list[Conflict] = field(default_factory=list)
    resolutions: int = 0
    unknown: tuple[str, ...] = ()

    @property
    def installable(self) -> bool:
        return not self.broken

    def drags(self) -> dict[str, dict[str, Conflict]]:
        """Asked package -> {dragged package: why}: the one whose move broke the requirement
        (a dragged package dragging another is attributed to the asked one it came with)."""
        origin: dict[str, str] = {p: p for p in self.asked}
        out: dict[str, dict[str, Conflict]] = {}
        for name, why in self.dragged.items():  # in the order they were added
            mover = why.required if why.requirer == name else why.requirer
            root = origin.get(mover, mover)
            origin[name] = root
            out.setdefault(root, {})[name] = why
        return out


def installable_closure(
    reference: Mapping[str, str],
    candidate: Mapping[str, str],
    take: Iterable[str],
    metadata: PinnedMetadata,
    environment: Mapping[str, str],
) -> Closure:
    """Move `take` (names) from `reference`'s pins to `candidate`'s, and every differing
    package a broken requirement joins to them, until the pins are consistent.

    `reference` and `candidate` map names to versions (a name missing: not installed)."""
    differing = {n for n in set(reference) | set(candidate) if reference.get(n) != candidate.get(n)}
    asked = tuple(str(canonicalize_name(n)) for n in take)
    moved: set[str] = set(asked)
    dragged: dict[str, Conflict] = {}
    unknown: set[str] = set()
    resolutions = 0
    while True:
        pins = {
            n: v
            for n in set(reference) | set(candidate)
            if (v := (candidate if n in moved else reference).get(n)) is not None
        }
        resolutions += 1
        broken = conflicts(pins, metadata, environment, unknown)
        if not broken:
            return Closure(
                asked, tuple(sorted(moved)), dragged, [], resolutions, tuple(sorted(unknown))
            )
        added = False
        for c in broken:
            for name in (c.required, c.requirer):
                if name in differing and name not in moved:
                    moved.add(name)
                    dragged.setdefault(name, c)
                    added = True
                    break
        if not added:
            return Closure(
                asked, tuple(sorted(moved)), dragged, broken, resolutions, tuple(sorted(unknown))
            )


def site_packages(root: Path | None) -> list[Path]:
    """The `site-packages` folders of a venv rooted at `root`."""
    if root is None:
        return []
    return sorted({*root.glob("lib/python*/site-packages"), *root.glob("Lib/site-packages")})


__all__ = [
    "Closure",
    "Conflict",
    "PinnedMetadata",
    "conflicts",
    "installable_closure",
    "marker_environment",
    "site_packages",
]
