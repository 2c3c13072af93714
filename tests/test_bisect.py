"""ddmin over differing packages: minimal culprits, unresolved combinations never blamed,
and about 2 log2(k) trials for a single culprit. These test the search alone, over
made-up trials; tests/test_bisect_envs.py drives it with real venvs."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parity.investigations.bisect import NotReproduced, Outcome, ddmin

names = st.lists(
    st.text("abcdefghij", min_size=1, max_size=6), min_size=1, max_size=24, unique=True
)


def diverges_with(
    culprits: set[str], unresolved: Callable[[set[str]], bool] = lambda _s: False
) -> Callable[[tuple[str, ...]], Outcome]:
    """A trial that fails when every culprit is taken from the candidate side."""

    def trial(subset: tuple[str, ...]) -> Outcome:
        if unresolved(set(subset)):
            return "unresolved"
        return "fail" if culprits <= set(subset) else "pass"

    return trial


@given(names, st.data())
def test_the_culprits_are_found_and_minimal(packages: list[str], data: st.DataObject) -> None:
    culprits = set(data.draw(st.lists(st.sampled_from(packages), min_size=1, max_size=3)))
    found = ddmin(packages, diverges_with(culprits))
    assert set(found.culprits) == culprits
    assert all(t.packages == tuple(sorted(t.packages, key=packages.index)) for t in found.trials)
    assert len({t.packages for t in found.trials}) == len(found.trials)  # each asked once


@given(names, st.data())
def test_a_single_culprit_takes_about_two_log2_k_trials(
    packages: list[str], data: st.DataObject
) -> None:
    culprit = data.draw(st.sampled_from(packages))
    found = ddmin(packages, diverges_with({culprit}))
    assert found.culprits == (culprit,)
    # +1: the full set, tried first to confirm the divergence reproduces at all.
    assert len(found.trials) <= 2 * math.ceil(math.log2(max(len(packages), 2))) + 1


def test_two_culprits_that_only_diverge_together() -> None:
    packages = ["numpy", "scipy", "pillow", "torch", "tqdm", "six", "packaging", "filelock"]
    found = ddmin(packages, diverges_with({"numpy", "torch"}))
    assert found.culprits == ("numpy", "torch")


def test_an_unresolvable_combination_is_never_a_culprit() -> None:
    packages = ["scipy", "pillow", "torch", "numpy"]
    # The candidate's scipy cannot be installed beside the reference's numpy.
    found = ddmin(packages, diverges_with({"numpy"}, lambda s: "scipy" in s and "numpy" not in s))
    assert found.culprits == ("numpy",)
    assert [(t.packages, t.outcome) for t in found.trials] == [
        (("scipy", "pillow", "torch", "numpy"), "fail"),
        (("scipy", "pillow"), "unresolved"),
        (("torch", "numpy"), "fail"),
        (("torch",), "pass"),
        (("numpy",), "fail"),
    ]


def test_nothing_to_bisect_when_the_divergence_does_not_reproduce() -> None:
    with pytest.raises(NotReproduced, match="taking all 2 differing packages"):
        ddmin(["a", "b"], lambda subset: "pass")
