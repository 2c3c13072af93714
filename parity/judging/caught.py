"""The warnings each environment's worker caught, judged: which appear in one environment
only, and which the config's policy (`[policy] fail_on_warnings`) counts against the check."""

from __future__ import annotations

from dataclasses import dataclass

from parity.config import LOG_PREFIX, ParityConfig, WarningRule
from parity.runs.caught import CaughtWarning, CaughtWarnings
from parity.runs.replay import EnvRun

REASON_MESSAGE = 500  # characters of a warning's message in the check's reasons


@dataclass(frozen=True)
class WarningFinding:
    """One distinct warning (or log record) caught in one environment."""

    environment: str
    category: str  # the warning class's full name, or `log:<logger>`
    message: str
    count: int  # how often it came
    first: str  # where it came first: file:line
    level: str | None = None  # a log record's level name; None for a Python warning
    bases: tuple[str, ...] = ()  # the warning classes `category` derives from
    # its category was caught here and not in the other environment (False when the other
    # environment's warnings are unknown, e.g. a golden bundle's)
    only_here: bool = False
    fails: bool = False  # whether the policy counts it against the check
    rule: str | None = None  # the `fail_on_warnings` entry that matched it

    def reason(self) -> str:
        """Why it fails the check, as the report's reasons say it."""
        where = f"{self.environment} only" if self.only_here else self.environment
        message = " ".join(self.message.split())  # one line, as reasons are
        if len(message) > REASON_MESSAGE:
            message = message[:REASON_MESSAGE] + "…"
        times = "once" if self.count == 1 else f"{self.count} times"
        return f"warning in {where}: {self.category}: {message} ({times})"


def judge_warnings(config: ParityConfig, ref: EnvRun, cand: EnvRun) -> list[WarningFinding]:
    """Every warning either environment caught, reference's first, each marked `only_here`
    when the other environment (whose warnings are known) did not catch its category, and
    `fails` when a `fail_on_warnings` rule matches it; in each environment, failing
    warnings first, then those only there, then by category and message."""
    findings = []
    for run, other in ((ref, cand), (cand, ref)):
        if run.warnings is None:
            continue
        theirs = other.warnings.categories if other.warnings is not None else None
        judged = []
        for w in run.warnings.entries:
            rule = matching_rule(config.fail_on_warnings, w)
            judged.append(
                WarningFinding(
                    environment=run.name,
                    category=w.category,
                    message=w.message,
                    count=w.count,
                    first=w.first,
                    level=w.level,
                    bases=w.bases,
                    only_here=theirs is not None and w.category not in theirs,
                    fails=rule is not None,
                    rule=rule.entry if rule is not None else None,
                )
            )
        findings += sorted(judged, key=lambda f: (not f.fails, not f.only_here, f.category))
    return findings


def dropped(ref: EnvRun, cand: EnvRun) -> dict[str, int]:
    """Per environment, the occurrences of warnings past the worker's limit (only those
    that dropped any)."""
    return {r.name: r.warnings.dropped for r in (ref, cand) if r.warnings and r.warnings.dropped}


def matching_rule(rules: tuple[WarningRule, ...], w: CaughtWarning) -> WarningRule | None:
    """The first rule that matches `w`, if any."""
    for rule in rules:
        if rule.is_log != w.is_log:
            continue
        if rule.is_log:
            logger, wanted = (
                w.category.removeprefix(LOG_PREFIX),
                rule.category.removeprefix(LOG_PREFIX),
            )
            if logger != wanted and not logger.startswith(wanted + "."):
                continue
        elif rule.category != w.category and rule.category not in w.bases:
            continue
        if rule.text and rule.text not in w.message:
            continue
        return rule
    return None


__all__ = ["CaughtWarnings", "WarningFinding", "dropped", "judge_warnings", "matching_rule"]
