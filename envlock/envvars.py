"""What a process run inside an environment gets of ours, and which of our values never leave.

A model runs code its authors chose, in a process we start: whatever that process can read
it can print, raise or name an output after, and all of that ends up in reports. So a
process started in an environment (`Environment.run_python`) gets an allow-list of our
environment variables, never all of them (`child_environment`):

- what any process needs: `SYSTEM_ENV` and the locale's `LC_*`, and what a GPU runtime
  needs to find its devices and libraries (`LD_LIBRARY_PATH`; `CUDA_*` and `NVIDIA_*` are
  numerics variables already);
- the variables that change numerical results (`probe.NUMERIC_ENV`, `probe.NUMERIC_PREFIXES`),
  the ones a fingerprint records;
- the names a caller asks for explicitly (`pass_env`): the only way a secret-looking
  variable (`probe.is_secret_name`) gets in, since the first two groups never let one in;
- the values a caller sets (`env`), over all of these.

And whatever is written or printed can be passed through `Redactor.redact`, which replaces
the value of every secret-looking variable of ours with `REDACTED`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from envlock.probe import NUMERIC_ENV, NUMERIC_PREFIXES, is_secret_name

# What any process needs: where programs are, home, user, temporary files, the locale and
# time zone, where shared libraries (CUDA's among them) are found; on Windows, what an
# interpreter cannot start or open a socket without. Neither SHELL nor TERM: a worker
# writes to a log file, never to a terminal, and subprocess starts /bin/sh by path.
SYSTEM_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TEMP",
    "TMP",
    "LD_LIBRARY_PATH",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "SYSTEMROOT",
    "WINDIR",
    "COMSPEC",
    "PATHEXT",
    "USERPROFILE",
)
SYSTEM_PREFIXES = ("LC_",)
# Variables that would make a child interpreter see the host's packages instead of its own:
# never passed, not even when named.
LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")

T = TypeVar("T")

REDACTED = "[redacted]"
# A secret-looking variable's value shorter than this, or one of these words, is left
# alone: redacting "1" or "true" everywhere would garble every report and hide nothing.
MIN_SECRET_LENGTH = 8
_TRIVIAL = frozenset({"true", "false", "yes", "no", "none", "null", "on", "off"})


def passes(name: str) -> bool:
    """Whether a variable of ours reaches a process run inside an environment unasked: a
    system or numerics variable whose name does not look like a secret."""
    wanted = (
        name in SYSTEM_ENV
        or name.startswith(SYSTEM_PREFIXES)
        or name in NUMERIC_ENV
        or name.startswith(NUMERIC_PREFIXES)
    )
    return wanted and not is_secret_name(name)


def child_environment(
    env: Mapping[str, str],
    pass_env: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables a process run inside an environment gets: of `environ` (default: ours)
    those that `passes` and those named in `pass_env`, then `env` over them."""
    environ = os.environ if environ is None else environ
    named = set(pass_env) - set(LEAKY_ENV)
    child = {k: v for k, v in environ.items() if k in named or passes(k)}
    child.update(env)
    return child


# Secret-looking variables a configuration sets for the processes it runs (a config's
# `[run.env]`, say): their values are redacted as our own secrets' are.
_DECLARED: set[str] = set()


def declare_secrets(env: Mapping[str, str]) -> None:
    """Redact, from now on, the values of the secret-looking variables in `env`: variables
    a configuration gives a process run inside an environment, which it can print."""
    _DECLARED.update(_worth_redacting(env))


def declare_secret_values(values: Iterable[str]) -> None:
    """Redact, from now on, each of `values` (8 characters or more, not a word like
    `true`) whatever the name of the variable it came from: what is sent as a secret (an
    authorization header's value, read from the variable a config names)."""
    for value in values:
        _DECLARED.update(_worth_redacting({"SECRET": value}))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the secret-looking variables in `environ` (default: ours, and those
    declared with `declare_secrets`) worth redacting, longest first (so that one holding
    another is replaced whole)."""
    values = _worth_redacting(os.environ if environ is None else environ)
    if environ is None:
        values |= _DECLARED
    return sorted(values, key=lambda v: (-len(v), v))


def _worth_redacting(environ: Mapping[str, str]) -> set[str]:
    values = set()
    for k, v in environ.items():
        stripped = v.strip()  # as a model that reads it would likely use it
        if (
            is_secret_name(k)
            and len(stripped) >= MIN_SECRET_LENGTH
            and stripped.lower() not in _TRIVIAL
        ):
            values.update({v, stripped})
    return values


class Redactor:
    """Replaces secret values in text with `REDACTED`: one regular expression of them all,
    compiled once; with no secret set, `redact` returns its text as it is."""

    def __init__(self, values: Iterable[str]) -> None:
        values = list(values)
        self.pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def __bool__(self) -> bool:
        return self.pattern is not None

    def redact(self, text: str) -> str:
        """`text` with every secret value in it replaced."""
        if self.pattern is None or not text:
            return text
        return self.pattern.sub(REDACTED, text)


def redactor(environ: Mapping[str, str] | None = None) -> Redactor:
    """A `Redactor` of the secret values in `environ` (default: ours, as it is now, and
    those declared), compiled once for each set of values."""
    return _redactor(tuple(secret_values(environ)))


@functools.lru_cache(maxsize=8)
def _redactor(values: tuple[str, ...]) -> Redactor:
    return Redactor(values)


def redact(text: str) -> str:
    """`text` with the value of every secret-looking variable of ours replaced."""
    return redactor().redact(text)


def scrub(value: T, redactor: Redactor) -> T:
    """A copy of `value` with every string in it redacted, dictionary keys and the fields of
    dataclasses included (fields a dataclass does not take in its constructor are left as
    they are); other values are kept. Done on the data before it is serialized, so that no
    escaping (JSON, HTML, XML, Markdown) can hide a value from the redaction; with no secret
    set `value` itself is returned."""
    if not redactor:
        return value
    return _scrub(value, redactor)  # type: ignore[no-any-return]


def _scrub(value: Any, r: Redactor) -> Any:
    if isinstance(value, str):
        return r.redact(value)
    if isinstance(value, dict):
        return {_scrub(k, r): _scrub(v, r) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, r) for v in value]
    if isinstance(value, tuple):
        items = [_scrub(v, r) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: _scrub(getattr(value, f.name), r) for f in dataclasses.fields(value) if f.init
        }
        try:
            return dataclasses.replace(value, **changes)
        except (TypeError, ValueError):  # a constructor of its own: the text pass stays
            return value
    return value
