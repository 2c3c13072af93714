"""`parity shard run` / `parity shard merge` and the Kubernetes manifests that run them.

No cluster is reachable here: the manifests are tested as files (parsed, validated against
Kubernetes' own OpenAPI schemas, offline, by `kubernetes-validate`) and their container
command lines, taken from the files with `$(JOB_COMPLETION_INDEX)` substituted as
Kubernetes substitutes it, are run here as separate processes, one per pod, with each
volume's mount path mapped to a folder of the test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BIN, LOCAL_CONFIG, ROOT, SCALED_MODEL, assert_valid_report, run_cli

MANIFESTS = ROOT / "deploy" / "kubernetes"
SHARDS = MANIFESTS / "parity-shards.yaml"
MERGE = MANIFESTS / "parity-merge.yaml"
# backoffLimitPerIndex and podFailurePolicy are GA from Kubernetes 1.33
K8S_VERSIONS = ("1.33.0", "1.37.0")
FIGURES = ("verdict", "reasons", "outputs", "version_diffs", "warnings", "errors", "inputs")


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def job(path: Path) -> dict[str, Any]:
    (found,) = [d for d in docs(path) if d["kind"] == "Job"]
    return found


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    (found,) = manifest["spec"]["template"]["spec"]["containers"]
    return found


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def expand(arg: str, env: dict[str, str]) -> str:
    """`arg` as the kubelet expands a container's command: `$(VAR)` is the variable's value
    when the container has it (else left as written), `$$` is `$`."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, arg)


def pod_command(
    manifest: dict[str, Any], mounts: dict[str, Path], env: dict[str, str]
) -> list[str]:
    """The manifest's container command as this machine runs it: variables expanded,
    `parity` this checkout's, each volume's mount path replaced by the test's folder."""
    spec = container(manifest)
    env = {**{e["name"]: e["value"] for e in spec.get("env", []) if "value" in e}, **env}
    paths = {m["mountPath"]: mounts[m["name"]] for m in spec["volumeMounts"]}
    words = []
    for arg in spec["command"]:
        word = expand(arg, env)
        for mount, local in paths.items():
            if word == mount or word.startswith(mount + "/"):
                word = str(local) + word[len(mount) :]
        words.append(word)
    assert words[0] == "parity"
    return [str(BIN / "parity"), *words[1:]]


def project(root: Path, scale: str = "1.001", seed: int = 7) -> Path:
    """A local-backend project at `root` whose infer environment scales the output (so
    the check fails with figures to compare); 12 samples in 4 batches of 3."""
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "adapter.py").write_text(textwrap.dedent(SCALED_MODEL))
    config = (
        LOCAL_CONFIG.format(timeout=120)
        .replace("batch_size = 5", "batch_size = 3")
        .replace("seed = 7", f"seed = {seed}")
    )
    (root / "parity.toml").write_text(config + f'\n[environments.infer.env]\nSCALE = "{scale}"\n')
    return root


def run_pods(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Run the pods' commands at once, each its own process, as pods are."""
    env = {**os.environ, "KUBERNETES_SERVICE_HOST": "kubernetes.default.svc"}  # in every pod
    procs = [
        subprocess.Popen(
            c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c in commands
    ]
    done = []
    for c, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(c, p.returncode, out, err))
    return done


# --- the manifests as files ---------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_are_valid_kubernetes_objects(version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for path in (SHARDS, MERGE):
        for doc in docs(path):
            kubernetes_validate.validate(doc, version, strict=True)
    # the validation can fail: a misspelt field is refused
    broken = job(SHARDS)
    broken["spec"]["completionsMode"] = broken["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_the_manifests_describe_one_sharded_check() -> None:
    shards, merge = job(SHARDS), job(MERGE)
    spec = shards["spec"]
    pod = spec["template"]["spec"]
    command = container(shards)["command"]
    assert spec["completionMode"] == "Indexed"
    assert command[:3] == ["parity", "shard", "run"]
    assert option(command, "--index") == "$(JOB_COMPLETION_INDEX)"
    assert int(option(command, "--of")) == spec["completions"] >= spec["parallelism"]
    assert spec["backoffLimitPerIndex"] >= 1 and pod["restartPolicy"] == "Never"
    # the shards' folder is the ReadWriteMany claim, the one the merge reads
    (claim,) = [d for d in docs(SHARDS) if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(shards)["volumeMounts"]}
    out = volumes[mounts[option(command, "--out")]]
    assert out["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "emptyDir" in volumes[mounts[option(command, "--cache-dir")]]
    merge_command = container(merge)["command"]
    assert merge_command[:3] == ["parity", "shard", "merge"]
    merge_pod = merge["spec"]["template"]["spec"]
    merge_mounts = {m["mountPath"]: m["name"] for m in container(merge)["volumeMounts"]}
    merge_volumes = {v["name"]: v for v in merge_pod["volumes"]}
    folder = merge_command[merge_command.index("parity.toml") + 1]
    assert folder == option(command, "--out")
    merged = merge_volumes[merge_mounts[folder]]
    assert merged["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert option(merge_command, "--json").startswith(folder + "/")
    assert container(merge)["image"] == container(shards)["image"]
    assert option(merge_command, "--config") == option(command, "--config")


# --- the manifests' commands, run here --------------------------------------------------------


def test_manifest_commands_merge_to_the_local_check(tmp_path: Path) -> None:
    root = project(tmp_path / "app")
    shards = job(SHARDS)
    n = shards["spec"]["completions"]
    mounts = {"shards": tmp_path / "pvc", "envlock-cache": tmp_path / "cache"}
    pods = [pod_command(shards, mounts, {"JOB_COMPLETION_INDEX": str(k)}) for k in range(n)]
    for done in run_pods(pods, root):
        assert done.returncode == 0, done.stderr
    first = (tmp_path / "pvc" / "shard-1-of-4").stat().st_ino
    # a pod Kubernetes retried: its folder is replaced whole, nothing else left behind
    (retried,) = run_pods([pods[1]], root)
    assert retried.returncode == 0, retried.stderr
    assert sorted(p.name for p in (tmp_path / "pvc").iterdir()) == [
        f"shard-{k}-of-4" for k in range(n)
    ]
    assert (tmp_path / "pvc" / "shard-1-of-4").stat().st_ino != first
    again = json.loads((tmp_path / "pvc" / "shard-1-of-4" / "shard.json").read_text())
    assert again["samples"] == [3, 6] and again["index"] == 1 and again["of"] == 4

    merge = pod_command(job(MERGE), mounts, {})
    merged = subprocess.run(merge, cwd=root, capture_output=True, text=True, timeout=300)
    assert merged.returncode == 1, merged.stderr  # SCALE differs: the check fails
    assert "parity check: FAIL" in merged.stdout
    reports = tmp_path / "pvc" / "reports"
    sharded = json.loads((reports / "report.json").read_text())
    assert_valid_report(sharded)
    assert {p.name for p in reports.iterdir()} >= {
        "report.json",
        "parity.xml",
        "summary.md",
        "report.html",
    }
    local_json = tmp_path / "local.json"
    local = run_cli(
        "parity", "check", "--config", "parity.toml", "--json", str(local_json), cwd=root
    )
    assert local.returncode == 1, local.stderr
    expected = json.loads(local_json.read_text())
    for key in FIGURES:
        assert sharded.get(key) == expected.get(key), key
    assert max(o["max_abs_diff"] for o in sharded["outputs"]) > 0  # figures worth comparing
    execution = sharded["execution"]
    assert execution["executor"] == "kubernetes"  # every shard ran in a "pod"
    assert [s["samples"] for s in execution["shards"]] == [[0, 3], [3, 6], [6, 9], [9, 12]]
    assert "execution" not in expected

    # a shard of another cut beside them, then one past the last: exit 3 naming them
    (tmp_path / "pvc" / "shard-0-of-5").mkdir()
    done = subprocess.run(merge, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    assert "shards of different cuts (of 4, of 5)" in done.stderr
    (tmp_path / "pvc" / "shard-0-of-5").rmdir()
    (tmp_path / "pvc" / "shard-7-of-4").mkdir()
    done = subprocess.run(merge, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    assert "extra: shard-7-of-4" in done.stderr
    (tmp_path / "pvc" / "shard-7-of-4").rmdir()

    # a shard missing: exit 3 naming it, no report
    (tmp_path / "pvc" / "reports" / "report.json").unlink()
    missing = tmp_path / "pvc" / "shard-2-of-4"
    missing.rename(tmp_path / "aside")
    done = subprocess.run(merge, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    assert "missing: shard-2-of-4" in done.stderr
    assert not (reports / "report.json").exists()

    # a shard of another input set (another seed) in its place: exit 3 naming it
    other = project(tmp_path / "other", seed=8)
    (ran,) = run_pods([pod_command(shards, mounts, {"JOB_COMPLETION_INDEX": "2"})], other)
    assert ran.returncode == 0, ran.stderr
    done = subprocess.run(merge, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    assert "shard-2-of-4 (another config; another input set" in done.stderr


def test_shard_run_usage_errors_exit_2(tmp_path: Path) -> None:
    root = project(tmp_path / "app")
    out = tmp_path / "shards"
    done = run_cli(
        "parity", "shard", "run", "--index", "4", "--of", "4", "--out", str(out), cwd=root
    )
    assert done.returncode == 2
    assert "shard index 4 is not in 0..3" in done.stderr
    # 12 samples in batches of 3 make 4 batches: not 5 shards
    done = run_cli(
        "parity", "shard", "run", "--index", "0", "--of", "5", "--out", str(out), cwd=root
    )
    assert done.returncode == 2
    assert "at most 4 shards, not 5" in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_an_environment_failing_in_a_shard_is_exit_3_and_the_merge_reports_it(
    tmp_path: Path,
) -> None:
    root = project(tmp_path / "app")
    (root / "src" / "adapter.py").write_text(
        textwrap.dedent(SCALED_MODEL)
        + "\n\nimport os\nif os.environ.get('SCALE') != '1.001':\n    raise SystemExit(7)\n"
    )
    out = tmp_path / "shards"
    scratch = tmp_path / "tmp"  # the pod's temporary folder: where failed work is kept
    scratch.mkdir()
    for k in range(2):
        done = run_cli(
            "parity",
            "shard",
            "run",
            "--index",
            str(k),
            "--of",
            "2",
            "--out",
            str(out),
            "-q",
            cwd=root,
            env={"TMPDIR": str(scratch)},
        )
        assert done.returncode == 3, done.stderr
        record = json.loads((out / f"shard-{k}-of-2" / "shard.json").read_text())
        assert record["environments"]["train"]["error"]
        infer = record["environments"]["infer"]  # done, or stopped when train failed
        assert infer["error"] is None or (
            infer["cancelled"] and infer["error"].endswith("environment 'train' failed first")
        ), infer
    # each failed shard keeps its work folder (the workers' logs) for the evidence
    kept = sorted(p.name.split("-")[1] for p in scratch.glob("parity-shard*-*"))
    assert kept == ["shard0", "shard1"], kept
    assert all((p / "train" / "worker.log").is_file() for p in scratch.glob("parity-shard*"))
    done = run_cli("parity", "shard", "merge", str(out), "--json", "-", cwd=root)
    assert done.returncode == 3, done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == "error"
    assert report["execution"]["executor"] == "files"  # not in pods
    assert any("environment 'train'" in e and "shard 1" in e for e in report["errors"])
