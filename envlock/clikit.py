"""Small pieces both command-line tools share: domain errors to exit codes, progress."""

from __future__ import annotations

import functools
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
    the message without the value of any secret-looking variable of ours."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except types as e:
                # A message can quote a model's error: never with one of our secrets in it.
                raise CommandError(redact(str(e)), getattr(e, "exit_code", 3)) from None

        return wrapper  # type: ignore[return-value]

    return decorate
