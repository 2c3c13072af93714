"""What do the images cost? Prints build times and parity-on-images vs parity-on-venvs, one run.

  .venv/bin/python benchmarks/images.py [--base envlock/local-base:bookworm] [--repeat 3]
                                        [--before REF]

cold build   both images with --no-cache and an empty wheelhouse (wheels from mirrors
             or PyPI), so no layer is reused, not even between the two images
warm build   the same command again with the lock unchanged (a cache hit)
parity       `parity check` of the reference model on the image pair
             (examples/docker/parity.toml) and on the venv pair (parity.toml), median
             of --repeat runs each, environments already built
sizes        each image's size (bytes, as `docker image inspect` gives it), the part above
             the base, and its largest layers with the instruction that made them, for
             the Dockerfiles here (rows `here`); with --before REF also for those at
             git REF (e.g. main; rows named by it), built into a repository of their
             own, and the ratios here / REF. These builds use the builder's cache, so
             they also show how many layers the two images share and whether the
             shared environment is proven by layer digests
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds and stdout of one command, which must succeed."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, out.stdout


def layer_rows(client: Any, tag: str, top: int = 2) -> list[tuple[int, str]]:
    """The `top` largest layers of `tag`: (bytes, instruction), largest first."""
    history = client.api.history(tag)
    rows = [
        (int(h["Size"]), " ".join(str(h["CreatedBy"]).split()) or "(no instruction: imported)")
        for h in history
    ]
    return sorted((r for r in rows if r[0] > 0), reverse=True)[:top]


def image_sizes(label: str, result: dict[str, Any], base: str) -> dict[str, int]:
    """Print one layout's rows (size, above the base, largest layers, layers shared by both
    images) and return its image sizes by role."""
    from envlock.backends.docker import docker_client

    client = docker_client()
    base_size = int(client.images.get(base).attrs["Size"])
    images = result["images"]
    sizes = {}
    for role, image in images.items():
        size = int(client.images.get(image["tag"]).attrs["Size"])
        sizes[role] = size
        print(
            f"{label:<7} {role:<6} image size: {size:>14,} B   above base: "
            f"{size - base_size:>14,} B   layers: {len(image['layers'])}   {image['tag']}"
        )
        for n, (layer, made_by) in enumerate(layer_rows(client, image["tag"]), 1):
            print(f"{label:<7} {role:<6}   largest layer {n}: {layer:>14,} B   {made_by[:90]}")
    train, infer = images["train"]["layers"], images["infer"]["layers"]
    shared = 0
    for a, b in zip(train, infer, strict=False):
        if a != b:
            break
        shared += 1
    print(
        f"{label:<7} layers both images share (the base's included): {shared} of train "
        f"{len(train)}, infer {len(infer)}; shared environment shown by "
        f"{result['proof']['method']}"
    )
    return sizes


def build_layout(
    build: list[str], env: dict[str, str], repo: str, dockerfiles: Path
) -> dict[str, Any]:
    """`envlock build` (builder cache allowed) of the Dockerfiles in `dockerfiles` into `repo`."""
    out = timed([*build, "--repo", repo, "--dockerfiles", str(dockerfiles)], env)[1]
    return dict(json.loads(out))


# The last commit whose Dockerfiles installed from a wheelhouse COPYed into the image (single
# stage): what `--sizes-only` compares with by default.
SINGLE_STAGE = "7b6dc9a"


def sizes_only(base: str, before: str) -> int:
    """Image sizes with the Dockerfiles here and at `before`, builder cache allowed."""
    from results import record  # beside this script

    with tempfile.TemporaryDirectory(prefix="images-bench-") as tmp:
        env = {**os.environ, "ENVLOCK_CACHE_DIR": str(Path(tmp) / "cache")}
        build = [str(BIN / "envlock"), "build", "--base", base, "--json"]
        build += ["--pins", str(Path(tmp) / "pins.toml")]
        layouts = {"here": build_layout(build, env, "envlock/images-bench-here", ROOT)}
        old = Path(tmp) / "before"
        old.mkdir()
        for name in ("Dockerfile.train", "Dockerfile.infer"):
            (old / name).write_text(timed(["git", "show", f"{before}:{name}"])[1])
        layouts[before] = build_layout(build, env, "envlock/images-bench-before", old)
    print(f"base: {base}")
    sizes = {label: image_sizes(label, result, base) for label, result in layouts.items()}
    for role in ("train", "infer"):
        here, then = sizes["here"][role], sizes[before][role]
        print(
            f"{role} image here / {before}: {here / then:6.3f}   "
            f"{here:,} B vs {then:,} B, {then - here:,} B less"
        )
        record(
            f"{role} image size, here / wheelhouse inside ({before})",
            here / then,
            target=1.0,
            detail=f"{here / 1e9:.2f} GB vs {then / 1e9:.2f} GB",
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base", default=os.environ.get("ENVLOCK_BASE_IMAGE", "envlock/local-base:bookworm")
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--before",
        metavar="REF",
        help="Also build the Dockerfiles at this git ref (e.g. main) and compare image sizes.",
    )
    parser.add_argument(
        "--sizes-only",
        action="store_true",
        help=f"Only the sizes, here and (default --before {SINGLE_STAGE}, the last commit whose "
        "images kept the wheelhouse) before: no cold build, no parity timings.",
    )
    args = parser.parse_args()
    if args.sizes_only:
        return sizes_only(args.base, args.before or SINGLE_STAGE)
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
        layouts = {"here": build_layout(build, env, "envlock/images-bench-here", ROOT)}
        if args.before:
            old = Path(tmp) / "before"
            old.mkdir()
            for name in ("Dockerfile.train", "Dockerfile.infer"):
                text = timed(["git", "show", f"{args.before}:{name}"])[1]
                (old / name).write_text(text)
            layouts[args.before] = build_layout(build, env, "envlock/images-bench-before", old)
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
    sizes = {label: image_sizes(label, result, args.base) for label, result in layouts.items()}
    if args.before:
        for role in ("train", "infer"):
            here, before = sizes["here"][role], sizes[args.before][role]
            print(
                f"{role} image here / {args.before}: {here / before:6.3f}   "
                f"{here:,} B vs {before:,} B, {before - here:,} B less"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
