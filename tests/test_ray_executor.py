"""`[run] executor = "ray"`: a check's replay sharded over a real Ray cluster.

The config errors need no cluster. The rest run `parity check` as a user does, against the
two-node cluster on 127.0.0.1 of the `ray_cluster` fixture (head `node1`, `node2`, one CPU
each, the session's envlock cache shared), and hold the sharded report to the local check's
report figure by figure.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import (
    BIN,
    LOCAL_CONFIG,
    ROOT,
    assert_valid_report,
    parity_check,
    run_cli,
    same_figures,
    the_failure,
)
from raycluster import RAY_ENV, LocalRayCluster

# Adapter for the local-backend checks: each batch takes `NAP` seconds, so a node can be
# killed while a shard runs. `GATE`: a worker waits until that file exists, except where
# `UNGATED` is set (a node's variable, passed with `run.pass_env`). `COUNTER`: a folder
# where each batch's predictions are counted; the times a batch was predicted before are
# added to its outputs (its first run gives what the others give, a run again does not).
ADAPTER = """\
import hashlib
import os
import time
import numpy as np

def predict(inputs):
    gate = os.environ.get("GATE")
    while gate and not os.environ.get("UNGATED") and not os.path.exists(gate):
        time.sleep(0.05)
    if os.environ.get("BREAK"):
        raise RuntimeError("the adapter is broken here")
    time.sleep(float(os.environ.get("NAP", "0")))
    x = inputs["x"].astype(np.float64)
    scale = float(os.environ.get("SCALE", "1"))
    shift = float(os.environ.get("SHIFT", "0"))
    counter = os.environ.get("COUNTER")
    if counter:
        seen = os.path.join(counter, hashlib.sha256(x.tobytes()).hexdigest())
        before = int(open(seen).read()) if os.path.exists(seen) else 0
        with open(seen, "w") as f:
            f.write(str(before + 1))
        shift += before
    return {"y": x * 2.0 * scale + shift}
"""


def local_project(tmp_path: Path, ray: str = "", extra: str = "", count: int = 12) -> Path:
    """A local-backend project in `tmp_path` with the ray settings `ray` (TOML under
    [run.ray]) and `extra` lines appended; its config."""
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "adapter.py").write_text(ADAPTER)
    text = LOCAL_CONFIG.format(timeout=120).replace("count = 12", f"count = {count}")
    text = text.replace("[run]\n", '[run]\nexecutor = "ray"\n') if ray is not None else text
    config = tmp_path / "parity.toml"
    config.write_text(text + (f"\n[run.ray]\n{ray}\n" if ray else "") + extra)
    return config


# --- config errors: no cluster ---------------------------------------------------------


@pytest.mark.parametrize(
    ("ray", "run", "words"),
    [
        ("", 'executor = "spark"', ["run.executor", "local, ray", "'spark'"]),
        ("shards = 0", "", ["run.ray.shards", "at least 1"]),
        ("shards = 2.5", "", ["run.ray.shards", "an integer"]),
        ("max_retries = -1", "", ["run.ray.max_retries", "0 or more"]),
        ("shard_timeout = 0", "", ["run.ray.shard_timeout", "positive"]),
        ("workers = 3", "", ["run.ray.workers", "unknown key"]),
        ("resources = { CPU = 1 }", "", ["run.ray.resources", "custom Ray resource"]),
        ('merge = "all"', "", ["run.ray.merge", "partial, outputs", "'all'"]),
        ("keep_limit = -1", "", ["run.ray.keep_limit", "0 or more"]),
    ],
)
def test_bad_ray_settings_are_config_errors(
    tmp_path: Path, ray: str, run: str, words: list[str]
) -> None:
    config = local_project(tmp_path, ray)
    if run:
        config.write_text(config.read_text().replace('executor = "ray"', run))
    done = run_cli("parity", "check", "--config", str(config))
    assert done.returncode == 2, done.stderr
    for word in words:
        assert word in done.stderr


def test_a_bad_keep_limit_variable_is_a_config_error(tmp_path: Path) -> None:
    config = local_project(tmp_path, 'address = "127.0.0.1:1"')
    done = run_cli(
        "parity", "check", "--config", str(config), env={"PARITY_SHARD_KEEP_LIMIT": "many"}
    )
    assert done.returncode == 2, done.stderr
    assert "$PARITY_SHARD_KEEP_LIMIT must be 0 or more, got 'many'" in done.stderr


def test_no_address_names_both_places(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    config = local_project(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [str(BIN / "parity"), "check", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "run.ray.address" in done.stderr and "$RAY_ADDRESS" in done.stderr


def test_missing_extra_says_how_to_install_it(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no ray here')\n")
    config = local_project(tmp_path, 'address = "127.0.0.1:1"')
    path = os.pathsep.join(p for p in (str(shim.parent), os.environ.get("PYTHONPATH")) if p)
    done = run_cli("parity", "check", "--config", str(config), env={"PYTHONPATH": path})
    assert done.returncode == 2, done.stderr
    assert "needs the `ray` extra (pip install 'envlock-parity[ray]')" in done.stderr


def test_unreachable_cluster_is_exit_3_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = local_project(tmp_path, f'address = "127.0.0.1:{port}"')
    started = time.monotonic()
    cache = tmp_path / "cache"
    done = run_cli(
        "parity", "check", "--config", str(config), "--cache-dir", str(cache),
        env=RAY_ENV, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in done.stderr
    assert time.monotonic() - started < 60
    # the nodes have their own caches: --cache-dir is said to be this machine's, not ignored
    assert f"--cache-dir {cache} is this machine's, not the nodes'" in done.stderr


# --- on the two-node cluster -------------------------------------------------------------


def nodes_of(report: dict[str, Any]) -> set[str]:
    return {s["node"] for s in report["execution"]["shards"]}


@pytest.mark.slow
def test_local_backends_sharded_on_two_nodes(ray_cluster: LocalRayCluster, tmp_path: Path) -> None:
    config = local_project(tmp_path, "shards = 4", count=40)
    text = config.read_text().replace("batch_size = 5", "batch_size = 4")
    config.write_text(text + '\n[environments.infer.env]\nSHIFT = "1e-7"\n')
    done, report = parity_check(config, env=ray_cluster.driver_env())
    assert done.returncode == 1, done.stderr
    local_config = tmp_path / "local.toml"
    local_config.write_text(config.read_text().replace('executor = "ray"', 'executor = "local"'))
    local_done, local = parity_check(local_config)
    assert local_done.returncode == 1, local_done.stderr
    same_figures(report, local)
    ex = report["execution"]
    assert [s["samples"] for s in ex["shards"]] == [[0, 8], [8, 20], [20, 28], [28, 40]]
    assert sorted(s["id"] for s in ex["shards"]) == [0, 1, 2, 3]
    assert nodes_of(report) == {"node1", "node2"}, ex
    assert ex["merge"] == "partial"  # the default
    assert ex["address"] == ray_cluster.address
    assert ex["notes"] == []  # one machine: the nodes' environments do not differ
    for k in range(4):
        assert f"shard {k + 1}/4 done on node" in done.stderr
    assert "ray: 4 shards on 2 nodes (node1: " in done.stdout
    assert "; comparisons came back (" in done.stdout


@pytest.mark.slow
def test_an_environment_failing_on_a_node_names_it(
    ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    config = local_project(tmp_path, "shards = 2\nresources = { node1 = 0.01 }", count=8)
    config.write_text(config.read_text() + '\n[environments.infer.env]\nBREAK = "1"\n')
    done, report = parity_check(config, env=ray_cluster.driver_env())
    assert done.returncode == 3, done.stderr
    assert report["verdict"] == "error"
    error = the_failure(report["errors"])
    assert "environment 'infer'" in error and "the adapter is broken here" in error
    nodes = nodes_of(report)
    (node,) = nodes
    assert f"(on node {node}, shard " in error, error
    assert "infer failed" in done.stderr
    kept = Path(error.rpartition("its work folder there: ")[2].rstrip(")"))
    assert kept.parent == ray_cluster.tmp_dir(node), kept  # kept on that node, as said
    assert (kept / "infer" / "worker.log").is_file()


@pytest.mark.slow
def test_resources_keep_shards_on_the_nodes_that_have_them(
    ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    config = local_project(
        tmp_path, 'shards = 3\nresources = { node2 = 0.01 }\nmerge = "outputs"', count=12
    )
    done, report = parity_check(config, env=ray_cluster.driver_env())
    assert done.returncode == 0, done.stderr
    assert nodes_of(report) == {"node2"}, report["execution"]
    assert report["execution"]["nodes"] == {"node2": 3}
    # merge = "outputs": both environments' outputs came back (12 x 3 x 4 float64 each)
    assert report["execution"]["merge"] == "outputs"
    assert report["execution"]["bytes_from_shards"] >= 2 * 12 * 12 * 8
    assert "quantile pass" not in done.stderr


@pytest.mark.slow
def test_nodes_whose_environments_differ_are_said(
    ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    ray_cluster.add_node("odd", env={"TF_ENABLE_XLA": "0"}, resources={"pair": 1})
    ray_cluster.add_node("even", resources={"pair": 1})
    try:
        config = local_project(tmp_path, "shards = 4\nresources = { pair = 0.01 }", count=16)
        text = config.read_text().replace("batch_size = 5", "batch_size = 4")
        config.write_text(text + '\n[run.env]\nNAP = "1"\n')
        done, report = parity_check(config, env=ray_cluster.driver_env())
    finally:
        ray_cluster.kill_node("odd")
        ray_cluster.kill_node("even")
    assert done.returncode == 0, done.stderr
    assert nodes_of(report) == {"even", "odd"}, report["execution"]
    notes = report["execution"]["notes"]
    assert len(notes) == 2, notes  # one per environment
    for name, note in zip(("train", "infer"), notes, strict=True):
        assert note.startswith(f"environment {name!r} differs between nodes"), note
        assert "env TF_ENABLE_XLA" in note, note
    assert "warning: environment 'train' differs between nodes" in done.stderr
    assert "note: environment 'infer' differs between nodes" in done.stdout


def follow(proc: subprocess.Popen[str], lines: list[str]) -> threading.Thread:
    """A thread reading the driver's stderr into `lines`, line by line, as it comes."""

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


@pytest.mark.slow
def test_a_node_killed_mid_run_loses_no_shard(ray_cluster: LocalRayCluster, tmp_path: Path) -> None:
    # Every shard prefers the node `victim` (its one CPU runs them one after the other, a
    # second a batch). Once its first shard came back, victim is killed while it replays the
    # next: that one is retried elsewhere; and the first shard's outputs, kept on victim for
    # the quantile passes (keep limit 0), are gone with it, so it is replayed again for the
    # first pass. The other nodes' workers wait at the gate until victim is killed, so no
    # quantile pass can start before. Each shard counts once.
    gate = tmp_path / "gate"
    ray_cluster.add_node("victim", env={"UNGATED": "1", "NAP": "1"})
    config = local_project(tmp_path, 'shards = 4\nprefer = "victim"\nkeep_limit = 0', count=16)
    text = config.read_text().replace("batch_size = 5", "batch_size = 4")
    text = text.replace("[run]\n", '[run]\npass_env = ["UNGATED", "NAP"]\n')
    config.write_text(
        text + f'\n[run.env]\nGATE = "{gate}"\n[environments.infer.env]\nSHIFT = "1e-7"\n'
    )
    report_path = tmp_path / "sharded.json"
    proc = subprocess.Popen(
        [str(BIN / "parity"), "check", "--config", str(config), "--json", str(report_path)],
        env={**ray_cluster.driver_env(), "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = follow(proc, lines)
    first = ""
    try:
        deadline = time.monotonic() + 240
        while not first and time.monotonic() < deadline and proc.poll() is None:
            first = next((line for line in list(lines) if " done on victim: " in line), "")
            time.sleep(0.02)
        ray_cluster.kill_node("victim")
        gate.touch()
        assert first, "".join(lines)
        assert proc.wait(timeout=300) == 1, "".join(lines)
        reader.join()
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines)
    report = json.loads(report_path.read_text())
    assert_valid_report(report)
    local_config = tmp_path / "local.toml"
    local_config.write_text(config.read_text().replace('executor = "ray"', 'executor = "local"'))
    _, local = parity_check(local_config)
    same_figures(report, local)  # median and p99 included: no shard counted twice
    shards = report["execution"]["shards"]
    assert [s["id"] for s in shards] == [0, 1, 2, 3]  # each once
    assert all(stderr.count(f"shard {k}/4 done on ") == 1 for k in range(1, 5)), stderr
    assert report["execution"]["retried"] >= 1, shards
    # the shard that came back from victim: its quantile answers came from its replay
    kept = int(first.partition("shard ")[2].partition("/")[0])
    assert "quantile pass 1: 4 shards" in stderr, stderr
    assert f"node victim, which kept shard {kept}'s outputs, is gone: replaying" in stderr
    assert stderr.count(f"shard {kept} replayed again on node") == 1, stderr
    replayed = {s["id"] + 1: s.get("replayed") for s in shards if "replayed" in s}
    assert list(replayed) == [kept] and replayed[kept] in {"node1", "node2"}, shards
    assert {s["node"] for s in shards if s["id"] + 1 != kept} <= {"node1", "node2"}, shards
    assert kept_folders(ray_cluster) == []


def kept_folders(cluster: LocalRayCluster) -> list[Path]:
    """The shard folders kept for quantile passes on the two base nodes."""
    return [
        p.parent
        for node in ("node1", "node2")
        for p in cluster.tmp_dir(node).glob("parity-*-shard*/kept.json")
    ]


@pytest.mark.slow
def test_partial_merge_brings_back_summaries_and_refines_on_the_nodes(
    ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    config = local_project(tmp_path, "shards = 4", count=40)
    text = config.read_text().replace("batch_size = 5", "batch_size = 4")
    text = text.replace("shape = [3, 4]", "shape = [64, 64]")
    # differences spread with |x|: median and p99 are distinct order statistics
    config.write_text(text + '\n[environments.infer.env]\nSCALE = "1.000001"\n')
    env = ray_cluster.driver_env(PARITY_SHARD_KEEP_LIMIT="16")
    done, report = parity_check(config, env=env)
    assert done.returncode == 1, done.stderr
    local_config = tmp_path / "local.toml"
    local_config.write_text(config.read_text().replace('executor = "ray"', 'executor = "local"'))
    local_done, local = parity_check(local_config)
    assert local_done.returncode == 1, local_done.stderr
    same_figures(report, local)  # median and p99 (absolute, relative) included
    ex = report["execution"]
    assert ex["merge"] == "partial"
    outputs_bytes = 2 * 40 * 64 * 64 * 8  # both environments' y, float64
    assert 0 < ex["bytes_from_shards"] < outputs_bytes / 10, ex["bytes_from_shards"]
    assert "quantile pass 1: 4 shards" in done.stderr
    assert kept_folders(ray_cluster) == []  # removed after the check


def check_losing_a_kept_folder(cluster: LocalRayCluster, config: Path) -> tuple[int, str, Path]:
    """Run `parity check --config config --json <its folder>/sharded.json` on `cluster`,
    deleting the first shard folder kept on a node while the other shards still run (a
    second a batch): its exit code, its stderr and the folder deleted."""
    report_path = config.parent / "sharded.json"
    proc = subprocess.Popen(
        [str(BIN / "parity"), "check", "--config", str(config), "--json", str(report_path)],
        env={**cluster.driver_env(), "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deleted: list[Path] = []
    try:  # the first shard kept is deleted while the others still run
        deadline = time.monotonic() + 240
        while not deleted and time.monotonic() < deadline and proc.poll() is None:
            for folder in kept_folders(cluster):
                shutil.rmtree(folder)
                deleted.append(folder)
                break
            time.sleep(0.05)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert deleted, stderr
    return proc.returncode, stderr, deleted[0]


@pytest.mark.slow
def test_a_shard_whose_kept_outputs_are_gone_is_replayed_again(
    ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    config = local_project(tmp_path, "shards = 4\nkeep_limit = 0", count=16)
    text = config.read_text().replace("batch_size = 5", "batch_size = 4")
    config.write_text(text + '\n[run.env]\nNAP = "1"\n[environments.infer.env]\nSHIFT = "1e-7"\n')
    code, stderr, deleted = check_losing_a_kept_folder(ray_cluster, config)
    assert code == 1, stderr
    shard = int(deleted.name.partition("-shard")[2].partition("-")[0]) + 1
    assert f"shard {shard}'s outputs are gone from node" in stderr, stderr
    assert f"shard {shard} replayed again on node" in stderr, stderr
    report = json.loads((tmp_path / "sharded.json").read_text())
    assert_valid_report(report)
    local_config = tmp_path / "local.toml"
    local_config.write_text(config.read_text().replace('executor = "ray"', 'executor = "local"'))
    _, local = parity_check(local_config)
    same_figures(report, local)
    assert kept_folders(ray_cluster) == []


@pytest.mark.slow
def test_a_shard_replayed_again_with_other_outputs_is_an_error(
    ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    # infer's model adds to each batch the times it predicted it before: the shard whose
    # kept folder is deleted is replayed again, and infer's y differs from its first run's
    counter = tmp_path / "counter"
    counter.mkdir()
    config = local_project(tmp_path, "shards = 4\nkeep_limit = 0", count=16)
    text = config.read_text().replace("batch_size = 5", "batch_size = 4")
    config.write_text(
        text + '\n[run.env]\nNAP = "1"\n[environments.infer.env]\nSHIFT = "1e-7"\n'
        f'COUNTER = "{counter}"\n'
    )
    code, stderr, deleted = check_losing_a_kept_folder(ray_cluster, config)
    assert code == 3, stderr
    shard = int(deleted.name.partition("-shard")[2].partition("-")[0]) + 1
    first_node = deleted.parent.name  # the node's TMPDIR holds the folders it kept
    said = f"shard {shard} (samples {4 * shard - 4}-{4 * shard - 1}) replayed again on node node"
    report = json.loads((tmp_path / "sharded.json").read_text())
    assert_valid_report(report)
    assert report["verdict"] == "error", report["errors"]
    errors = [e for e in report["errors"] if said in e]
    assert len(errors) == 1, report["errors"]
    assert f" gave other outputs than its first run on node {first_node} " in errors[0]
    assert "(environment 'infer': output 'y')" in errors[0], errors[0]
    assert "the quantiles cannot be merged exactly from two different runs" in errors[0]
    assert f"shard {shard}'s outputs are gone from {first_node}: replaying" in stderr
    assert "shard missing, or answering twice" not in stderr, stderr
    # no quantile came from the run again
    assert all("replayed" not in s for s in report["execution"]["shards"]), report["execution"]
    assert kept_folders(ray_cluster) == []


# --- the reference model and the numpy-drift example -------------------------------------


def model_config(tmp_path: Path, source: Path, name: str, executor: str) -> Path:
    """`source` (a config of this repository) for 64 samples in batches of 16, paths made
    absolute, run on `executor` in 4 shards."""
    data = tomllib.loads(source.read_text())
    base = source.parent
    data["model"]["paths"] = [str((base / p).resolve()) for p in data["model"]["paths"]]
    for env in data["environments"].values():
        env["lock"] = str((base / env["lock"]).resolve())
    data["inputs"].update(count=64, batch_size=16)
    data["run"]["executor"] = executor
    if executor == "ray":
        data["run"]["ray"] = {"shards": 4}
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "code"),
    [(ROOT / "parity.toml", 0), (ROOT / "examples" / "numpy-drift" / "parity.toml", 1)],
    ids=["reference-model", "numpy-drift"],
)
def test_model_sharded_report_equals_local(
    ray_cluster: LocalRayCluster, shared_cache: Path, tmp_path: Path, source: Path, code: int
) -> None:
    sharded_config = model_config(tmp_path, source, "sharded.toml", "ray")
    done, report = parity_check(sharded_config, env=ray_cluster.driver_env())
    assert done.returncode == code, done.stderr
    local_config = model_config(tmp_path, source, "local.toml", "local")
    local_done, local = parity_check(local_config, "--cache-dir", str(shared_cache))
    assert local_done.returncode == code, local_done.stderr
    same_figures(report, local)
    assert nodes_of(report) == {"node1", "node2"}, report["execution"]
    if code == 1:
        assert any("numpy" in r for r in report["reasons"]), report["reasons"]
        assert any(d["name"] == "numpy" and d["fails"] for d in report["version_diffs"])


def test_shards_follow_batches() -> None:
    from parity.runs.sharded import plan_shards

    assert [(s.start, s.stop) for s in plan_shards(64, 16, 4)] == [
        (0, 16), (16, 32), (32, 48), (48, 64),
    ]  # fmt: skip
    assert [(s.start, s.stop) for s in plan_shards(10, 4, 8)] == [(0, 4), (4, 8), (8, 10)]
    assert [(s.start, s.stop) for s in plan_shards(256, 64, 3)] == [(0, 64), (64, 128), (128, 256)]


def test_a_shards_output_digest_is_its_content_not_its_file(tmp_path: Path) -> None:
    """What a replay again is held to (`output_digests`, from the kept `.npz` as the node
    reads it): the same arrays in another file (other zip timestamps, deflated, Fortran
    order) give the same digests; an element, the dtype, the shape or the name changed
    gives another."""
    import zipfile

    import numpy as np

    from parity.arrays import DIGEST_BYTES, MemoryArray, content_digest
    from parity.inputs.seeded import digest
    from parity.outputs import load_outputs
    from parity.runs.sharded import output_digests

    rng = np.random.default_rng(5)
    y = rng.standard_normal((3, DIGEST_BYTES // 4 // 3 + 7)).astype(np.float32)  # 2 blocks
    z = np.arange(24, dtype=np.int64).reshape(2, 3, 4)

    def written(name: str, when: tuple[int, ...], deflated: bool, **arrays: Any) -> Path:
        plain = tmp_path / f"{name}.plain.npz"
        np.savez(plain, **arrays)
        path = tmp_path / f"{name}.npz"
        with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as dst:
            for info in src.infolist():
                member = zipfile.ZipInfo(info.filename, date_time=when)
                member.compress_type = zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED
                dst.writestr(member, src.read(info))
        return path

    def digests(path: Path) -> dict[str, str]:
        return output_digests(dict(load_outputs(path)))

    first = written("first", (2026, 1, 2, 3, 4, 6), False, y=y, z=z)
    again = written("again", (2026, 11, 30, 20, 0, 0), True, y=y, z=np.asfortranarray(z))
    assert first.read_bytes() != again.read_bytes()
    assert digests(first) == digests(again)
    # the framing of the input set's digest, array by array, streamed in blocks
    assert digests(first) == {"y": digest({"y": y}), "z": digest({"z": z})}
    assert content_digest("y", MemoryArray(y.astype(">f4"))) == digest({"y": y})

    changed = y.copy()
    changed[2, -1] = np.nextafter(changed[2, -1], np.float32(np.inf))
    other = digests(written("element", (2026, 1, 2, 3, 4, 6), False, y=changed, z=z))
    assert other["y"] != digests(first)["y"] and other["z"] == digests(first)["z"]
    for name, arrays in {
        "dtype": {"y": y.view(np.int32), "z": z},  # the same bytes, another dtype
        "shape": {"y": y.reshape(-1, 3), "z": z},  # the same elements, another shape
    }.items():
        other = digests(written(name, (2026, 1, 2, 3, 4, 6), False, **arrays))
        assert other["y"] != digests(first)["y"], name
    assert content_digest("w", MemoryArray(z)) != content_digest("z", MemoryArray(z))


@pytest.mark.parametrize(
    ("flag", "key"), [("--calibrate", "run.calibrate"), ("--localize", "run.localize")]
)
def test_what_runs_locally_only_is_a_usage_error(tmp_path: Path, flag: str, key: str) -> None:
    config = local_project(tmp_path, 'address = "127.0.0.1:1"')
    done = run_cli("parity", "check", "--config", str(config), flag)
    assert done.returncode == 2, done.stderr
    assert key in done.stderr and "locally only" in done.stderr


def test_merge_shards_assembles_in_sample_order_and_refuses_misfits(tmp_path: Path) -> None:
    import numpy as np

    from envlock.environments import EnvironmentSpec
    from parity.errors import ParityError
    from parity.runs.replay import EnvRun
    from parity.runs.sharded import merge_shards, plan_shards

    whole = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    plan = plan_shards(10, 2, 3)  # [0, 2), [2, 6), [6, 10)
    shipped = []
    for shard in plan:
        path = tmp_path / f"{shard.id}.npz"
        np.savez(path, y=whole[shard.start : shard.stop], z=whole[shard.start : shard.stop, 0])
        shipped.append((shard, {"outputs_file": str(path)}))
    run = EnvRun(EnvironmentSpec("infer", "local", None))
    merge_shards(run, shipped, tmp_path / "infer")
    assert np.array_equal(run.outputs["y"].load(), whole)
    assert np.array_equal(run.outputs["z"].load(), whole[:, 0])
    np.savez(tmp_path / "1.npz", y=whole[2:6].astype(np.float64), z=whole[2:6, 0])
    with pytest.raises(ParityError, match="output 'y' of shard 2 is float64"):
        merge_shards(run, shipped, tmp_path / "again")
    np.savez(tmp_path / "1.npz", y=whole[2:5], z=whole[2:5, 0])
    with pytest.raises(ParityError, match="for 4 samples"):
        merge_shards(run, shipped, tmp_path / "again")


@pytest.mark.parametrize(
    ("shape", "dtype", "sent"),
    [
        ((16, 12), "float64", "outputs"),  # a comparison's own few KiB outweigh 3 KiB of outputs
        ((40, 32, 32), "float32", "outputs"),  # every difference kept: 2 float64 per element
        ((40, 32, 32), "float64", "partials"),  # the kept differences are the smaller
    ],
)
def test_a_shard_sends_back_the_smaller_of_its_comparison_and_its_outputs(
    tmp_path: Path, shape: tuple[int, ...], dtype: str, sent: str
) -> None:
    """merge = "partial" with no keep limit set: each output of a shard comes back as its
    partial comparison or its arrays, whichever is smaller, and the check compares either
    as the local check does (no cluster: the node's and the driver's halves, here)."""
    import dataclasses

    import numpy as np
    from test_partial_compare import assert_same

    from parity.arrays import as_output_array
    from parity.config import load_config
    from parity.judging.compare import compare_arrays
    from parity.runs.sharded import ShardedReplay, plan_shards
    from parity.sharded_check import compare_shards, summarize_shard

    path = local_project(tmp_path, count=shape[0])
    config = load_config(path)
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(shape).astype(dtype)
    cand = (ref * np.asarray(1.000001, dtype) + np.asarray(1e-7, dtype)).astype(dtype)
    plan = plan_shards(shape[0], 4, 3)
    summaries = []
    for shard in plan:
        part = {
            name: {"y": as_output_array(a[shard.start : shard.stop])}
            for name, a in (("train", ref), ("infer", cand))
        }
        summary = summarize_shard(config, part, shard.start)
        outputs = 2 * math.prod(shape[1:]) * (shard.stop - shard.start) * ref.itemsize
        back = sum(
            len(b) for b in [*summary["partials"].values(), *summary.get("outputs", {}).values()]
        )
        assert back <= outputs + 1024, (back, outputs)  # the .npz's own headers aside
        assert list(summary["partials" if sent == "partials" else "outputs"]) == ["y"]
        summaries.append((shard, summary))
        # a keep limit set: always the comparison (what forces the tests' quantile passes)
        limited = dataclasses.replace(config, ray=dataclasses.replace(config.ray, keep_limit=0))
        assert "outputs" not in summarize_shard(limited, part, shard.start)
    replay = ShardedReplay("", 0.0, [], {}, summaries=summaries, kept=None)
    (got,) = compare_shards(config, replay, lambda _: None).comparisons
    assert_same(got, compare_arrays("y", ref, cand, config.tolerance_for("y")))
