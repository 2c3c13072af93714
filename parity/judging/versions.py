"""Version differences between two environments, judged: every way envlock's diff says
their fingerprints differ, with whether the locks explain it (a group-only package) and
whether the config's policy counts it against the check."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from packaging.utils import canonicalize_name

from envlock.diff import Side, from_fingerprint, requires_of
from envlock.diff import diff as diff_environments
from envlock.lockfile import MAIN
from parity.config import ParityConfig
from parity.runs.replay import FROM_LOCK, RECORDED_APART, EnvRun, LockView, recorded


@dataclass(frozen=True)
class VersionDiff:
    """One package (or the interpreter) whose version differs between the environments."""

    name: str
    versions: dict[str, str | None]
    severity: str
    expected: bool
    note: str
    fails: bool = False  # whether the policy counts it against the check
    # The difference this one follows from (its `name`): a package installed only because
    # a differing package requires it, numpy's BLAS lines when numpy's version differs.
    # None for a root cause; only derived differences carry it in the JSON report.
    caused_by: str | None = None

    def reason(self, derived: Sequence[VersionDiff] = ()) -> str:
        """Why it fails the check, as the report's reasons say it; `derived`, the
        differences that follow from this one, are counted in the same reason."""
        shown = ", ".join(f"{v or 'absent'} ({k})" for k, v in self.versions.items())
        text = f"{self.name} differs: {shown} [{self.severity}]"
        if derived:
            names = [d.name for d in derived]
            listed = ", ".join(names[:5]) + (
                f", ... ({len(names) - 5} more)" if len(names) > 5 else ""
            )
            text += f", with {len(names)} difference(s) that follow from it: {listed}"
        return text


def version_reasons(diffs: Sequence[VersionDiff]) -> list[str]:
    """One reason per root cause that fails, or has a failing difference following from it
    (those are counted in its reason, not listed apart)."""
    roots = {d.name for d in diffs if d.caused_by is None}
    reasons = []
    for d in diffs:
        if d.caused_by is not None and d.caused_by in roots:
            continue
        derived = [x for x in diffs if x.caused_by == d.name and d.caused_by is None]
        if d.fails or any(x.fails for x in derived):
            reasons.append(d.reason([x for x in derived if x.fails]))
    return reasons


def judge_versions(config: ParityConfig, ref: EnvRun, cand: EnvRun) -> list[VersionDiff]:
    """Every version difference, each marked `fails` when it is unexpected and of a
    severity the config fails on (`fail_on_version_diffs`)."""
    return [
        dataclasses.replace(d, fails=not d.expected and d.severity in config.fail_on_version_diffs)
        for d in version_diffs(ref, cand)
    ]


def version_diffs(ref: EnvRun, cand: EnvRun) -> list[VersionDiff]:
    """Every way the two environments differ (packages first), classified by envlock's diff.
    What one fingerprint does not record at all (an endpoint's recorded fingerprint knows
    nothing of the server process's variables and thread pools) is compared in neither."""
    a, b = _comparable(ref.fingerprint, cand.fingerprint)
    differences = diff_environments(_side(ref, a), _side(cand, b))
    unobserved = "; ".join(
        f"{run.spec.name}: from the lock ({origin.get('path', '?')}, group "
        f"{origin.get('group', '?')!r}), "
        "not observed"
        for run, origin in ((ref, _from_lock(a)), (cand, _from_lock(b)))
        if origin is not None
    )
    diffs = []
    views = ref.lock_view(), cand.lock_view()  # what the locks pin, as read or recorded
    stacks = _serving_stack(ref, a, b), _serving_stack(cand, b, a)
    for d in differences:
        expected, note = (False, None)
        if d.section == "package":
            name = d.key
            expected, note = _explain(name, (ref, d.a, views[0]), (cand, d.b, views[1]))
            for run, stack, only in ((ref, stacks[0], d.b is None), (cand, stacks[1], d.a is None)):
                if only and canonicalize_name(name) in stack:
                    server = stack[canonicalize_name(name)]
                    expected = True
                    note = (
                        f"the serving stack: {server} runs the server, not the model "
                        f"(installed in {run.spec.name} only)"
                    )
        elif (d.section, d.key) == ("python", "version"):
            name = "python"
        else:
            name = d.component
        why = d.why or d.explanation  # a difference envlock has no reason for: its whole line
        note = f"{note}; {why}" if note and not expected else (note or why)
        diffs.append(
            VersionDiff(
                name=name,
                versions={ref.spec.name: d.a, cand.spec.name: d.b},
                severity=d.severity,
                expected=expected,
                note=f"{note} ({unobserved})" if unobserved else note,
                caused_by=_name(d.caused_by),
            )
        )
    # Root causes first (packages, then the interpreter and the rest: the order people
    # read causes in), each followed by the differences that follow from it.
    roots = sorted((v for v in diffs if v.caused_by is None), key=lambda v: (" " in v.name, v.name))
    ordered = []
    for root in roots:
        ordered += [root, *(v for v in diffs if v.caused_by == root.name)]
    return ordered + [v for v in diffs if v not in ordered]


def _from_lock(fp: dict[str, Any]) -> dict[str, Any] | None:
    """The lock and group a fingerprint's versions were taken from (`lock_fingerprint`), or
    None for a fingerprint that observed or recorded them."""
    origin = fp.get(FROM_LOCK)
    return origin if isinstance(origin, dict) else None


def _side(run: EnvRun, fp: dict[str, Any]) -> Side:
    """One side of envlock's diff: a fingerprint, or, for an endpoint known only by its
    lock, that lock's pins (compared as a lock is: packages, and the interpreter it allows;
    nothing a lock cannot know is a difference)."""
    norm = from_fingerprint(fp)
    origin = _from_lock(fp)
    if origin is None:
        return Side(run.spec.name, norm, "fingerprint", requires_of(fp))
    data: dict[str, Any] = {"package": norm["package"]}
    if isinstance(origin.get("requires_python"), str):
        data["python"] = {"version": origin["requires_python"]}
    return Side(run.spec.name, data, "lock")


def _serving_stack(run: EnvRun, fp: dict[str, Any], other: dict[str, Any]) -> dict[str, str]:
    """The packages of an endpoint's server (`run.serving`) and everything they require,
    transitively, that the other environment lacks: name -> the server package it comes
    with. Empty for an environment that is not an endpoint."""
    if not run.serving:
        return {}
    requires = {canonicalize_name(k): v for k, v in requires_of(fp).items()}
    ours = {canonicalize_name(n) for n in from_fingerprint(fp)["package"]}
    theirs = {canonicalize_name(n) for n in from_fingerprint(other)["package"]}
    stack: dict[str, str] = {}
    for root in run.serving:
        todo = [canonicalize_name(root)]
        while todo:
            name = todo.pop()
            if name in stack or name in theirs or name not in ours:
                continue
            stack[name] = root
            todo.extend(canonicalize_name(n) for n in requires.get(name, ()))
    return stack


def _comparable(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two fingerprints, without the runtime sections (`RUNTIME_SECTIONS`, and torch's
    thread count) when either was recorded apart from the process it describes (an
    endpoint's): what it could not record is not a difference."""
    if a.get(RECORDED_APART) is True or b.get(RECORDED_APART) is True:
        return recorded(a), recorded(b)
    return a, b


def _name(component: str | None) -> str | None:
    """The VersionDiff name of an envlock component: `package torch` -> `torch`."""
    if component is None:
        return None
    section, _, key = component.partition(" ")
    if section == "package":
        return key
    return "python" if component == "python version" else component


def _explain(
    name: str,
    left: tuple[EnvRun, str | None, LockView | None],
    right: tuple[EnvRun, str | None, LockView | None],
) -> tuple[bool, str | None]:
    """Whether the locks explain the difference (a group-only package), and a one-line why.

    Each side's lock is read from the lock itself or, for a golden bundle, from the view
    of it the bundle recorded, so a check against a bundle judges as a live check does."""
    (ra, va, a), (rb, vb, b) = left, right
    if a is None or b is None:
        return False, None
    for run, installed, locked in ((ra, va, a.pins), (rb, vb, b.pins)):
        if installed is not None and name in locked and _norm(locked[name]) != _norm(installed):
            return False, f"{run.spec.name} has {installed} but its lock pins {locked[name]}"
    if (va is None) != (vb is None):
        present, absent = (ra, rb) if vb is None else (rb, ra)
        seen, unseen = (a, b) if vb is None else (b, a)
        group = seen.group_of(name)
        if group not in (None, MAIN) and name not in unseen.pins:
            return True, f"only in the {group!r} group, which {absent.spec.name} does not install"
        return False, f"installed in {present.spec.name} only"
    if name in a.pins and name in b.pins and a.pins[name] != b.pins[name]:
        return False, f"the locks pin different versions ({a.path} vs {b.path})"
    return False, None


def _norm(version: str) -> str:
    from packaging.version import InvalidVersion, Version

    try:
        return str(Version(version))
    except InvalidVersion:
        return version
