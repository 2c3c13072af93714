"""`Progress`: how long-running work says what it is doing, one line at a time.

Every function that builds, installs or replays takes an optional `progress` callback; the
command-line tools print what it is given on stderr, a library user may log it or ignore
it. Declared once here for envlock and parity alike.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def quiet(_message: str) -> None:
    """A `Progress` that says nothing."""
