"""Input sets from a folder of real samples, and the DVC example that tracks them.

Fast tests run local checks on folders of `.npz` samples; the slow ones build the real
git + DVC repository of `examples/dvc` with its setup.sh and drive it with `dvc`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import BIN, ROOT, assert_valid_report, run_cli

from parity.inputs.seeded import InputSpec, describe_label, digest, generate, sample
from parity.render.metrics import flat_metrics
from parity.render.metrics import main as metrics_main

ADAPTER = """\
import numpy as np

def predict(inputs):
    x = inputs["x"]
    return {"y": x * np.float32(2), "s": x.sum(axis=(1, 2))}
"""

FOLDER_CONFIG = """\
[model]
adapter = "adapter:predict"
paths = ["src"]

[inputs]
folder = "data/samples"
batch_size = 3
{extra}
[environments.train]
backend = "local"

[environments.infer]
backend = "local"

[run]
timeout = 120
"""


def seeded_spec() -> InputSpec:
    from parity.inputs.seeded import ArraySpec

    return InputSpec(seed=5, count=7, arrays=(ArraySpec("x", (3, 4), "float32"),), batch_size=3)


def write_samples(folder: Path, spec: InputSpec) -> None:
    """The seeded input set `spec`, written as one .npz file per sample."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(spec.count):
        np.savez(folder / f"{i:03d}.npz", **sample(spec, i))  # type: ignore[arg-type]


@pytest.fixture
def folder_project(write_project: Callable[..., Path], tmp_path: Path) -> Path:
    cfg: Path = write_project(ADAPTER, FOLDER_CONFIG.format(extra=""))
    write_samples(tmp_path / "data" / "samples", seeded_spec())
    return cfg


# Config errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "seed = 1\n",
            "inputs.seed: cannot be combined with inputs.folder (the folder's samples are "
            "the input set)",
        ),
        (
            "count = 4\n",
            "inputs.count: cannot be combined with inputs.folder (the folder's samples are "
            "the input set)",
        ),
        (
            "[inputs.arrays.x]\nshape = [3, 4]\n",
            "inputs.arrays: cannot be combined with inputs.folder (the folder's samples are "
            "the input set)",
        ),
    ],
)
def test_folder_excludes_a_seeded_spec(folder_project: Path, extra: str, message: str) -> None:
    folder_project.write_text(FOLDER_CONFIG.format(extra=extra))
    result = run_cli("parity", "check", "--config", str(folder_project))
    assert result.returncode == 2, result.stderr
    assert f"Error: {folder_project}: {message}" in result.stderr
    assert "Traceback" not in result.stderr


def _check_error(cfg: Path) -> str:
    result = run_cli("parity", "check", "--config", str(cfg), "-q")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_a_missing_or_empty_folder_is_a_config_error(folder_project: Path) -> None:
    samples = folder_project.parent / "data" / "samples"
    shutil.rmtree(samples)
    assert (
        f"Error: {folder_project}: inputs.folder: folder not found: data/samples"
        in _check_error(folder_project)
    )
    samples.mkdir()
    (samples / ".hidden").write_text("skipped")
    assert (
        f"Error: {folder_project}: inputs.folder: no .npz samples in data/samples"
        in _check_error(folder_project)
    )
    (samples / "notes.txt").write_text("not a sample")
    assert (
        f"Error: {folder_project}: inputs.folder: data/samples/notes.txt is not a .npz file "
        "(the folder holds one .npz file per sample)" in _check_error(folder_project)
    )


def test_a_sample_unlike_the_first_is_a_config_error(folder_project: Path) -> None:
    samples = folder_project.parent / "data" / "samples"
    np.savez(samples / "003.npz", x=np.zeros((4, 4), np.float32))
    assert (
        f"Error: {folder_project}: inputs.folder: data/samples/003.npz: array 'x' is "
        "float32 [4, 4], the first sample's float32 [3, 4] (every sample must match)"
    ) in _check_error(folder_project)
    np.savez(samples / "003.npz", x=np.zeros((3, 4), np.float32), extra=np.zeros(2))
    assert (
        "data/samples/003.npz: holds arrays ['extra', 'x'], the first sample ['x']"
        in _check_error(folder_project)
    )


def test_a_pickled_sample_is_refused_unloaded(folder_project: Path) -> None:
    samples = folder_project.parent / "data" / "samples"
    np.savez(samples / "003.npz", x=np.array([{"a": 1}], dtype=object))
    stderr = _check_error(folder_project)
    assert "inputs.folder: data/samples/003.npz: not a readable .npz file" in stderr
    assert "allow_pickle=False" in stderr


# A local check on a folder ---------------------------------------------------------------


def test_a_folder_check_passes_and_its_digest_is_the_seeded_sets(
    folder_project: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    md = tmp_path / "report.md"
    result = run_cli(
        "parity", "check", "--config", str(folder_project), "--json", str(out),
        "--markdown", str(md),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    # Samples written from a seeded spec load back to that spec's arrays, digest and all.
    assert report["inputs"] == {
        "folder": "data/samples",
        "count": 7,
        "batch_size": 3,
        "digest": digest(generate(seeded_spec())),
    }
    assert [o["name"] for o in report["outputs"]] == ["s", "y"]
    assert all(o["passed"] and o["total"] for o in report["outputs"])
    assert "inputs: 7 samples from data/samples, sha256:" in result.stdout
    assert "7 inputs from `data/samples`" in md.read_text()


def test_a_bundle_records_the_folder_and_still_verifies(
    folder_project: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "golden"
    result = run_cli(
        "parity", "record", "--config", str(folder_project), "--env", "train",
        "--out", str(bundle),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    recorded = json.loads((bundle / "bundle.json").read_text())["inputs"]
    assert recorded["folder"] == "data/samples" and recorded["count"] == 7
    out = tmp_path / "report.json"
    result = run_cli(
        "parity", "check", "--config", str(folder_project), "--against", str(bundle),
        "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    assert report["inputs"]["digest"] == recorded["digest"]
    # One sample changes: the bundle answers another input set, which is refused.
    np.savez(tmp_path / "data" / "samples" / "000.npz", x=np.ones((3, 4), np.float32))
    result = run_cli("parity", "check", "--config", str(folder_project), "--against", str(bundle))
    assert result.returncode == 2, result.stderr
    assert "was recorded on a different input set" in result.stderr
    assert "(7 samples from data/samples)" in result.stderr


def test_the_report_schema_wants_one_kind_of_input_set() -> None:
    from jsonschema import Draft202012Validator

    from parity.report import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    inputs = {**schema["properties"]["inputs"], "$defs": schema["$defs"]}
    valid = Draft202012Validator(inputs).is_valid
    d = "sha256:" + "0" * 64
    assert valid({"folder": "s", "count": 2, "digest": d})
    assert valid({"seed": 1, "count": 2, "arrays": {}, "digest": d})
    assert not valid({"folder": "s", "seed": 1, "count": 2, "digest": d})
    assert not valid({"count": 2, "digest": d})
    assert not valid({"folder": "s", "count": 2, "digest": d, "dvc": {"md5": "abc"}})


def test_the_input_label_names_the_folder_and_its_dvc_state() -> None:
    dvc = {"md5": "244a41350f09d7ced718ebf982618f16.dir", "path": "s", "modified": True}
    assert describe_label({"seed": 3, "count": 2}) == "2 samples, seed 3"
    assert (
        describe_label({"folder": "s", "count": 2, "dvc": dvc})
        == "2 samples from s (DVC 244a41350f09…, modified since dvc add)"
    )


# Metrics for DVC -------------------------------------------------------------------------


def test_metrics_keep_the_numbers_dvc_can_show(tmp_path: Path) -> None:
    report: dict[str, Any] = {
        "verdict": "fail",
        "inputs": {"count": 8, "digest": "sha256:00"},
        "outputs": [
            {"name": "sr", "passed": False, "max_abs_diff": 0.5, "max_rel_diff": "inf",
             "mismatched": 3, "total": 10, "policy": {}},
        ],
        "version_diffs": [{"name": "numpy"}],
    }  # fmt: skip
    assert flat_metrics(report) == {
        "verdict": "fail",
        "passed": 0,
        "inputs": {"count": 8},
        "outputs": {
            "sr": {
                "passed": 0,
                "max_abs_diff": 0.5,
                "max_rel_diff": "inf",
                "mismatched": 3,
                "total": 10,
            }
        },
        "version_diffs": 1,
    }
    src, dst = tmp_path / "report.json", tmp_path / "metrics.json"
    src.write_text(json.dumps(report))
    assert metrics_main([str(src), str(dst)]) == 0
    assert json.loads(dst.read_text())["passed"] == 0
    src.write_text("[1, 2]")
    assert metrics_main([str(src), str(dst)]) == 2


# The DVC example, for real -----------------------------------------------------------------


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHON": str(BIN / "python"),
        "DVC": str(BIN / "dvc"),
        "DVC_NO_ANALYTICS": "1",
        # No global git identity is read or written: setup.sh sets one in the repository.
        "GIT_CONFIG_GLOBAL": os.devnull,
    }


def sh(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300, check=False
    )


def check(repo: Path, name: str = "report.json") -> tuple[dict[str, Any], str]:
    """Run `parity check` in the example repository: its JSON report, and its stderr."""
    result = sh(str(BIN / "parity"), "check", "--config", "parity.toml", "--json", name, cwd=repo)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads((repo / name).read_text())
    assert_valid_report(report)
    return report, result.stderr


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "example"
    result = sh("bash", str(ROOT / "examples" / "dvc" / "setup.sh"), str(repo), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return repo


@pytest.mark.slow
def test_dvc_repro_runs_the_check_as_a_stage_with_its_metric(dvc_repo: Path) -> None:
    assert sh("git", "status", "--porcelain", cwd=dvc_repo).stdout == ""  # all committed
    assert "user.email=parity-example@localhost" in sh("git", "config", "--local", "-l",
                                                       cwd=dvc_repo).stdout  # fmt: skip
    result = sh("dvc", "repro", cwd=dvc_repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running stage 'parity'" in result.stdout
    report = json.loads((dvc_repo / "report.json").read_text())
    assert_valid_report(report)
    md5 = (dvc_repo / "samples.dvc").read_text().split("md5: ")[1].split()[0]
    assert report["inputs"]["dvc"] == {
        "md5": md5,
        "path": "samples",
        "file": "samples.dvc",
        "modified": False,
    }
    shown = sh("dvc", "metrics", "show", "--json", cwd=dvc_repo)
    assert shown.returncode == 0, shown.stderr
    metrics = json.loads(shown.stdout)
    data = next(iter(metrics.values()))["data"]["metrics.json"]["data"]
    assert data["passed"] == 1
    assert data["outputs"]["sr"]["max_abs_diff"] == 0.0
    table = sh("dvc", "metrics", "show", cwd=dvc_repo).stdout
    assert "outputs.sr.max_abs_diff" in table
    # Nothing changed: the stage is up to date and is not run again.
    assert "Stage 'parity' didn't change, skipping" in sh("dvc", "repro", cwd=dvc_repo).stdout

    # One sample changes: DVC sees the stage's dependency change, parity sees the folder
    # no longer matches what `dvc add` recorded.
    first = dvc_repo / "samples" / "0003.npz"
    with np.load(first) as z:
        lr = z["lr"].copy()
    lr[0, 0] += np.float32(0.25)
    np.savez(first, lr=lr)
    status = sh("dvc", "status", cwd=dvc_repo).stdout
    assert "parity:\n\tchanged deps:\n\t\tmodified:           samples" in status
    changed, progress = check(dvc_repo, "changed.json")
    assert f"warning: samples has changed since `dvc add` recorded {md5} in samples.dvc" in progress
    assert changed["inputs"]["dvc"]["modified"] is True
    assert changed["inputs"]["dvc"]["md5"] == md5
    assert changed["inputs"]["digest"] != report["inputs"]["digest"]
    # Recorded with `dvc add`: a new hash, no longer modified.
    assert sh("dvc", "add", "-q", "samples", cwd=dvc_repo).returncode == 0
    added, progress = check(dvc_repo, "added.json")
    assert "warning" not in progress
    assert added["inputs"]["dvc"]["modified"] is False
    assert added["inputs"]["dvc"]["md5"] not in (md5, "")
    assert added["inputs"]["digest"] == changed["inputs"]["digest"]


@pytest.mark.slow
def test_dvc_pull_restores_the_samples_and_the_same_input_digest(dvc_repo: Path) -> None:
    before, _ = check(dvc_repo)
    # Without its cache DVC cannot compare the folder: whether it changed is not claimed.
    shutil.rmtree(dvc_repo / ".dvc" / "cache")
    uncached, _ = check(dvc_repo)
    assert uncached["inputs"]["dvc"] == {"md5": before["inputs"]["dvc"]["md5"],
                                         "path": "samples", "file": "samples.dvc"}  # fmt: skip
    shutil.rmtree(dvc_repo / "samples")  # pull must fetch it from the local remote
    result = sh("dvc", "pull", cwd=dvc_repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((dvc_repo / "samples").glob("*.npz"))) == 8
    after, _ = check(dvc_repo)
    assert after["inputs"]["digest"] == before["inputs"]["digest"]
    assert after["inputs"]["dvc"] == before["inputs"]["dvc"]
    assert after["inputs"]["dvc"]["modified"] is False


def test_the_example_stage_depends_on_samples_model_and_config(tmp_path: Path) -> None:
    import yaml

    from parity.config import load_config
    from parity.inputs.samples import SampleFolder

    example = ROOT / "examples" / "dvc"
    stage = yaml.safe_load((example / "dvc.yaml").read_text())["stages"]["parity"]
    assert "parity check --config parity.toml --json report.json" in stage["cmd"]
    assert set(stage["deps"]) == {"parity.toml", "model", "samples"}
    assert stage["metrics"] == [{"metrics.json": {"cache": False}}]
    shutil.copytree(example, tmp_path / "ex")
    write_samples(tmp_path / "ex" / "samples", seeded_spec())
    config = load_config(tmp_path / "ex" / "parity.toml")
    assert isinstance(config.inputs, SampleFolder) and config.inputs.count == 7
