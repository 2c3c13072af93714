"""What does `envlock.guard()` cost at a service's start-up? Prints figures from one run.

    .venv/bin/python benchmarks/guard.py [--packages 300]

Makes a site-packages folder holding N distributions (dist-info folders as pip or uv
write them) and a PEP 751 lock pinning exactly those, then times
  call     guard(lock, paths=[site]) in this process (median of 20), the lock read included
  process  a fresh interpreter that imports envlock and calls guard (median of 5)
against the budget of 200 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

BUDGET = 0.200


def make_environment(root: Path, count: int) -> tuple[Path, Path]:
    """A site folder with `count` distributions and a pylock.toml that pins them."""
    site = root / "site-packages"
    site.mkdir()
    packages = []
    for i in range(count):
        name, version = f"package-{i:03d}", f"1.{i}.0"
        info = site / f"package_{i:03d}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{info.name}/METADATA,,\n")
        packages.append(
            {
                "name": name,
                "version": version,
                "marker": "sys_platform == 'linux' or sys_platform != 'linux'",
                "wheels": [
                    {
                        "url": f"https://example.invalid/package_{i:03d}-{version}-py3-none-any.whl",
                        "hashes": {"sha256": f"{i:064x}"},
                    }
                ],
            }
        )
    lock = root / "pylock.toml"
    lock.write_text(
        tomli_w.dumps({"lock-version": "1.0", "created-by": "bench", "packages": packages})
    )
    return site, lock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=300)
    args = parser.parse_args()
    import envlock

    with tempfile.TemporaryDirectory() as tmp:
        site, lock = make_environment(Path(tmp), args.packages)
        calls = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert envlock.guard(lock, paths=[str(site)], strict=True) == []
            calls.append(time.perf_counter() - t0)
        code = f"import envlock\nenvlock.guard({str(lock)!r}, paths=[{str(site)!r}], strict=True)\n"
        processes, bare = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            processes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - t0)
    call, process, empty = (statistics.median(x) for x in (calls, processes, bare))
    print(f"{args.packages} distributions, a lock pinning all of them; (x) = share of 200 ms")
    print(f"guard() call (median of 20):           {call * 1000:7.1f} ms  ({call / BUDGET:.2f})")
    print(f"fresh process: import envlock + guard:  {process * 1000:7.1f} ms")
    print(f"fresh process doing nothing:            {empty * 1000:7.1f} ms")
    extra = process - empty
    print(f"import + guard over an empty process:  {extra * 1000:7.1f} ms  ({extra / BUDGET:.2f})")
    return 0 if call <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
