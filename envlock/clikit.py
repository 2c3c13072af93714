"""Small pieces both command-line tools share: domain errors to exit codes, progress, and
Ctrl-C and SIGTERM stopping everything at once (`InterruptibleGroup`)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import click

from envlock.backends.base import RUNNING, stop_all
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


# How long an interrupted command may take to unwind (workers already killed, threads
# joined, its temporary work folder removed) before it exits anyway.
UNWIND_SECONDS = 2.0
_SIGNALS: dict[int, str] = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: every worker has been stopped and the command ends, exit 128 +
    the signal's number, with no report or other result (it is raised wherever the command
    was, so it never reaches the code that writes one)."""

    def __init__(self, signum: int) -> None:
        super().__init__(_SIGNALS.get(signum, str(signum)))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class InterruptibleGroup(click.Group):
    """A command group (`envlock`, `parity`) that SIGINT and SIGTERM end at once: every
    script running in an environment is stopped (`stop_all`), one line says so, and the
    command ends with exit 130 or 143 (`Interrupted`, raised wherever it was)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        _exit_without_collecting()
        if threading.current_thread() is not threading.main_thread():
            return super().main(*args, **kwargs)  # only the main thread gets signals
        exit_timer: list[threading.Timer] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if exit_timer:  # a second signal while unwinding: no more waiting
                os._exit(128 + signum)
            _say_interrupted(self._prog(), signum, stop_all())
            # Unwinding waits for threads that may still be in a build: it gets so long.
            timer = threading.Timer(UNWIND_SECONDS, os._exit, (128 + signum,))
            timer.daemon = True
            timer.start()
            exit_timer.append(timer)
            raise Interrupted(signum)

        previous = {s: signal.signal(s, on_signal) for s in _SIGNALS}
        try:
            return super().main(*args, **kwargs)
        except Interrupted as e:
            sys.exit(e.exit_code)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            for timer in exit_timer:
                timer.cancel()
            RUNNING.resume()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # raised by a command's own handler (parity search's)
            _say_interrupted(self._prog(), signal.SIGINT, stop_all())
            raise Interrupted(signal.SIGINT) from None

    def _prog(self) -> str:
        """The command's name as it was run (`parity`, `envlock`)."""
        ctx = click.get_current_context(silent=True)
        name = ctx.find_root().info_name if ctx is not None else None
        return name or self.name or "interrupted"


@functools.cache
def _exit_without_collecting() -> None:
    """At exit, freeze what is still alive instead of letting the interpreter's last
    garbage collections walk it (numpy, rich, the report: ~0.05 s of CPU that changes
    nothing once the process ends; `atexit` handlers and `weakref.finalize` callbacks still
    run, and Python never promised `__del__` at exit). Registered once, at the first
    command: a test process that runs commands in-process freezes only when it exits."""
    atexit.register(gc.freeze)


def _say_interrupted(prog: str, signum: int, stopped: int) -> None:
    """One line on stderr, written directly: a signal handler may run inside a write to
    sys.stderr, which must not be entered again."""
    line = f"{prog}: interrupted by {_SIGNALS.get(signum, signum)}"
    line += f": stopped {stopped} process(es)\n" if stopped else "\n"
    with contextlib.suppress(OSError):
        os.write(sys.stderr.fileno(), line.encode())
