"""What does `envlock.guard()` cost at a service's start-up? Prints figures from one run.

    .venv/bin/python benchmarks/guard.py [--packages 300]

Makes a site-packages folder holding N distributions (dist-info folders as pip or uv
write them), a PEP 751 lock pinning exactly those and a recorded fingerprint of them, then
times, against the lock and against the fingerprint:
  call     guard(..., paths=[site]) in this process (median of 20), reading included
  process  a fresh interpreter that imports envlock and calls guard, over one doing
           nothing (median of 5)
and prints each as a share of the 200 ms budget.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

BUDGET = 0.200


def make_environment(root: Path, count: int) -> tuple[Path, Path, Path]:
    """A site folder with `count` distributions, a pylock.toml and a fingerprint of them."""
    site = root / "site-packages"
    site.mkdir()
    packages = []
    for i in range(count):
        name, version = f"package-{i:03d}", f"1.{i}.0"
        info = site / f"package_{i:03d}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{info.name}/METADATA,,\n")
        wheel = f"https://example.invalid/package_{i:03d}-{version}-py3-none-any.whl"
        packages.append(
            {
                "name": name,
                "version": version,
                "marker": "sys_platform == 'linux' or sys_platform != 'linux'",
                "wheels": [{"url": wheel, "hashes": {"sha256": f"{i:064x}"}}],
            }
        )
    lock = root / "pylock.toml"
    lock.write_text(tomli_w.dumps({"lock-version": "1.0", "created-by": "b", "packages": packages}))
    fingerprint = root / "fingerprint.json"
    dists = [{"name": p["name"], "version": p["version"]} for p in packages]
    fingerprint.write_text(json.dumps({"distributions": dists}))
    return site, lock, fingerprint


def median_seconds(fn: object, runs: int) -> float:
    """Median wall time of calling `fn` `runs` times."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=300)
    args = parser.parse_args()
    import envlock

    with tempfile.TemporaryDirectory() as tmp:
        site, lock, fingerprint = make_environment(Path(tmp), args.packages)
        sources = {
            "the lock": f"{str(lock)!r}",
            "a fingerprint": f"fingerprint={str(fingerprint)!r}",
        }

        def run(code: str) -> None:
            subprocess.run([sys.executable, "-c", code], check=True)

        empty = median_seconds(lambda: run("pass"), 5)
        print(f"{args.packages} distributions; (x) = share of the 200 ms budget")
        worst = 0.0
        for label, source in sources.items():
            call = f"envlock.guard({source}, paths=[{str(site)!r}], strict=True)"
            in_process = median_seconds(lambda call=call: eval(call, {"envlock": envlock}), 20)
            fresh = median_seconds(lambda call=call: run(f"import envlock\n{call}"), 5) - empty
            worst = max(worst, in_process)
            print(f"against {label}:")
            print(
                f"  guard() call (median of 20):            {in_process * 1e3:7.1f} ms  "
                f"({in_process / BUDGET:.2f})"
            )
            print(
                f"  import + guard, fresh process (net):    {fresh * 1e3:7.1f} ms  "
                f"({fresh / BUDGET:.2f})"
            )
    return 0 if worst <= BUDGET else 1


if __name__ == "__main__":
    sys.exit(main())
