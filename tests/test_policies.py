"""Tolerance policies as a user meets them: written in a config, read back as written,
judged by the comparison, and extended with a policy of one's own."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

import parity
from parity.comparison import OutputComparison
from parity.config import ParityConfig, load_config
from parity.errors import ConfigError
from parity.investigations.search import excess
from parity.judging.compare import compare_arrays
from parity.policies import (
    KINDS,
    POLICIES,
    TolerancePolicy,
    all_settings,
    measure,
    register,
    unregister,
)
from parity.policies.base import (
    Judge,
    Output,
    Policy,
    Setting,
    Tally,
    Verdict,
    elementwise,
    integer,
    number,
)

if TYPE_CHECKING:
    from parity.comparison import BlockDiff

LOCK = 'lock-version = "1.0"\ncreated-by = "t"\ndependency-groups = ["train"]\npackages = []\n'
CONFIG = """\
[model]
adapter = "model.adapter:predict"

[inputs]
seed = 1
count = 4

[inputs.arrays.x]
shape = [8]

[environments.train]
lock = "pylock.toml"
group = "train"

[environments.infer]
lock = "pylock.toml"
"""


def load(tmp_path: Path, tolerance: str) -> ParityConfig:
    (tmp_path / "pylock.toml").write_text(LOCK)
    path = tmp_path / "parity.toml"
    path.write_text(CONFIG + "\n" + tolerance)
    return load_config(path)


def config_error(tmp_path: Path, tolerance: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, tolerance)
    return str(e.value).split(": ", 1)[1]


def as_toml(description: str) -> str:
    """A policy table that says what `describe()` says: `ulp(max_ulp=3)` as
    `policy = "ulp"` and `max_ulp = 3`."""
    m = re.fullmatch(r"(\w+)(?:\((.*)\))?", description)
    assert m, description
    lines = [f'policy = "{m[1]}"']
    lines += [item.replace("=", " = ") for item in (m[2] or "").split(", ") if item]
    return "\n".join(lines) + "\n"


def unusual(s: Setting) -> float | int:
    """A value within the setting's bounds that is not its default."""
    if s.integer:
        return int(max(s.low, 0)) + 2
    if s.high < float("inf"):
        return (max(s.low, 0.0) + s.high) / 2
    return 42.5 + max(s.low, 0.0)


# -- every registered policy --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("defaults", [True, False], ids=["defaults", "set"])
def test_a_policy_reads_back_from_the_config_as_described(
    tmp_path: Path, kind: str, defaults: bool
) -> None:
    specs = POLICIES[kind].setting_specs()
    policy = TolerancePolicy(kind, **({} if defaults else {s.name: unusual(s) for s in specs}))
    described = policy.describe()
    config = load(tmp_path, "[tolerance.outputs.y]\n" + as_toml(described))
    assert config.tolerance_for("y") == policy
    assert config.tolerance_for("y").describe() == described
    assert set(policy.settings()) == {s.name for s in specs}


def test_the_built_in_policies_are_registered_in_order() -> None:
    assert KINDS == ("exact", "ulp", "allclose", "decision", "psnr", "cosine")
    assert tuple(POLICIES) == KINDS
    assert parity.TolerancePolicy is TolerancePolicy


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('policy = "ulp"\nmax_ulp = -1', "tolerance.max_ulp: must be 0 or more, got -1"),
        ('policy = "ulp"\nmax_ulp = 1.5', "tolerance.max_ulp: must be an integer, not a number"),
        ('policy = "decision"\ntop_k = 0', "tolerance.top_k: must be 1 or more, got 0"),
        ("rtol = true", "tolerance.rtol: must be a number, not a boolean"),
        ('policy = "psnr"\ndata_range = 0', "tolerance.data_range: must be positive"),
        ('policy = "psnr"\ndata_range = -1', "tolerance.data_range: must be 0 or more, got -1"),
        ('policy = "psnr"\nmin_db = nan', "tolerance.min_db: must be a finite number, got nan"),
        (
            'policy = "decision"\ntop_k = 0\nmin_agreement = 2',
            "tolerance.min_agreement: must be between 0 and 1, got 2",
        ),
        (
            "max_ulp = 1",
            "tolerance.max_ulp: only applies to policy = 'ulp' (this is 'allclose')",
        ),
        (
            "policy = 3",
            "tolerance.policy: must be one of exact, ulp, allclose, decision, psnr, cosine",
        ),
        ("atl = 1", "tolerance.atl: unknown key (expected one of: atol, data_range,"),
    ],
)
def test_a_bad_setting_is_named_with_its_bounds(tmp_path: Path, table: str, message: str) -> None:
    assert config_error(tmp_path, "[tolerance]\n" + table + "\n").startswith(message)


def test_a_per_output_table_that_switches_policy_keeps_the_default_tables_settings(
    tmp_path: Path,
) -> None:
    config = load(
        tmp_path,
        "[tolerance]\natol = 0.5\n[tolerance.outputs.ids]\npolicy = 'exact'\n"
        "[tolerance.outputs.back]\npolicy = 'allclose'\nrtol = 0.1\n",
    )
    assert config.tolerance_for("ids").describe() == "exact"
    assert config.tolerance_for("ids").atol == 0.5  # kept, not used
    assert config.tolerance_for("back").describe() == "allclose(atol=0.5, rtol=0.1)"


def test_a_policy_is_a_value_however_it_is_written() -> None:
    a = TolerancePolicy(atol=1e-6, rtol=0.0)
    b = dataclasses.replace(TolerancePolicy(kind="ulp", max_ulp=0), kind="allclose", atol=1e-6)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != TolerancePolicy(atol=2e-6)
    assert (a.atol, a.rtol, a.noise_factor, a.max_ulp, a.min_db) == (1e-6, 0.0, None, 0, 60.0)
    with pytest.raises(TypeError, match="'tol'"):
        TolerancePolicy(tol=1)
    with pytest.raises(ValueError, match="no policy 'fuzzy'"):
        TolerancePolicy(kind="fuzzy")
    with pytest.raises(AttributeError):
        _ = a.nonsense


def test_reading_a_config_does_not_import_numpy(repo: Path) -> None:
    code = "import sys, parity.config, parity.policies; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


# -- a policy of one's own ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MaxAbs(Policy):
    """Every element at most `limit` from its reference (no relative part)."""

    name = "max_abs"
    limit: float = number(0.0)

    def judge(self, output: Output) -> Judge:
        return _MaxAbsJudge(self.limit)

    def distance(self, c: OutputComparison) -> float | None:
        return c.max_abs_diff / self.limit if self.limit else None

    @classmethod
    def measure(cls, c: OutputComparison) -> tuple[str, str] | None:
        return "max abs", f"{c.max_abs_diff:.3g}"


class _MaxAbsJudge(Judge):
    def __init__(self, limit: float) -> None:
        self.limit = limit

    def test(self, rb: np.ndarray, cb: np.ndarray, d: BlockDiff) -> np.ndarray:
        ok: np.ndarray = d.diff <= self.limit
        return ok

    def verdict(self, tally: Tally) -> Verdict:
        return elementwise(tally, f"further than {self.limit:g} from the reference")


@pytest.fixture
def max_abs() -> Iterator[type[MaxAbs]]:
    register(MaxAbs)
    yield MaxAbs
    unregister(MaxAbs.name)


def test_a_registered_policy_is_configured_and_judged_like_a_built_in(
    tmp_path: Path, max_abs: type[MaxAbs]
) -> None:
    config = load(
        tmp_path,
        "[tolerance]\natol = 1e-3\n[tolerance.outputs.y]\npolicy = 'max_abs'\nlimit = 0.5\n",
    )
    policy = config.tolerance_for("y")
    assert policy.describe() == "max_abs(limit=0.5)"
    assert policy.rule == MaxAbs(limit=0.5)

    ref = np.zeros((4, 3), np.float32)
    cand = ref.copy()
    cand[1, 2] = 0.25
    passed = compare_arrays("y", ref, cand, policy)
    assert (passed.passed, passed.policy, passed.policy_description) == (
        True,
        "max_abs",
        "max_abs(limit=0.5)",
    )
    assert measure(passed) == ("max abs", "0.25")
    assert excess(passed, policy) == 0.5  # halfway to its limit

    cand[3, 0] = -2.0
    failed = compare_arrays("y", ref, cand, policy, block_elements=3)
    assert not failed.passed and failed.cause == "tolerance"
    assert failed.reason == "1 of 12 elements further than 0.5 from the reference (max abs diff 2)"
    assert (failed.mismatched, failed.total, failed.unit) == (1, 12, "elements")
    assert measure(failed) == ("max abs", "2")
    assert excess(failed, policy) == 4.0
    # The comparison's own rules hold under a new policy too.
    cand[0, 0] = np.nan
    nan = compare_arrays("y", ref, cand, policy)
    assert nan.cause == "nan_inf" and nan.nan_mismatched == 1
    # Its report is the same JSON as any other policy's.
    assert set(dataclasses.asdict(failed)) == set(dataclasses.asdict(passed))


def test_a_registered_policys_settings_are_checked_and_kept_to_it(
    tmp_path: Path, max_abs: type[MaxAbs]
) -> None:
    assert "limit" in all_settings()
    assert config_error(tmp_path, "[tolerance]\npolicy = 'max_abs'\nlimit = -1\n") == (
        "tolerance.limit: must be 0 or more, got -1"
    )
    assert config_error(tmp_path, "[tolerance]\nlimit = 1\n") == (
        "tolerance.limit: only applies to policy = 'max_abs' (this is 'allclose')"
    )
    assert config_error(tmp_path, "[tolerance]\npolicy = 'max_abs'\natol = 1\n") == (
        "tolerance.atol: only applies to policy = 'allclose' (this is 'max_abs')"
    )
    assert config_error(tmp_path, "[tolerance]\npolicy = 'fuzzy'\n") == (
        "tolerance.policy: must be one of exact, ulp, allclose, decision, psnr, cosine, max_abs, "
        "got 'fuzzy'"
    )


def test_once_unregistered_a_policy_is_unknown_again(tmp_path: Path) -> None:
    register(MaxAbs)
    unregister("max_abs")
    assert "limit" not in all_settings()
    assert config_error(tmp_path, "[tolerance]\npolicy = 'max_abs'\n").startswith(
        "tolerance.policy: must be one of exact, ulp, allclose, decision, psnr, cosine, got "
        "'max_abs'"
    )


def test_registering_refuses_a_second_policy_of_one_name_or_a_clashing_setting(
    max_abs: type[MaxAbs],
) -> None:
    with pytest.raises(ValueError, match="'max_abs' is already registered"):
        register(MaxAbs)

    @dataclasses.dataclass(frozen=True)
    class Loose(Policy):
        name = "loose"
        max_ulp: int = integer(5)  # the ulp policy's max_ulp defaults to 0

        def judge(self, output: Output) -> Judge:
            raise NotImplementedError

    with pytest.raises(ValueError, match=r"loose\.max_ulp differs"):
        register(Loose)
    assert "loose" not in POLICIES
