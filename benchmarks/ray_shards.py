"""The reference check sharded on a Ray cluster of 1 and then 2 nodes on this machine,
against the local check, measured in one run.

    .venv/bin/python benchmarks/ray_shards.py [--count 256] [--shards 4] [--repeats 2]

Starts a head node on 127.0.0.1 (one CPU, its own envlock cache; `tests/raycluster.py`),
runs the reference check (`parity.toml`, `--count` samples in batches of 16) locally and
sharded on it, then adds a second node (one CPU, its own cache) and runs the sharded
check again. Each configuration runs once cold (its node's environments materialized
then, not timed in the ratios) and `--repeats` times warm; the table gives the median
wall time of each warm configuration and the ratios, and the cold runs' times apart.
Needs the `ray` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from raycluster import local_ray_cluster  # noqa: E402


def config(folder: Path, count: int, shards: int, executor: str) -> Path:
    data = tomllib.loads((ROOT / "parity.toml").read_text())
    data["model"]["paths"] = [str(ROOT)]
    for env in data["environments"].values():
        env["lock"] = str((ROOT / env["lock"]).resolve())
    data["inputs"].update(count=count, batch_size=16)
    data["run"]["executor"] = executor
    if executor == "ray":
        data["run"]["ray"] = {"shards": shards}
    path = folder / f"{executor}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def check(path: Path, env: dict[str, str], *args: str) -> tuple[float, dict[str, object]]:
    report = path.with_suffix(".json")
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "parity"), "check", "--config", str(path),
         "--json", str(report), "-q", *args],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"parity check failed ({done.returncode}):\n{done.stderr}")
    return seconds, json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    local_cfg = config(root, args.count, args.shards, "local")
    ray_cfg = config(root, args.count, args.shards, "ray")
    env = dict(os.environ)
    cache = root / "local-cache"
    rows: dict[str, tuple[float, list[float]]] = {}

    def measure(name: str, path: Path, run_env: dict[str, str], *extra: str) -> None:
        cold, _ = check(path, run_env, *extra)
        warm = [check(path, run_env, *extra)[0] for _ in range(args.repeats)]
        rows[name] = (cold, warm)
        print(f"{name}: cold {cold:.1f} s, warm {[round(w, 1) for w in warm]} s", file=sys.stderr)

    try:
        measure("local", local_cfg, env, "--cache-dir", str(cache))
        with local_ray_cluster(root / "nodes", second_node=False) as cluster:
            measure("ray, 1 node", ray_cfg, {**cluster.driver_env(), **_path()})
            cluster.add_node("node2")
            measure("ray, 2 nodes", ray_cfg, {**cluster.driver_env(), **_path()})
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the environments built: gigabytes
    local = statistics.median(rows["local"][1])
    print(f"\nreference check, {args.count} samples, {args.shards} shards, {os.cpu_count()} CPUs")
    print(f"{'configuration':<14} {'cold s':>8} {'warm s':>8} {'vs local':>9}")
    for name, (cold, warm) in rows.items():
        median = statistics.median(warm)
        print(f"{name:<14} {cold:>8.1f} {median:>8.1f} {median / local:>8.2f}x")
    one, two = (statistics.median(rows[k][1]) for k in ("ray, 1 node", "ray, 2 nodes"))
    print(f"2 nodes vs 1 node (warm): {two / one:.2f}x the time")


def _path() -> dict[str, str]:
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}


if __name__ == "__main__":
    main()
