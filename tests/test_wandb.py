"""Checks logged to Weights & Biases in its offline mode (WANDB_MODE=offline, everything under
a temporary WANDB_DIR): the run is read back from the file W&B writes for `wandb sync`
(`run-<id>.wandb`: W&B's header, then records in LevelDB's log format, each a protobuf
`Record` that wandb's own `wandb_internal_pb2` parses)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LOCAL_CONFIG, checked, run_cli

from parity.integrations.wandb import WandbTarget, log_check

pytest.importorskip("wandb")

SECRET = "wb-s3cr3t-value-0042"
ADAPTER = """\
import os
import numpy as np

def predict(inputs):
    y = inputs["x"] * np.float32(2)
    if os.environ.get("DRIFT"):
        y = y + np.float32(1e-3)
    return {"y": y}
"""


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """W&B offline, every folder it writes to under tmp_path; the variables set."""
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb-dir"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_SILENT": "true",
    }
    for key, value in env.items():
        if key.endswith("_DIR"):
            Path(value).mkdir()
        monkeypatch.setenv(key, value)
    for key in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    yield env
    import wandb

    wandb.teardown()  # W&B reads its variables once per process: the next test sets its own


def records(run_file: Path) -> Iterator[Any]:
    """Every record of an offline run file, in order (LevelDB log: 32 KiB blocks, each
    chunk a 7-byte header, crc32c, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, pending, block = 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zeros to the block's end
            pos += (block - pos % block) % block
            continue
        if kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        else:
            record = pb.Record()
            record.ParseFromString(pending + payload if kind == 4 else payload)
            pending = b""
            yield record


def read_run(wandb_dir: Path) -> dict[str, Any]:
    """The one offline run under `wandb_dir`: its run record, config, summary, artifacts,
    exit code."""
    import wandb

    # W&B's service writes the run file behind the process; it is whole once the service
    # has stopped (at a process's exit, or here).
    wandb.teardown()
    found = list(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(found) == 1, found
    run: dict[str, Any] = {"summary": {}, "artifacts": [], "exit": None}
    kinds = []
    for record in records(found[0]):
        kind = record.WhichOneof("record_type")
        kinds.append(kind)
        if kind == "run":
            r = record.run
            run.update(
                id=r.run_id,
                project=r.project,
                entity=r.entity,
                name=r.display_name,
                job_type=r.job_type,
                tags=list(r.tags),
                config={u.key: json.loads(u.value_json) for u in r.config.update},
            )
        elif kind == "summary":
            for u in record.summary.update:
                if u.key:
                    run["summary"][u.key] = json.loads(u.value_json)
        elif kind == "artifact":
            a = record.artifact
            run["artifacts"].append(
                {
                    "name": a.name,
                    "type": a.type,
                    "files": sorted(c.path for c in a.manifest.contents),
                }
            )
        elif kind == "exit":
            run["exit"] = record.exit.exit_code
    assert "id" in run, (kinds, found[0].stat().st_size)
    return run


def test_a_failing_check_is_logged_with_its_metrics_verdict_and_reports(
    offline: dict[str, str], tmp_path: Path
) -> None:
    report = checked(0.01)
    (tmp_path / "report.json").write_text(report.to_json())
    logged = log_check(report, WandbTarget(project="espcn-parity"), [tmp_path / "report.json"])
    assert logged.url is None and logged.folder.is_dir()

    run = read_run(Path(offline["WANDB_DIR"]))
    assert run["id"] == logged.id and logged.path.endswith(f"espcn-parity/{logged.id}")
    assert run["project"] == "espcn-parity"
    assert (run["name"], run["job_type"], run["tags"]) == (
        "parity infer vs train",
        "parity-check",
        ["fail"],
    )
    assert run["config"]["input_digest"] == "sha256:" + "ab" * 32
    assert run["config"]["policy.sr"] == "allclose(atol=0.001, rtol=0)"
    summary = run["summary"]
    assert summary["verdict"] == "fail" and summary["passed"] == 0.0
    assert summary["sr.passed"] == 0.0 and summary["sr.mismatched"] == 200
    assert summary["sr.max_abs_diff"] == pytest.approx(0.01, rel=1e-5)
    assert summary["reasons"].startswith("output 'sr': 200 of 200 elements")
    assert run["artifacts"] == [
        {"name": "parity-reports", "type": "parity-report", "files": ["report.json"]}
    ]
    assert run["exit"] == 0  # a check that ran is a finished run, whatever its verdict


def test_the_project_and_entity_come_from_wandbs_variables(
    offline: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert WandbTarget().resolved() == WandbTarget("parity", None)
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_ENTITY", "team-x")
    assert WandbTarget().resolved() == WandbTarget("from-env", "team-x")
    assert WandbTarget("flag", "me").resolved() == WandbTarget("flag", "me")
    log_check(checked(0.0), WandbTarget())
    run = read_run(Path(offline["WANDB_DIR"]))
    assert (run["project"], run["entity"]) == ("from-env", "team-x")
    assert run["summary"]["verdict"] == "pass" and run["summary"]["sr.max_abs_diff"] == 0.0


def every_byte(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_parity_check_wandb_logs_the_check_and_never_a_secret(
    offline: dict[str, str], write_project: Callable[..., Path], tmp_path: Path
) -> None:
    # The config's folder is named after a secret's value: the report's `config`, the
    # command line W&B would record, and the reports all hold it until redacted.
    cfg = write_project(ADAPTER, LOCAL_CONFIG.format(timeout=120))
    hidden = tmp_path / SECRET
    hidden.mkdir()
    (hidden / "parity.toml").write_text(
        cfg.read_text().replace('paths = ["src"]', f'paths = ["{tmp_path / "src"}"]')
    )
    env = {**offline, "PARITY_DEPLOY_TOKEN": SECRET}
    html = tmp_path / "r.html"
    args = ["check", "--config", str(hidden / "parity.toml"), "--html", str(html)]

    passed = run_cli("parity", *args, "--wandb", env=env)
    assert passed.returncode == 0, passed.stderr
    run = read_run(Path(offline["WANDB_DIR"]))
    assert f"logged to W&B offline: run {run['id']} in " in passed.stderr
    assert run["project"] == "parity" and run["summary"]["verdict"] == "pass"
    assert run["summary"]["y.max_abs_diff"] == 0.0 and run["summary"]["y.passed"] == 1.0
    assert run["config"]["config"] == str(tmp_path / "[redacted]" / "parity.toml")
    assert run["artifacts"][0]["files"] == ["r.html", "report.json"]
    for folder in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        assert SECRET.encode() not in every_byte(Path(offline[folder])), folder

    for old in Path(offline["WANDB_DIR"]).glob("wandb/*"):
        old.rename(tmp_path / old.name)  # one run under WANDB_DIR at a time
    (hidden / "parity.toml").write_text(
        (hidden / "parity.toml").read_text() + '\n[environments.infer.env]\nDRIFT = "1"\n'
    )
    failed = run_cli("parity", *args, "--wandb-project", "drifts", env=env)
    assert failed.returncode == 1, failed.stderr
    run = read_run(Path(offline["WANDB_DIR"]))
    assert run["project"] == "drifts" and run["tags"] == ["fail"]
    assert run["summary"]["verdict"] == "fail" and run["summary"]["y.mismatched"] == 144
    assert run["summary"]["reasons"].startswith("output 'y': 144 of 144 elements")
    assert SECRET.encode() not in every_byte(Path(offline["WANDB_DIR"]))


def test_wandb_missing_is_a_usage_error(write_project: Callable[..., Path], tmp_path: Path) -> None:
    cfg = write_project(ADAPTER, LOCAL_CONFIG.format(timeout=120))
    shadow = tmp_path / "no-wandb"
    shadow.mkdir()
    (shadow / "wandb.py").write_text("raise ImportError(\"No module named 'wandb'\")\n")
    import os

    path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH")) if p)
    result = run_cli("parity", "check", "--config", str(cfg), "--wandb", env={"PYTHONPATH": path})
    assert result.returncode == 2, result.stderr
    assert "--wandb needs wandb: pip install 'envlock-parity[wandb]'" in result.stderr
