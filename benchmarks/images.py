"""What do the images cost? Prints build times and parity-on-images vs parity-on-venvs, one run.

  .venv/bin/python benchmarks/images.py [--base envlock/local-base:bookworm] [--repeat 3]

cold build   both images with --no-cache and an empty wheelhouse (wheels from mirrors
             or PyPI), so no layer is reused, not even between the two images
warm build   the same command again with the lock unchanged (a cache hit)
parity       `parity check` of the reference model on the image pair
             (examples/docker/parity.toml) and on the venv pair (parity.toml), median
             of --repeat runs each, environments already built
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds and stdout of one command, which must succeed."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, out.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base", default=os.environ.get("ENVLOCK_BASE_IMAGE", "envlock/local-base:bookworm")
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="images-bench-") as tmp:
        env = {**os.environ, "ENVLOCK_CACHE_DIR": str(Path(tmp) / "cache")}
        build = [
            str(BIN / "envlock"),
            "build",
            "--base",
            args.base,
            "--json",
            "--pins",
            str(Path(tmp) / "pins.toml"),
        ]
        cold, cold_out = timed([*build, "--no-cache"], env)
        warm, warm_out = timed(build, env)
        parity = [str(BIN / "parity"), "check", "-q", "--config"]
        timed([*parity, "parity.toml"])  # make sure the venvs exist before timing
        images = [timed([*parity, "examples/docker/parity.toml"])[0] for _ in range(args.repeat)]
        venvs = [timed([*parity, "parity.toml"])[0] for _ in range(args.repeat)]
    cold_result, warm_result = json.loads(cold_out), json.loads(warm_out)
    print(f"base: {args.base}")
    print(
        f"cold build of both images (no cache):   {cold:7.1f} s   shared part shown by "
        f"{cold_result['proof']['method']}: {cold_result['proof']['detail']}"
    )
    hits = [i["cached"] for i in warm_result["images"].values()]
    print(f"warm rebuild, lock unchanged:           {warm:7.1f} s   cache hits: {hits}")
    print(f"cold / warm build:                      {cold / warm:7.1f}")
    print(
        f"parity check on images (median of {args.repeat}):  {statistics.median(images):7.2f} s   "
        + ", ".join(f"{t:.2f}" for t in images)
    )
    print(
        f"parity check on venvs  (median of {args.repeat}):  {statistics.median(venvs):7.2f} s   "
        + ", ".join(f"{t:.2f}" for t in venvs)
    )
    ratio = statistics.median(images) / statistics.median(venvs)
    print(f"images / venvs:                         {ratio:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
