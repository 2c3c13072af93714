"""Names as people write and read them: project names compared as Python packaging
compares them (PEP 503, without importing it), paths shown as a user would type them."""

from __future__ import annotations

import re
from pathlib import Path

_SEPARATORS = re.compile(r"[-_.]+")


def canonical(name: str) -> str:
    """`Foo_Bar.baz` -> `foo-bar-baz`: the form two spellings of one project share."""
    return _SEPARATORS.sub("-", name).lower()


def shown_path(path: Path) -> str:
    """A path as a user would type it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
