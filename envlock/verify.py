"""Check an environment's fingerprint against a lock group: missing, extra, wrong version.

Installer tooling that the lock does not name (the pip that `python -m venv` seeds) is
reported as benign rather than extra: it is how the environment was made, not drift. A
lock that pins it still gets it checked, and `strict` counts unnamed tooling as extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from envlock.names import canonical

if TYPE_CHECKING:
    from pathlib import Path

    from envlock.lockfile import LockedEnv

Problem = Literal["missing", "extra", "version", "files", "build"]

# What installers seed into an environment whatever the lock says: `python -m venv` seeds pip
# (and setuptools before Python 3.12); virtualenv and `uv venv --seed` also setuptools and
# wheel on older Pythons; distribute is setuptools' old fork.
INSTALLER_TOOLING = frozenset({"pip", "setuptools", "wheel", "distribute"})


@dataclass(frozen=True)
class Mismatch:
    """One package where the environment is not what the lock says."""

    name: str
    problem: Problem
    locked: str | None
    installed: str | None
    # Installer tooling the lock does not name: listed, but not a failure.
    benign: bool = False

    def describe(self) -> str:
        """One line a person can act on."""
        if self.benign:
            return f"{self.name}: installed {self.installed}, installer tooling not in the lock"
        if self.problem == "missing":
            return f"{self.name}: locked {self.locked}, not installed"
        if self.problem == "extra":
            return f"{self.name}: installed {self.installed}, not in the lock"
        if self.problem == "build":
            return f"{self.name}: locked build {self.locked}, installed build {self.installed}"
        if self.problem == "files":
            return f"{self.name} {self.installed}: installed files differ from the locked wheel's"
        return f"{self.name}: locked {self.locked}, installed {self.installed}"


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def wheel_files_digest(wheel: Path) -> str | None:
    """The probe's files digest of what installing `wheel` puts in site-packages."""
    import zipfile

    from envlock.probe import files_digest

    with zipfile.ZipFile(wheel) as zf:
        records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            return None
        text = zf.read(records[0]).decode("utf-8")
    # Files under .data/ are installed elsewhere (scripts, headers), as the probe skips them.
    kept = "\n".join(line for line in text.splitlines() if ".data/" not in line.split(",")[0])
    return files_digest(kept)


def verify_fingerprint(
    fingerprint: dict[str, Any],
    lock: LockedEnv,
    group: str,
    wheelhouse: Path | None = None,
    *,
    strict: bool = False,
) -> list[Mismatch]:
    """Every difference between the installed distributions and the lock's `group`.

    With a wheelhouse (`envlock fetch`), installed files are also checked against the
    locked wheels' RECORD hashes. Installer tooling the lock does not name comes last,
    `benign` (not a failure; see `failures`), unless `strict`. A source tree the lock names
    (the project itself) may be installed or not.
    """
    from envlock.locked import fingerprint_markers

    # The lock's markers are evaluated for the environment fingerprinted, not for this host.
    markers = fingerprint_markers(fingerprint)
    locked: dict[str, str] = lock.versions(group, markers)
    digests: dict[str, Any] = {
        canonical(str(d["name"])): d.get("files_sha256")
        for d in fingerprint.get("distributions", [])
        if isinstance(d, dict) and "name" in d
    }
    wheels = _wheels(wheelhouse) if wheelhouse else {}
    installed: dict[str, str] = {
        canonical(str(d["name"])): str(d["version"])
        for d in fingerprint.get("distributions", [])
        if isinstance(d, dict) and "name" in d and "version" in d
    }
    # envlock installs no source tree; an environment that has the project installed (its
    # own development venv) is still what the lock describes.
    for source in lock.sources_in(group, markers):
        installed.pop(canonical(source.name), None)
    problems = compare_versions(locked, installed, strict=strict)
    for name in sorted(set(locked) & set(installed)):
        if name in wheels and digests.get(name) and _same(locked[name], installed[name]):
            expected = wheel_files_digest(wheels[name])
            if expected is not None and expected != digests[name]:
                problems.append(Mismatch(name, "files", locked[name], installed[name]))
    return _ordered(problems)


def compare_versions(
    expected: dict[str, str], installed: dict[str, str], *, strict: bool = False
) -> list[Mismatch]:
    """Missing, extra and wrong-version packages between what is expected and installed.

    An extra package that is installer tooling is `benign` unless `strict`.
    """
    problems = []
    for name in sorted(set(expected) | set(installed)):
        want, have = expected.get(name), installed.get(name)
        if have is None:
            problems.append(Mismatch(name, "missing", want, None))
        elif want is None:
            tooling = not strict and canonical(name) in INSTALLER_TOOLING
            problems.append(Mismatch(name, "extra", None, have, benign=tooling))
        elif not _same(want, have):
            problems.append(Mismatch(name, "version", want, have))
    return problems


def failures(mismatches: list[Mismatch]) -> list[Mismatch]:
    """The mismatches that fail verification: all but the benign ones."""
    return [m for m in mismatches if not m.benign]


def _ordered(mismatches: list[Mismatch]) -> list[Mismatch]:
    """Failures by name, then the benign ones by name: listed apart, as they are reported."""
    return sorted(mismatches, key=lambda m: (m.benign, m.name))


def _wheels(folder: Path) -> dict[str, Path]:
    """Wheel files under a wheelhouse, by canonical project name."""
    from packaging.utils import parse_wheel_filename

    found: dict[str, Path] = {}
    for wheel in folder.rglob("*.whl"):
        try:
            name = parse_wheel_filename(wheel.name)[0]
        except ValueError:
            continue
        found[canonical(name)] = wheel
    return found


def verify_conda_prefix(
    prefix: Path, lock: LockedEnv, group: str, *, strict: bool = False
) -> list[Mismatch]:
    """Differences between a conda environment (its conda-meta) and a conda-lock group.

    Conda packages are checked by name, version and build; pip packages by name and version
    against the environment's site-packages. Installer tooling is as in `verify_fingerprint`.
    """
    from envlock.installed import installed_versions
    from envlock.probe import conda_packages

    records = conda_packages(str(prefix))
    if records is None:
        from envlock.errors import EnvlockError

        raise EnvlockError(f"{prefix} is not a conda environment (no conda-meta folder)")
    wanted = lock.packages_in(group)
    conda_want = {p.name: p for p in wanted if p.manager == "conda"}
    conda_have = {str(r["name"]): r for r in records if r.get("name")}
    problems = compare_versions(
        {n: p.version for n, p in conda_want.items()},
        {n: str(r.get("version")) for n, r in conda_have.items()},
        strict=strict,
    )
    for name in sorted(set(conda_want) & set(conda_have)):
        want, have = conda_want[name].build, conda_have[name].get("build")
        if (
            want
            and have
            and want != have
            and _same(conda_want[name].version, str(conda_have[name].get("version")))
        ):
            problems.append(Mismatch(name, "build", want, str(have)))
    site = [str(p) for p in prefix.glob("lib/python*/site-packages")]
    pip_have = installed_versions(site)
    pip_want = {p.name: p.version for p in wanted if p.manager == "pip"}
    conda_names = {canonical(n) for n in conda_have}
    for m in compare_versions(pip_want, pip_have, strict=strict):
        if m.problem == "extra" and m.name in conda_names:
            continue  # a Python package conda installed, checked above
        problems.append(m)
    return _ordered(problems)
