"""Delta debugging (ddmin) over the packages two environments differ in.

The search behind `parity bisect` (issue 7; the environment building around it comes
next): a *trial* takes a subset of the differing packages from the candidate side and the
rest from the reference side, and says whether the divergence is reproduced (`fail`),
not (`pass`), or the combination could not be built (`unresolved`: packages that cannot be
installed together). `ddmin` finds a 1-minimal failing subset (Zeller and Hildebrandt,
2002): removing any one package from it no longer reproduces the divergence. An
unresolved trial never counts as failing, so it can never make a package a culprit.
Every trial is asked once; for a single culprit among k packages that is about
2 log2(k) trials.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["fail", "pass", "unresolved"]


@dataclass(frozen=True)
class Trial:
    """One combination tried: the packages taken from the candidate side, and the outcome."""

    packages: tuple[str, ...]
    outcome: Outcome


@dataclass
class Bisection:
    """The culprits ddmin found, and every trial in the order it ran."""

    culprits: tuple[str, ...]
    trials: list[Trial] = field(default_factory=list)


class NotReproduced(ValueError):
    """Taking every differing package from the candidate side does not reproduce the
    divergence, so there is nothing to bisect."""


def ddmin(packages: Sequence[str], trial: Callable[[tuple[str, ...]], Outcome]) -> Bisection:
    """A 1-minimal subset of `packages` for which `trial` fails, with every trial made.

    `trial(subset)` must fail for all of `packages` (else `NotReproduced`); the empty
    subset is the reference environment itself and is assumed to pass."""
    order = {p: i for i, p in enumerate(packages)}
    seen: dict[frozenset[str], Outcome] = {frozenset(): "pass"}
    result = Bisection(culprits=())

    def run(subset: Sequence[str]) -> Outcome:
        key = frozenset(subset)
        if key not in seen:
            ordered = tuple(sorted(key, key=order.__getitem__))
            seen[key] = trial(ordered)
            result.trials.append(Trial(ordered, seen[key]))
        return seen[key]

    current = list(packages)
    if run(current) != "fail":
        raise NotReproduced(
            f"taking all {len(current)} differing packages from the candidate side does "
            "not reproduce the divergence"
        )
    n = 2
    while len(current) >= 2:
        chunks = _split(current, n)
        reduced = next((c for c in chunks if run(c) == "fail"), None)
        if reduced is not None:
            current, n = reduced, 2
            continue
        if n > 2:  # with two chunks each complement is the other chunk, already tried
            complement = next(
                (rest for c in chunks if run(rest := [p for p in current if p not in c]) == "fail"),
                None,
            )
            if complement is not None:
                current, n = complement, max(n - 1, 2)
                continue
        if n >= len(current):
            break
        n = min(len(current), 2 * n)
    result.culprits = tuple(sorted(current, key=order.__getitem__))
    return result


def _split(items: list[str], n: int) -> list[list[str]]:
    """`items` in `n` contiguous chunks of nearly equal size."""
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return [c for c in chunks if c]
