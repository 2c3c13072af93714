"""Compile a venv's modules to bytecode, linking what an environment built before compiled.

    <venv>/bin/python -s bytecode.py [DONOR_VENV ...]

Run by path with the environment's own interpreter (the standard library only, Python 3.8
and later), after uv installed it without `--compile-bytecode`. Every module of the
environment's site-packages gets its `.pyc`, as `uv pip install --compile-bytecode` (and
`compileall`) writes it: timestamp-checked, this interpreter's magic number, no
optimization.

Two environments of one lock share most of their files (the training and the inference
environment both install torch), and uv links every installed file from its cache: the
same module is then the very same file (device and inode) in both. Its bytecode is the same
too, so it is not compiled twice: for a module whose source is the same file as the same
module's in a DONOR_VENV (finished environments, never modified after), and whose `.pyc`
there is current for it (this interpreter's magic number, timestamp-checked, the source's
mtime and size in its header, as `compileall` checks it), that `.pyc` is hard-linked (or
copied) here. The code object inside names the donor's path as its file; Python replaces
that with the module's own path when it loads the `.pyc`, as it does for any environment
moved after it was compiled. Everything else is compiled by `compileall`, with every core.

Prints one line of JSON: {"linked": N, "compiled": M}.
"""

from __future__ import annotations

import compileall
import contextlib
import functools
import importlib.util
import json
import os
import shutil
import struct
import sys
import sysconfig


def site_folders() -> list[str]:
    """This interpreter's site-packages folders (purelib and platlib), each once."""
    paths = sysconfig.get_paths()
    found = []
    for key in ("purelib", "platlib"):
        path = os.path.realpath(paths[key])
        if os.path.isdir(path) and path not in found:
            found.append(path)
    return found


def current_for(pyc: str, source: os.stat_result) -> bool:
    """Whether `pyc` is what `compileall` would leave as it is for a source with `source`'s
    stat: this interpreter's magic number, timestamp-checked, its mtime and size."""
    try:
        with open(pyc, "rb") as f:
            header = f.read(16)
    except OSError:
        return False
    if len(header) < 16:
        return False
    expected = struct.pack(
        "<4sLLL",
        importlib.util.MAGIC_NUMBER,
        0,
        int(source.st_mtime) & 0xFFFFFFFF,
        source.st_size & 0xFFFFFFFF,
    )
    return header == expected


def same_source(ours: str, mine: os.stat_result, theirs: str) -> bool:
    """Whether `theirs` is the very file `ours` is (the same device and inode), or a file
    with the same bytes, mtime and size (what a `.pyc` header records)."""
    try:
        other = os.stat(theirs)
    except OSError:
        return False
    if (other.st_dev, other.st_ino) == (mine.st_dev, mine.st_ino):
        return True
    if other.st_size != mine.st_size or int(other.st_mtime) != int(mine.st_mtime):
        return False
    try:
        with open(ours, "rb") as a, open(theirs, "rb") as b:
            return a.read() == b.read()
    except OSError:
        return False


def share(site: str, donors: list[str]) -> tuple[int, list[str]]:
    """Link into `site` the current `.pyc` of each module that is the same file in a donor
    site-packages folder: how many were linked, and the modules still without bytecode."""
    linked = 0
    left = []
    for folder, dirs, files in os.walk(site):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        relative = os.path.relpath(folder, site)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            source = os.path.join(folder, name)
            target = importlib.util.cache_from_source(source)
            try:
                mine = os.stat(source)
            except OSError:
                continue
            if current_for(target, mine):
                continue
            for donor in donors:
                theirs = os.path.join(donor, relative, name)
                compiled = importlib.util.cache_from_source(theirs)
                if (
                    same_source(source, mine, theirs)
                    and current_for(compiled, mine)
                    and _place(compiled, target)
                ):
                    linked += 1
                    break
            else:
                left.append(source)
    return linked, left


def _place(compiled: str, target: str) -> bool:
    """Hard-link (else copy) `compiled` to `target`, atomically; whether it is there."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temporary = f"{target}.{os.getpid()}.tmp"
    try:
        try:
            os.link(compiled, temporary)
        except OSError:
            shutil.copyfile(compiled, temporary)
        os.replace(temporary, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return False
    return True


def compile_all(sources: list[str]) -> None:
    """Compile `sources` as `compileall` does, on every core when there are many."""
    # As uv's --compile-bytecode: a module that does not compile (a package's Python 2
    # test data, say) is left without bytecode; importing it would fail anyway.
    if len(sources) < 64 or (os.cpu_count() or 1) == 1:
        for source in sources:
            compileall.compile_file(source, quiet=2)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor() as pool:
        list(pool.map(functools.partial(compileall.compile_file, quiet=2), sources, chunksize=8))


def main(argv: list[str]) -> int:
    prefix = os.path.realpath(sys.prefix)
    linked = 0
    left: list[str] = []
    for site in site_folders():
        relative = os.path.relpath(site, prefix)
        donors = [os.path.join(os.path.realpath(root), relative) for root in argv]
        done, todo = share(site, [d for d in donors if os.path.isdir(d) and d != site])
        linked += done
        left += todo
    compile_all(left)
    print(json.dumps({"linked": linked, "compiled": len(left)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
