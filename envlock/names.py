"""Project names compared as Python packaging compares them (PEP 503), without importing it."""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[-_.]+")


def canonical(name: str) -> str:
    """`Foo_Bar.baz` -> `foo-bar-baz`: the form two spellings of one project share."""
    return _SEPARATORS.sub("-", name).lower()
