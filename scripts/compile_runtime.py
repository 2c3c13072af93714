"""Compile to bytecode what `parity` and `envlock` run: their own packages and the
distributions they require (not the extras, not the development tools).

    .venv/bin/python scripts/compile_runtime.py          # what the commands import
    .venv/bin/python scripts/compile_runtime.py --all    # every module of the venv

With PYTHONDONTWRITEBYTECODE=1 (common in CI and Docker images) nothing else would write
bytecode, and every command would compile what it imports on every run. Compiling the whole
development venv (MLflow, DVC, numba, the test tools: some 14,000 modules) takes about 50 s
on 2 cores, which a first `make parity` does not need: the Makefile compiles the runtime
here when it syncs, and everything (`--all`) before the tests.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.metadata as md
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "envlock-parity"
OWN = ("envlock", "parity", "model")


def closure(name: str) -> list[md.Distribution]:
    """`name`'s distribution and every one it requires, without extras, recursively."""
    seen: dict[str, md.Distribution] = {}
    todo = [name]
    while todo:
        wanted = canonicalize_name(todo.pop())
        if wanted in seen:
            continue
        try:
            dist = md.distribution(wanted)
        except md.PackageNotFoundError:
            continue  # not installed here (another platform's requirement)
        seen[wanted] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def folders(dists: list[md.Distribution]) -> set[Path]:
    """The top-level folders and modules the distributions installed into site-packages."""
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    found: set[Path] = set()
    for dist in dists:
        for file in dist.files or []:
            if file.suffix != ".py":
                continue
            path = Path(str(file.locate())).resolve()
            try:
                top = path.relative_to(site).parts[0]
            except ValueError:
                continue  # a script or a file outside site-packages
            found.add(site / top)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="every module of the venv")
    args = parser.parse_args()
    if args.all:
        targets = {Path(sysconfig.get_paths()["purelib"])}
    else:
        targets = folders(closure(PROJECT)) | {ROOT / name for name in OWN}
    for target in sorted(targets):
        # A module that does not compile (a package's Python 2 test data, say) is left as it
        # is, as uv's --compile-bytecode leaves it: importing it would fail anyway.
        if target.is_dir():
            compileall.compile_dir(target, quiet=2, workers=0)
        elif target.suffix == ".py":
            compileall.compile_file(target, quiet=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
