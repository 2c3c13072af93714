"""Progress on stderr, as `parity` commands print it (`progress_printer`): quiet progress
needs no rich, so a command run with -q imports the terminal renderer only to print its
result, after its work is done."""

from __future__ import annotations

import click

from envlock.envvars import redactor
from envlock.progress import Progress
from parity.runs.replay import KEPT


def progress_printer(quiet: bool) -> Progress:
    """A progress callback writing `parity: message` lines to stderr; on a terminal each
    line starts with a dim timestamp. When quiet, only where a work folder was kept (the
    evidence of a failure, left on disk: not progress). No value of a secret-looking
    variable of ours is printed (`envlock.envvars`)."""
    if quiet:

        def kept_only(message: str) -> None:
            if message.startswith(KEPT):
                click.echo(f"parity: {redactor().redact(message)}", err=True)

        return kept_only
    from parity.render.terminal import terminal_progress

    return terminal_progress()
