"""The warnings a worker caught (`warnings.json`, see `parity.runs.worker._Caught`), read
as untrusted data: bounded in size, in entries and in text, every field type-checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import HostileOutputError
from parity.outputs import load_json
from parity.runs.job import WARNING_ENTRIES, WARNING_MESSAGE, WARNINGS_FILE

__all__ = ["WARNINGS_FILE", "CaughtWarning", "CaughtWarnings", "read_caught"]

MAX_WARNINGS_BYTES = 4 << 20  # 200 entries of 2,000-character texts fit many times over
MAX_BASES = 32


@dataclass(frozen=True)
class CaughtWarning:
    """One distinct warning: a Python warning (`category` its class's full name, `bases`
    the names of the warning classes it derives from) or a log record (`category`
    `log:<logger>`, `level` its level name), with how often it came and where first."""

    category: str
    message: str
    count: int
    first: str
    level: str | None = None
    bases: tuple[str, ...] = ()

    @property
    def is_log(self) -> bool:
        """Whether this is a log record rather than a Python warning."""
        return self.category.startswith("log:")


@dataclass(frozen=True)
class CaughtWarnings:
    """What one worker caught: the distinct warnings, and how many occurrences of further
    distinct ones its limit dropped."""

    entries: tuple[CaughtWarning, ...] = ()
    dropped: int = 0
    categories: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", frozenset(w.category for w in self.entries))


def read_caught(path: Path) -> CaughtWarnings:
    """The warnings in a worker's `warnings.json`; raise `HostileOutputError` when it is
    not what a worker writes."""
    data = load_json(path, MAX_WARNINGS_BYTES)
    raw = data.get("entries")
    dropped = data.get("dropped", 0)
    if not isinstance(raw, list) or not _count(dropped, zero=True):
        raise HostileOutputError(f"{path}: expected entries (a list) and dropped (a count)")
    entries = []
    for i, e in enumerate(raw[:WARNING_ENTRIES]):
        if not isinstance(e, dict):
            raise HostileOutputError(f"{path}: entries[{i}] is not an object")
        category, message, first = e.get("category"), e.get("message"), e.get("first")
        level, bases, count = e.get("level"), e.get("bases", []), e.get("count")
        if not (
            isinstance(count, int)  # first, so that mypy knows it below
            and isinstance(category, str)
            and isinstance(message, str)
            and isinstance(first, str)
            and (level is None or isinstance(level, str))
            and isinstance(bases, list)
            and all(isinstance(b, str) for b in bases)
            and _count(count)
        ):
            raise HostileOutputError(f"{path}: entries[{i}] is not a warning as a worker writes")
        entries.append(
            CaughtWarning(
                category=category[:_TEXT],
                message=message[:WARNING_MESSAGE],
                count=count,
                first=first[:WARNING_MESSAGE],
                level=level[:_TEXT] if level is not None else None,
                bases=tuple(b[:_TEXT] for b in bases[:MAX_BASES]),
            )
        )
    extra = sum(e["count"] for e in raw[WARNING_ENTRIES:] if _entry_count(e))
    return CaughtWarnings(tuple(entries), dropped + extra)


_TEXT = 300  # characters of a category, level or base name


def _count(value: Any, zero: bool = False) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (value >= 0 if zero else value >= 1)
    )


def _entry_count(e: Any) -> bool:
    return isinstance(e, dict) and _count(e.get("count"))
