"""Tolerance policies: the rule one output of the candidate must meet against the reference.

One module per policy states its rule: `exact`, `ulp`, `allclose`, `decision`, `psnr`
and `cosine`. Under every policy shapes and dtypes must be equal (a dtype change is how NumPy's
NEP 50 promotion drift shows), and NaN and infinities must sit at the same positions with
the same signs; `parity.judging.compare` enforces those rules and asks the policy about
the rest.

To add a policy, write a module with a `Policy` subclass (`parity.policies.base` says
what it implements) and add the class to `BUILT_IN` below. A policy defined outside this
package (a plugin, a test) is added with `register`; either way configs accept it as
`policy = "<its name>"` with its settings, and `TolerancePolicy(kind="<its name>")` holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from parity.policies.allclose import Allclose
from parity.policies.base import Policy, Setting, Value
from parity.policies.cosine import Cosine
from parity.policies.decision import Decision
from parity.policies.exact import Exact
from parity.policies.psnr import Psnr
from parity.policies.ulp import Ulp

if TYPE_CHECKING:
    from collections.abc import Iterable

    from parity.comparison import OutputComparison

__all__ = [
    "BUILT_IN",
    "KINDS",
    "POLICIES",
    "Policy",
    "TolerancePolicy",
    "advises_tolerances",
    "all_settings",
    "measure",
    "reads_difference",
    "register",
    "unregister",
    "would_pass",
]

# The order is the one error messages list policies in, and a setting two policies share
# is reported as the first one's.
BUILT_IN: tuple[type[Policy], ...] = (Exact, Ulp, Allclose, Decision, Psnr, Cosine)

POLICIES: dict[str, type[Policy]] = {}  # every registered policy by name
_P = TypeVar("_P", bound=type[Policy])


def register(policy: _P) -> _P:
    """Make `policy` known by its name to configs and to `TolerancePolicy`; returns it, so
    it also works as a class decorator. A setting named like another registered policy's
    must be the same setting (one value serves both)."""
    if policy.name in POLICIES:
        raise ValueError(f"a policy named {policy.name!r} is already registered")
    known = all_settings()
    for s in policy.setting_specs():
        if s.name in known and known[s.name] != s:
            raise ValueError(
                f"{policy.name}.{s.name} differs from the registered setting {known[s.name]}"
            )
    POLICIES[policy.name] = policy
    return policy


def unregister(name: str) -> None:
    """Forget the policy called `name` (for plugins' and tests' cleanup)."""
    del POLICIES[name]


def measure(c: OutputComparison) -> tuple[str, str] | None:
    """The measure of the policy that judged `c` as (label, value), where it has one, e.g.
    ULP distance, agreement or PSNR (renderers lay the two out as they like)."""
    policy = POLICIES.get(c.policy)
    return policy.measure(c) if policy is not None else None


def reads_difference(c: OutputComparison) -> bool:
    """Whether the policy that judged `c` reads the size of |a - b|, so that its worst
    element and the atol and rtol that would pass are advice a renderer may give (not so
    under `decision`, which judges the classes rows choose). True for a policy no longer
    registered."""
    policy = POLICIES.get(c.policy)
    return policy.reads_difference if policy is not None else True


def advises_tolerances(c: OutputComparison) -> bool:
    """Whether the atol and rtol that would pass `c` are advice in the terms of the policy
    that judged it (allclose: it bounds |a - b| by them); else renderers give the policy's
    own `would_pass`, or nothing. True for a policy no longer registered."""
    policy = POLICIES.get(c.policy)
    return policy.bounds_difference if policy is not None else True


def would_pass(c: OutputComparison) -> str | None:
    """What the policy that judged `c` says would pass it, in its own terms, where it is
    not an atol/rtol bound (see `advises_tolerances`), e.g. `min_agreement ≤ 0.9375`,
    `min_cosine ≤ 0.99871`, `max_ulp ≥ 3`; None when no setting of it would."""
    policy = POLICIES.get(c.policy)
    return policy.would_pass(c) if policy is not None else None


def all_settings() -> dict[str, Setting]:
    """Every registered policy's settings by name, in registration order."""
    known: dict[str, Setting] = {}
    for policy in POLICIES.values():
        for s in policy.setting_specs():
            known.setdefault(s.name, s)
    return known


for _policy in BUILT_IN:
    register(_policy)

KINDS: tuple[str, ...] = tuple(POLICIES)  # the built-in policies' names


@dataclass(frozen=True, init=False)
class TolerancePolicy:
    """The rule one output must meet, as a config writes it: a policy's name and settings.

    Any registered policy's settings may be given, `TolerancePolicy(kind="exact", atol=1)`
    included: only `kind`'s are used, the others are kept so that a table that switches
    policy still inherits them. Settings read as attributes (`policy.atol`), those not set
    as their defaults; `rule` is the registered policy that judges with them."""

    kind: str
    # The settings that differ from their defaults, sorted by name: so two policies with
    # the same settings are equal however they were written.
    values: tuple[tuple[str, Value], ...]

    def __init__(
        self, kind: str = "allclose", values: Iterable[tuple[str, Value]] = (), **given: Value
    ) -> None:
        if kind not in POLICIES:
            raise ValueError(f"no policy {kind!r} (registered: {', '.join(POLICIES)})")
        known = all_settings()
        merged = dict(values)
        for name, value in given.items():
            if name not in known:
                raise TypeError(f"TolerancePolicy() got an unexpected keyword argument {name!r}")
            merged[name] = value
        # A setting of a policy unregistered since `values` was made has no default to drop.
        kept = tuple(
            sorted((k, v) for k, v in merged.items() if k not in known or v != known[k].default)
        )
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "values", kept)

    def __getattr__(self, name: str) -> Any:
        # Reached only for names that are not attributes: the settings.
        if name not in ("kind", "values"):
            spec = all_settings().get(name)
            if spec is not None:
                return dict(self.values).get(name, spec.default)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def rule(self) -> Policy:
        """The registered policy called `kind`, with these settings."""
        policy = POLICIES[self.kind]
        return policy(**{s.name: getattr(self, s.name) for s in policy.setting_specs()})

    def describe(self) -> str:
        """The policy as a user would write it, e.g. `allclose(atol=1e-06, rtol=0)`."""
        return self.rule.describe()

    def settings(self) -> dict[str, Value]:
        """The settings of this policy's kind, by name (for reports)."""
        return self.rule.settings()

    def to_dict(self) -> dict[str, Value]:
        """`kind` and every registered setting's value, as a bundle records the policy."""
        return {"kind": self.kind, **{name: getattr(self, name) for name in all_settings()}}
