"""Small pieces both command-line tools share: domain errors to exit codes, progress."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from envlock.envvars import redact

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(click.ClickException):
    """A domain error shown as `Error: ...` with the exit code docs/ARCHITECTURE.md gives it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


def domain_errors(*types: type[Exception]) -> Callable[[F], F]:
    """Decorator: turn exceptions of `types` (which carry `exit_code`) into clean exits,
    and any other exception (a bug in the tool itself) into one line and exit 3, never a
    traceback and never exit 1, which means "parity failed"; `<TOOL>_DEBUG=1` (e.g.
    `PARITY_DEBUG=1`) lets the traceback through for a bug report. A message never carries
    the value of any secret-looking variable of ours."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except types as e:
                # A message can quote a model's error: never with one of our secrets in it.
                raise CommandError(redact(str(e)), getattr(e, "exit_code", 3)) from None
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except Exception as e:
                tool = fn.__module__.split(".")[0]  # parity or envlock
                if os.environ.get(f"{tool.upper()}_DEBUG"):
                    raise
                first = (redact(str(e)).strip().splitlines() or [""])[0]
                raise CommandError(
                    f"internal error in {tool}: {type(e).__name__}"
                    + (f": {first}" if first else "")
                    + f" (a bug: rerun with {tool.upper()}_DEBUG=1 for the traceback and "
                    "report it)",
                    3,
                ) from None

        return wrapper  # type: ignore[return-value]

    return decorate
