"""Diff two environments (fingerprints or locks), classify every difference, explain it.

Both sides are first normalized into one shape, two levels deep (packages, interpreter,
platform, CPU features, numerics environment variables, numpy/torch/thread-pool settings)
and compared key by key; each difference gets a severity (`numerics`, `runtime`,
`benign`, `other`) and one line a person can act on. A lock has only packages and the
interpreter it pins, so a lock compared with a fingerprint is compared on those alone.
`group` then marks what follows from another difference (`caused_by`) and puts it right
after its root cause.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from envlock.classify import Severity, severity
from envlock.errors import EnvlockError, LockFileError
from envlock.locked import fingerprint_markers
from envlock.lockfile import MAIN, LockedEnv, read_lock
from envlock.probe import TORCH_SETTINGS

ABSENT = None


@dataclass(frozen=True)
class Difference:
    """One way two environments differ, with how much it matters and what to do.

    Structured, so that a program reads `section`, `key` and `why` rather than parsing the
    `component` and `explanation` lines, which are for people (and `envlock diff`).
    """

    section: str  # "package", "python", "platform", "cpu", "env", "numpy", "torch", "threads"
    key: str  # "numpy", "version", "avx512f", "OMP_NUM_THREADS", ...; "" for a whole section
    a: str | None
    b: str | None
    severity: Severity
    why: str  # why it matters and what to do; "" when there is nothing to say
    # The difference this one follows from ("package torch"): a package installed only
    # because a differing package requires it, numpy's BLAS when numpy's version differs.
    caused_by: str | None = None

    @property
    def component(self) -> str:
        """`section key` ("package numpy", "cpu avx512f"), or the section alone."""
        return f"{self.section} {self.key}" if self.key else self.section

    @property
    def explanation(self) -> str:
        """One line a person can act on: what differs, then why it matters."""
        what = self._what()
        return f"{what}; {self.why}" if self.why else f"{what}."

    def _what(self) -> str:
        """What differs, as the start of an explanation: `numpy: version differs (1 vs 2)`."""
        shown = f"{self.a or 'absent'} vs {self.b or 'absent'}"
        if not self.key:  # a whole section, recorded on one side only
            return f"{self.section}: {shown}"
        if self.section == "package":
            if self.a is None or self.b is None:
                where = "the second" if self.a is None else "the first"
                return f"{self.key}: installed only in {where} environment"
            major = "major " if _major(self.a) != _major(self.b) else ""
            return f"{self.key}: {major}version differs ({shown})"
        if self.section == "cpu":
            return f"CPU feature {self.key}: {shown}"
        return f"{self.component}: {shown}"

    def to_json(self) -> dict[str, Any]:
        """The difference as `envlock diff --json` prints it: the fields it has always
        printed (`component`, `explanation`: lines for people) and the structured ones a
        program reads (`section`, `key`, `why`)."""
        data: dict[str, Any] = {
            "component": self.component,
            "section": self.section,
            "key": self.key,
            "a": self.a,
            "b": self.b,
            "severity": self.severity,
            "explanation": self.explanation,
            "why": self.why,
        }
        if self.caused_by:  # only on a derived difference
            data["caused_by"] = self.caused_by
        return data


@dataclass(frozen=True)
class Side:
    """One side of a diff, normalized, and what it was read from."""

    label: str
    data: dict[str, Any]
    kind: str  # "fingerprint" or "lock"
    # Package -> the names its Requires-Dist gives (fingerprints record them; locks do not).
    requires: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # A fingerprint's environment markers (`locked.fingerprint_markers`); a lock's group.
    markers: dict[str, str] | None = None
    lock: LockedEnv | None = None
    group: str = MAIN


def load_side(spec: str, default_group: str = MAIN) -> Side:
    """Read `PATH` (a fingerprint JSON or a lock) or `LOCK#GROUP` into a normalized side."""
    path_s, _, group = spec.partition("#")
    path = Path(path_s)
    if not path.is_file():
        raise LockFileError(path, "file not found")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LockFileError(path, f"not a fingerprint (invalid JSON: {e})") from None
        if not isinstance(data, dict) or "distributions" not in data:
            raise LockFileError(path, "not a fingerprint (no 'distributions')")
        return Side(
            spec,
            from_fingerprint(data),
            "fingerprint",
            requires_of(data),
            markers=fingerprint_markers(data),
        )
    lock = read_lock(path)
    group = group or default_group
    return Side(spec, from_lock(lock, group), "lock", lock=lock, group=group)


def load_sides(a: str, b: str) -> tuple[Side, Side]:
    """Both sides of a diff (`load_side`); a lock diffed against a fingerprint has its
    markers evaluated for the fingerprinted environment (its Python, its platform), not for
    the host running the diff."""
    first, second = load_side(a), load_side(b)
    return for_each_other(first, second), for_each_other(second, first)


def for_each_other(side: Side, other: Side) -> Side:
    """`side`, a lock's packages chosen for `other`'s environment when `other` is a
    fingerprint that tells its markers; else `side` as it is."""
    if side.lock is None or other.markers is None:
        return side
    data = from_lock(side.lock, side.group, other.markers)
    return dataclasses.replace(side, data=data)


def from_fingerprint(fp: dict[str, Any]) -> dict[str, Any]:
    """The comparable parts of a fingerprint."""
    python = fp.get("python") or {}
    plat = fp.get("platform") or {}
    norm: dict[str, Any] = {
        "package": {
            str(d["name"]): str(d["version"])
            for d in fp.get("distributions", [])
            if isinstance(d, dict) and "name" in d and "version" in d
        },
        "python": {
            k: python.get(k) for k in ("version", "implementation", "compiler") if k in python
        },
        "platform": {k: plat.get(k) for k in ("system", "machine", "libc") if k in plat},
        "env": dict(fp.get("env") or {}),
    }
    cpu = fp.get("cpu") or {}
    if "flags" in cpu:
        norm["cpu"] = {flag: "yes" for flag in cpu["flags"]}
    numpy = fp.get("numpy") or {}
    if numpy:
        blas = numpy.get("blas") or {}
        lapack = numpy.get("lapack") or {}
        norm["numpy"] = {
            "blas": _library(blas, blas),
            "lapack": _library(lapack, blas),
            "simd": ",".join(numpy.get("simd_found") or []) or None,
        }
    torch = fp.get("torch") or {}
    if torch:
        norm["torch"] = {k: torch.get(k) for k in TORCH_SETTINGS if k in torch}
        devices = torch.get("devices")
        if devices:
            norm["torch"]["devices"] = ", ".join(
                f"{d.get('name')} sm{''.join(map(str, d.get('capability', [])))}" for d in devices
            )
    pools = fp.get("threadpools")
    if pools:
        norm["threads"] = {
            f"{p.get('internal_api')} ({p.get('user_api')})": p.get("num_threads") for p in pools
        }
    return _stringify(norm)


def requires_of(fp: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Package -> the package names it requires, as a fingerprint recorded them (bounded)."""
    found: dict[str, tuple[str, ...]] = {}
    for d in fp.get("distributions", []):
        if isinstance(d, dict) and isinstance(d.get("requires"), list) and "name" in d:
            found[str(d["name"])] = tuple(str(n) for n in d["requires"][:MAX_REQUIRES])
    return found


MAX_REQUIRES = 200


def _library(lib: Any, blas: Any) -> str | None:
    """`name version` of numpy's BLAS or LAPACK; Meson's anonymous `dep<id>` (NumPy 1.26's
    LAPACK, declared inside its own build from its BLAS) as the BLAS it comes from."""
    if not isinstance(lib, dict) or not lib:
        return None
    name, version = lib.get("name"), lib.get("version")
    if isinstance(name, str) and re.fullmatch(r"dep\d+", name):
        if not isinstance(blas, dict) or not blas.get("name"):
            return None  # an unnamed dependency says nothing
        name, version = f"{blas.get('name')} (via blas)", blas.get("version")
    return f"{name} {version}" if version else f"{name}"


def from_lock(lock: LockedEnv, group: str, markers: dict[str, str] | None = None) -> dict[str, Any]:
    """The comparable parts of a lock group: its packages (for the environment `markers`
    describe; default: this host) and the interpreter it allows."""
    lock.check_group(group)
    norm: dict[str, Any] = {"package": lock.versions(group, markers)}
    if lock.requires_python:
        norm["python"] = {"version": lock.requires_python}
    return _stringify(norm)


def _stringify(norm: dict[str, Any]) -> dict[str, Any]:
    """Every leaf as a string (None dropped), so a value compares the same from any source."""
    return {
        str(k): _stringify(v) if isinstance(v, dict) else str(v)
        for k, v in norm.items()
        if v is not None
    }


def diff(a: Side, b: Side) -> list[Difference]:
    """Every classified difference between two sides, in component order.

    Each key of each section is compared on its own, so every package that differs is
    listed, however few names the two sides share (a lock of ten packages against the
    fingerprint of an environment of three hundred).
    """
    left, right = a.data, b.data
    if "lock" in (a.kind, b.kind):
        # A lock knows packages and the interpreter; nothing else can be compared.
        lock_side = a.data if a.kind == "lock" else b.data
        left = _only(left, lock_side)
        right = _only(right, lock_side)
    differences = []
    for section, key, va, vb in _differing(left, right):
        if (section, key) == ("python", "version") and _satisfies(va, vb):
            continue  # a lock's requires-python that the interpreter meets
        if (section, key) in _RECORDED_SINCE and None in (va, vb):
            continue  # an older probe's fingerprint (a bundle) did not record it
        sev, why = classify(section, key, va, vb)
        differences.append(Difference(section, key, va, vb, sev, why))
    differences.sort(key=lambda d: d.component)
    differences = [_dispatched(d, a, b, differences) for d in differences]
    return group(differences, a.requires, b.requires)


# Keys older probes did not record: absent on one side is not a difference.
_RECORDED_SINCE = {("torch", "cpu_capability")}

# The kernels a library dispatches to by CPU, and the variable that overrides its choice:
# these differ because that setting or the CPU differs, not the library's version.
DISPATCH = {
    ("numpy", "simd"): "NPY_DISABLE_CPU_FEATURES",
    ("torch", "cpu_capability"): "ATEN_CPU_CAPABILITY",
}


def _dispatched(d: Difference, a: Side, b: Side, differences: list[Difference]) -> Difference:
    """A dispatch difference (numpy's SIMD line, torch's CPU capability) said as what it is:
    a CPU setting of that library, naming the variable set or the CPU features that differ,
    and `caused_by` that variable (else the first CPU feature); not the library's version,
    unless that differs and nothing else does (then `group` puts it under the version)."""
    variable = DISPATCH.get((d.section, d.key))
    if variable is None:
        return d
    components = {x.component: x for x in differences}
    setting = components.get(f"env {variable}")
    cpus = [x for x in differences if x.section == "cpu" and x.key]
    caused_by: str | None = None
    if setting is not None:
        cause = ", ".join(
            f"{variable}={value} in {side.label}"
            for side, value in ((a, setting.a), (b, setting.b))
            if value is not None
        )
        caused_by = setting.component
    elif cpus:
        cause = "the CPUs differ: " + ", ".join(
            f"{x.key} {x.a or 'absent'} vs {x.b or 'absent'}" for x in cpus[:4]
        )
        caused_by = cpus[0].component
    elif f"package {d.section}" in components:
        return d  # it follows the version (`group`)
    else:
        cause = f"same CPU features and {variable} on both sides"
    if d.section == "numpy":
        what = f"numpy's dispatched SIMD features differ: {cause}"
    else:
        what = f"torch CPU capability {d.a or 'absent'} vs {d.b or 'absent'} ({cause})"
    why = (
        f"{what}. A CPU setting of {d.section}, not its version: its kernels differ and can "
        f"change the last bits. Run both on the same CPU, {variable} set the same (or unset)."
    )
    return dataclasses.replace(d, why=why, caused_by=caused_by)


# Library sections whose values follow from the package's version: when the version
# differs, these differ because of it.
_FOLLOWS_PACKAGE = {
    "numpy": ("blas", "lapack", "simd", ""),
    "torch": ("cuda", "cudnn", "cpu_capability", ""),
}


def group(
    differences: list[Difference],
    requires_a: dict[str, tuple[str, ...]],
    requires_b: dict[str, tuple[str, ...]],
) -> list[Difference]:
    """Mark each difference that follows from another (`caused_by`) and order them root
    causes first, each followed by what follows from it.

    A package installed on one side only, which every package requiring it there is a
    differing package, comes with those: it is grouped under the first of them (and under
    that one's own cause, transitively), with the requirement in its `why`. numpy's BLAS,
    LAPACK and SIMD lines (torch's CUDA and cuDNN) follow numpy's (torch's) version; a
    dispatch difference that `_dispatched` put under the variable that chose it
    (`NPY_DISABLE_CPU_FEATURES`, `ATEN_CPU_CAPABILITY`) or the CPU stays there.
    A package whose version differs on both sides is never grouped: a requirement does not
    say which of two changed packages moved the other."""
    packages = {d.key: d for d in differences if d.section == "package" and d.key}
    parent: dict[str, str] = {}
    for name, d in packages.items():
        if d.a is not None and d.b is not None:
            continue
        requires = requires_a if d.a is not None else requires_b
        requirers = sorted(q for q, names in requires.items() if name in names and q != name)
        if requirers and all(q in packages for q in requirers):
            changed = [q for q in requirers if packages[q].a and packages[q].b]
            parent[name] = (changed or requirers)[0]

    def root(name: str) -> str:
        seen = {name}
        while name in parent and parent[name] not in seen:
            name = parent[name]
            seen.add(name)
        return name

    marked = []
    for d in differences:
        cause: str | None = None
        why = d.why
        if d.section == "package" and d.key in parent:
            top = root(d.key)
            cause = f"package {top}"
            via = parent[d.key]
            why = f"comes with {top} ({via} requires it)"
        elif d.caused_by is not None:  # a dispatch difference, under its setting or CPU
            marked.append(d)
            continue
        elif d.key in _FOLLOWS_PACKAGE.get(d.section, ()) and d.section in packages:
            cause = f"package {d.section}"
            why = f"follows {d.section}'s version; {d.why}" if d.why else d.why
        marked.append(dataclasses.replace(d, caused_by=cause, why=why) if cause else d)
    roots = [d for d in marked if d.caused_by is None]
    ordered: list[Difference] = []
    for r in roots:
        ordered.append(r)
        ordered += [d for d in marked if d.caused_by == r.component]
    ordered += [d for d in marked if d not in ordered]  # a cause that is not listed itself
    return ordered


def _differing(
    left: dict[str, Any], right: dict[str, Any]
) -> list[tuple[str, str, str | None, str | None]]:
    """(section, key, left value, right value) for every normalized value that differs.

    A section one side lacks altogether (a probe run without imports has no `numpy`) is one
    difference, "present" against absent: that side did not record it, which says nothing
    about each of its keys.
    """
    found = []
    for section in sorted(set(left) | set(right)):
        one, two = left.get(section), right.get(section)
        if one is None or two is None:
            found.append(
                (
                    section,
                    "",
                    None if one is None else "present",
                    None if two is None else "present",
                )
            )
        elif not (isinstance(one, dict) and isinstance(two, dict)):
            if one != two:
                found.append((section, "", _text(one), _text(two)))
        else:
            for key in sorted(set(one) | set(two)):
                va, vb = _text(one.get(key)), _text(two.get(key))
                if va != vb:
                    found.append((section, key, va, vb))
    return found


def _text(value: Any) -> str | None:
    """A normalized value as one string (None for absent): leaves are strings already, but a
    fingerprint is not trusted to nest only where the probe does."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _only(norm: dict[str, Any], lock: dict[str, Any]) -> dict[str, Any]:
    """The parts of `norm` a lock can speak to: its sections, and within `python` its keys."""
    kept = {k: v for k, v in norm.items() if k in lock}
    if "python" in kept:
        kept["python"] = {k: v for k, v in kept["python"].items() if k in lock["python"]}
    return kept


def _satisfies(a: str | None, b: str | None) -> bool:
    """Whether one side is a version specifier the other side's version meets."""
    for spec, version in ((a, b), (b, a)):
        if spec and version and spec[0] in "<>=!~":
            try:
                return Version(version) in SpecifierSet(spec)
            except (InvalidSpecifier, InvalidVersion):
                return False
    return False


# What a release of these packages can change, said so that it holds for any two releases.
_PACKAGE_NOTES = {
    "numpy": "numpy releases change SIMD kernels and the rounding of some functions",
    "torch": "kernels and defaults change between torch releases",
    "pillow": "resampling filters and defaults change between Pillow releases",
    "scipy": "scipy's algorithms and its BLAS/LAPACK change between releases",
}
# What only a change from one major version to another does: (package, major, major) -> note.
_MAJOR_NOTES = {
    ("numpy", "1", "2"): "NumPy 2 changed type promotion (NEP 50): NumPy scalars keep their "
    "dtype (a float64 scalar no longer downcasts to an array's float32; an int64 one no longer "
    "leaves uint8 arithmetic to wrap around), so preprocessing can change dtype, last bits or "
    "whole values",
}


def _package_note(name: str, a: str | None, b: str | None) -> str:
    """What a difference of package `name` between versions `a` and `b` can change: a note
    that only a change across major versions makes true is given only for those versions."""
    if a is None or b is None:
        return "it can change computed values"  # on one side only: no release to compare
    majors = {_major(a), _major(b)}
    for (package, *across), note in _MAJOR_NOTES.items():
        if package == name and majors == set(across):
            return note
    return _PACKAGE_NOTES.get(name) or "it can change computed values"


def classify(
    section: str, key: str, a: str | None = None, b: str | None = None
) -> tuple[Severity, str]:
    """Severity of a difference in `section` `key`, and why it matters: what to do, in one
    line. A package's note depends on its versions `a` and `b` where they are known."""
    if section == "package":
        sev = severity(key)
        if sev == "numerics":
            note = _package_note(key, a, b)
            return sev, f"{note}. Install the same version in both (one lock)."
        if sev == "benign":
            return sev, "tooling, does not reach a model's numbers."
        return sev, "check whether the model uses it."
    if section in ("python", "platform"):
        return "runtime", "build both environments from the same base and interpreter."
    if section == "cpu":
        return "numerics", (
            "numpy, BLAS and torch pick kernels by CPU feature, "
            "so results can differ in the last bits across these machines."
        )
    if section == "threads" or (section == "torch" and key == "threads") or "THREADS" in key:
        return "numerics", (
            "thread counts change summation order. Pin them (parity's run.threads, "
            "or OMP/MKL/OPENBLAS_NUM_THREADS) to the same value."
        )
    if section == "torch" and key.startswith("tf32"):
        return "numerics", (
            "TF32 rounds GPU matmul/conv inputs to 10 mantissa bits. "
            "Set torch.backends flags (or NVIDIA_TF32_OVERRIDE=0) the same on both sides."
        )
    if section in ("torch", "numpy"):
        return "numerics", "this changes which kernels compute the numbers."
    if section == "env":
        if key in ("CUDA_VISIBLE_DEVICES",):
            return "runtime", "a different set of GPUs is visible."
        if key == "NPY_DISABLE_CPU_FEATURES":
            return "numerics", (
                "it turns off numpy's SIMD kernels (a CPU setting of numpy, not its version), "
                "which can change the last bits. Set it the same in both environments."
            )
        if key == "ATEN_CPU_CAPABILITY":
            return "numerics", (
                "it chooses torch's CPU kernels (AVX512, AVX2, DEFAULT: a CPU setting of "
                "torch, not its version), which can change the last bits. Set it the same "
                "in both environments."
            )
        return "numerics", "set it the same in both environments."
    return "other", ""


def _major(version: str) -> str:
    try:
        return str(Version(version).major)
    except InvalidVersion:
        return version.split(".")[0]


def summarize(differences: list[Difference]) -> dict[str, int]:
    """How many differences of each severity."""
    counts: dict[str, int] = {}
    for d in differences:
        counts[d.severity] = counts.get(d.severity, 0) + 1
    return counts


def read_fingerprint(path: Path) -> dict[str, Any]:
    """A fingerprint JSON file, or `EnvlockError`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EnvlockError(f"{path}: cannot read fingerprint: {e}") from None
    if not isinstance(data, dict):
        raise EnvlockError(f"{path}: a fingerprint is a JSON object")
    return data
