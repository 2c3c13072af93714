"""`parity fleet`: many configs checked as one job, each in a `parity check` of its own.

The fast tests run fleets of small configs whose environments are this interpreter
(`backend = "local"`): a pass, a drift, a model that raises, a config that does not exist.
The slow one runs the reference model, the numpy-drift example and a broken copy of the
reference config (16 inputs each, environments from `shared_cache`) on the real two-node
Ray cluster of the `ray_cluster` fixture (a local pool runs the same code path as the
fast tests' fleets).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from conftest import BIN, ROOT, assert_valid_report, run_cli
from jsonschema import Draft202012Validator
from raycluster import free_port
from referencing import Registry, Resource

from parity.fleet import (
    SCHEMA_PATH,
    FleetError,
    _entry,
    _Planned,
    check_in_process,
    expand_configs,
    run_fleet,
)
from parity.report import SCHEMA_PATH as REPORT_SCHEMA_PATH

XSD = ROOT / "tests" / "data" / "junit" / "junit-10.xsd"

ADAPTER = """\
import os
import time
from pathlib import Path

import numpy as np


def predict(batch):
    scale = 1 + float(os.environ.get("DRIFT", "0"))
    return {"y": batch["x"].astype(np.float64) * scale}


def boom(batch):
    raise RuntimeError("the model cannot load its weights")


def hang(batch):
    Path(f"{os.environ['PID_FILE']}.{os.getpid()}").write_text(str(os.getpid()))
    time.sleep(600)
    return {"y": batch["x"]}
"""

CONFIG = """\
[model]
adapter = "adapter:{function}"
paths = ["{src}"]

[inputs]
seed = 7
count = 12
batch_size = 6

[inputs.arrays.x]
shape = [3, 4]
dtype = "float32"

[environments.train]
backend = "local"

[environments.infer]
backend = "local"
{infer}

[run]
timeout = {timeout}
"""


def _local_project(root: Path) -> dict[str, Path]:
    """Configs of a model run in this interpreter: `ok` passes, `drift` scales its outputs
    by 1.001 in infer, `broken`'s model raises, `missing` does not exist, `nolock` names a
    lock that does not exist."""
    src = root / "src"
    src.mkdir(parents=True)
    (src / "adapter.py").write_text(ADAPTER)
    configs = {}
    for name, function, infer in (
        ("ok", "predict", ""),
        ("drift", "predict", 'env = { DRIFT = "0.001" }'),
        ("broken", "boom", ""),
    ):
        (root / name).mkdir()
        configs[name] = root / name / "parity.toml"
        configs[name].write_text(
            CONFIG.format(function=function, src=src, infer=infer, timeout=120)
        )
    configs["missing"] = root / "missing" / "parity.toml"
    (root / "nolock").mkdir()
    configs["nolock"] = root / "nolock" / "parity.toml"
    configs["nolock"].write_text(
        configs["ok"]
        .read_text()
        .replace(
            '[environments.infer]\nbackend = "local"',
            '[environments.infer]\nbackend = "venv"\nlock = "locks/pylock.toml"',
        )
    )
    return configs


def _validator() -> Draft202012Validator:
    """The fleet schema, with the check's report schema it embeds resolvable."""
    schemas = [json.loads(p.read_text()) for p in (SCHEMA_PATH, REPORT_SCHEMA_PATH)]
    registry: Registry[Any] = Registry().with_resources(
        [(s["$id"], Resource.from_contents(s)) for s in schemas]
    )
    return Draft202012Validator(schemas[0], registry=registry)


def assert_valid_fleet(report: dict[str, Any]) -> None:
    errors = sorted(_validator().iter_errors(report), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message[:200]}" for e in errors[:5])
    for row in report["configs"]:
        if "report" in row:
            assert_valid_report(row["report"])


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in report["configs"]}


# Fast: CLI usage ------------------------------------------------------------------------


def test_fleet_without_configs_is_a_usage_error() -> None:
    result = run_cli("parity", "fleet")
    assert result.returncode == 2
    assert "name at least one config" in result.stderr


def test_an_unknown_executor_is_a_usage_error() -> None:
    result = run_cli("parity", "fleet", "parity.toml", "--executor", "slurm")
    assert result.returncode == 2
    assert "'slurm' is not one of 'local', 'ray'" in result.stderr


def test_ray_without_an_address_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = run_cli("parity", "fleet", "parity.toml", "--executor", "ray", env=env)
    assert result.returncode == 2
    assert "--address HOST:PORT or RAY_ADDRESS" in result.stderr
    # and an address without Ray, or a pool size for Ray, are refused too
    result = run_cli("parity", "fleet", "parity.toml", "--address", "127.0.0.1:1")
    assert result.returncode == 2 and "add --executor ray" in result.stderr
    result = run_cli("parity", "fleet", "parity.toml", "--executor", "ray", "--jobs", "2")
    assert result.returncode == 2 and "--jobs sizes the local pool" in result.stderr


def test_an_unreachable_ray_address_exits_3_naming_it() -> None:
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the `ray` extra is not installed")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli("parity", "fleet", "parity.toml", "--executor", "ray", "--address", address)
    assert result.returncode == 3, result.stderr
    assert f"cannot reach the Ray cluster at {address}" in result.stderr


def test_ray_not_installed_exits_2_naming_the_extra(tmp_path: Path) -> None:
    # A Python where `import ray` fails, as it does without the extra; something answers
    # at the address, so that it is the import that fails.
    (tmp_path / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    with socket.create_server(("127.0.0.1", 0)) as server:
        result = run_cli(
            "parity",
            "fleet",
            "parity.toml",
            "--executor",
            "ray",
            "--address",
            f"127.0.0.1:{server.getsockname()[1]}",
            env={"PYTHONPATH": path},
        )
    assert result.returncode == 2, result.stderr
    assert "needs the `ray` extra" in result.stderr


def test_configs_from_folders_and_fleet_files(tmp_path: Path) -> None:
    configs = _local_project(tmp_path / "models")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[fleet]\nconfigs = ["models/drift/parity.toml", "models/ok/parity.toml"]\n')
    # a fleet file's configs, then a folder's (sorted), each config once
    found = expand_configs([fleet, tmp_path / "models"])
    assert [p.resolve() for p in found] == [
        configs["drift"].resolve(),
        configs["ok"].resolve(),
        configs["broken"].resolve(),
        configs["nolock"].resolve(),
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FleetError, match=r"no parity\.toml under it$") as e:
        expand_configs([tmp_path / "empty"])
    assert e.value.exit_code == 2
    fleet.write_text("[fleet]\nconfigs = []\n")
    with pytest.raises(FleetError, match=r"fleet\.configs must be a non-empty list"):
        expand_configs([fleet])


# Fast: a fleet of configs run in this interpreter --------------------------------------


def test_a_local_fleet_gives_each_config_its_verdict_and_one_report_of_all(
    tmp_path: Path,
) -> None:
    configs = _local_project(tmp_path / "models")
    out = tmp_path / "out"
    result = run_cli(
        "parity",
        "fleet",
        *(str(configs[n]) for n in ("ok", "drift", "broken", "missing", "nolock")),
        "--jobs",
        "2",
        "--json",
        str(out / "fleet.json"),
        "--junit",
        str(out / "fleet.xml"),
        "--markdown",
        str(out / "fleet.md"),
        "--reports",
        str(out / "reports"),
        env={"COLUMNS": "300"},  # the table's rows on one line each, long paths and all
    )
    # a config could not be checked (three, here): exit 3, and every row is there
    assert result.returncode == 3, result.stderr
    report = json.loads((out / "fleet.json").read_text())
    assert_valid_fleet(report)
    rows = _rows(report)
    assert {n: r["verdict"] for n, r in rows.items()} == {
        "ok": "pass",
        "drift": "fail",
        "broken": "error",
        "missing": "error",
        "nolock": "error",
    }
    assert report["verdict"] == "error"
    assert report["counts"] == {"pass": 1, "fail": 1, "error": 3}
    assert [r["config"] for r in report["configs"]] == [
        str(configs[n]) for n in ("ok", "drift", "broken", "missing", "nolock")
    ]
    assert rows["ok"]["exit_code"] == 0 and rows["ok"]["max_abs_diff"] == 0
    assert rows["drift"]["exit_code"] == 1 and 0 < rows["drift"]["max_abs_diff"] < 0.01
    assert rows["drift"]["reason"].startswith("output 'y': 144 of 144 elements beyond")
    # the broken ones say why: the model's error, the config that is not there
    assert rows["broken"]["exit_code"] == 3
    assert "RuntimeError: the model cannot load its weights" in rows["broken"]["reason"]
    assert rows["missing"]["exit_code"] == 2
    assert rows["missing"]["reason"] == f"{configs['missing']}: config file not found"
    assert "report" not in rows["missing"]
    assert rows["nolock"]["exit_code"] == 2
    assert rows["nolock"]["reason"].endswith(
        "environments.infer.lock: file not found: locks/pylock.toml"
    )
    # each check's own report is embedded whole, and kept with --reports
    assert rows["drift"]["report"]["verdict"] == "fail"
    kept = json.loads(Path(rows["drift"]["report_path"]).read_text())
    assert kept == rows["drift"]["report"]
    assert all(r["where"] == "local" for r in rows.values())

    xsd = xmlschema.XMLSchema(XSD)
    xml = (out / "fleet.xml").read_text()
    xsd.validate(xml)
    suites = ET.fromstring(xml).findall("testsuite")
    assert len(suites) == 1
    assert (suites[0].get("tests"), suites[0].get("failures"), suites[0].get("errors")) == (
        "5",
        "1",
        "3",
    )
    cases = {c.get("name"): c for c in suites[0].iter("testcase")}
    assert cases[str(configs["ok"])].find("failure") is None
    assert cases[str(configs["ok"])].find("error") is None
    assert cases[str(configs["drift"])].find("failure") is not None
    error = cases[str(configs["broken"])].find("error")
    assert error is not None and "cannot load its weights" in error.get("message", "")

    markdown = (out / "fleet.md").read_text()
    assert markdown.startswith("## Parity fleet: ERROR")
    for name, mark in (("ok", "PASS"), ("drift", "**FAIL**"), ("broken", "**ERROR**")):
        assert re.search(
            rf"^\| `{re.escape(str(configs[name]))}` \| {name} \| {re.escape(mark)} ",
            markdown,
            re.M,
        ), markdown
    assert "config file not found" in markdown

    # the summary table on stdout, progress as each finished on stderr
    assert re.search(
        r"^parity fleet: ERROR\s+\(5 configs: 1 passed, 1 failed, 3 could", result.stdout, re.M
    )
    for name, word in (("ok", "PASS"), ("drift", "FAIL"), ("broken", "ERROR")):
        assert re.search(
            rf"^{re.escape(str(configs[name]))}\s+{name}\s+{word}\s", result.stdout, re.M
        ), result.stdout
    assert re.findall(r"^parity: \[(\d)/5\] ", result.stderr, re.M) == ["1", "2", "3", "4", "5"]


def test_the_exit_code_is_1_when_a_config_fails_and_0_when_all_pass(tmp_path: Path) -> None:
    configs = _local_project(tmp_path)
    failing = run_fleet([configs["ok"], configs["drift"]], jobs=2)
    assert (failing.verdict, failing.exit_code) == ("fail", 1)
    passing = run_fleet([configs["ok"]], jobs=1)
    assert (passing.verdict, passing.exit_code) == ("pass", 0)
    assert passing.entries[0].report is not None
    assert passing.entries[0].report["outputs"][0]["name"] == "y"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "not valid JSON"),
        ('{"verdict": "maybe", "reasons": [], "errors": []}', "has verdict 'maybe'"),
        ('{"verdict": "pass", "reasons": [1], "errors": []}', "reasons[0] must be a string"),
        ('{"verdict": "pass", "reasons": []}', "errors is missing"),
        (
            '{"verdict": "pass", "reasons": [], "errors": [], "x": ' + "[" * 100 + "]" * 100 + "}",
            "nested more than 64 levels deep",
        ),
    ],
)
def test_a_report_that_is_not_what_parity_writes_is_an_error_row(text: str, why: str) -> None:
    # What a Ray task returns is read as any file from elsewhere: checked before it is used.
    planned = _Planned(index=0, config="a/parity.toml", path="/a/parity.toml", name="a", timeout=1)
    result = {"exit_code": 0, "timed_out": False, "report": text, "stderr": "", "seconds": 1.0}
    entry = _entry(planned, result, "local")
    assert (entry.verdict, entry.exit_code, entry.report) == ("error", 3, None)
    assert entry.reason.startswith("a/parity.toml: its JSON report")
    assert why in entry.reason, entry.reason


def test_a_check_that_outlives_its_time_is_killed_with_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter.py").write_text(ADAPTER)
    config = tmp_path / "parity.toml"
    config.write_text(
        CONFIG.format(function="hang", src=src, infer="", timeout=300).replace(
            "[run]\n", '[run]\npass_env = ["PID_FILE"]\n'
        )
    )
    monkeypatch.setenv("PID_FILE", str(tmp_path / "worker"))  # the check passes it on
    start = time.monotonic()
    result = check_in_process(str(config), 8.0, None)
    assert result["timed_out"] is True
    assert time.monotonic() - start < 8 + 10  # SIGTERM, then SIGKILL after the grace
    assert result["report"] is None
    workers = [int(p.read_text()) for p in tmp_path.glob("worker.*")]
    assert workers, "the model had not started within 8 s: " + result["stderr"]
    deadline = time.monotonic() + 5
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, workers)), "a hanging worker outlived its fleet check"


def test_ctrl_c_stops_the_fleet_and_every_check_it_started(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter.py").write_text(ADAPTER)
    configs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        configs.append(tmp_path / name / "parity.toml")
        configs[-1].write_text(
            CONFIG.format(function="hang", src=src, infer="", timeout=300).replace(
                "[run]\n", '[run]\npass_env = ["PID_FILE"]\n'
            )
        )
    env = {**os.environ, "PID_FILE": str(tmp_path / "worker")}
    fleet = subprocess.Popen(
        [str(BIN / "parity"), "fleet", *map(str, configs), "--jobs", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("worker.*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # both workers of the first config are in the model
        workers = [int(p.read_text()) for p in tmp_path.glob("worker.*")]
        assert len(workers) == 2, "the first check's model did not start within 60 s"
        fleet.send_signal(signal.SIGINT)
        _, stderr = fleet.communicate(timeout=30)
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait()
    assert fleet.returncode == 130, stderr
    assert "interrupted" in stderr
    deadline = time.monotonic() + 5
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, workers)), "a worker outlived the interrupted fleet"
    time.sleep(1)  # the second config, queued behind the first, never started
    assert len(list(tmp_path.glob("worker.*"))) == 2
    assert _processes_mentioning(str(tmp_path)) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


# Slow: the reference model, the numpy-drift example and a broken config ----------------


def _real_fleet(root: Path) -> dict[str, Path]:
    """Copies of the reference config (passes), examples/numpy-drift (fails) and the
    reference config with an adapter that does not exist (its environments fail), with
    16 inputs each and every path absolute."""
    root.mkdir(parents=True, exist_ok=True)
    sources = {
        "reference": (ROOT / "parity.toml", "model.adapter:predict"),
        "numpy-drift": (ROOT / "examples" / "numpy-drift" / "parity.toml", "model.adapter:predict"),
        "broken": (ROOT / "parity.toml", "model.adapter:no_such_adapter"),
    }
    configs = {}
    for name, (source, adapter) in sources.items():
        text = source.read_text()
        text = re.sub(r"^count = \d+", "count = 16", text, flags=re.M)
        text = re.sub(r'^adapter = "[^"]*"', f'adapter = "{adapter}"', text, flags=re.M)
        text = re.sub(r'^paths = \["[^"]*"\]', f'paths = ["{ROOT}"]', text, flags=re.M)
        folder = source.parent
        text = re.sub(
            r'^lock = "([^"]*)"',
            lambda m, folder=folder: f'lock = "{(folder / m.group(1)).resolve()}"',
            text,
            flags=re.M,
        )
        (root / name).mkdir()
        configs[name] = root / name / "parity.toml"
        configs[name].write_text(text)
    return configs


def _assert_three_verdicts(report: dict[str, Any], configs: dict[str, Path]) -> None:
    assert_valid_fleet(report)
    rows = _rows(report)
    assert {n: r["verdict"] for n, r in rows.items()} == {
        "reference": "pass",
        "numpy-drift": "fail",
        "broken": "error",
    }
    assert rows["reference"]["max_abs_diff"] == 0
    assert rows["numpy-drift"]["reason"].startswith("output 'sr':")
    assert rows["numpy-drift"]["report"]["version_diffs"][0]["name"] == "numpy"
    assert rows["broken"]["exit_code"] == 3
    assert "no_such_adapter" in rows["broken"]["reason"], rows["broken"]["reason"]


@pytest.mark.slow
def test_a_fleet_of_the_reference_model_numpy_drift_and_a_broken_config_on_ray(
    ray_cluster: Any, shared_cache: Path, tmp_path: Path
) -> None:
    configs = _real_fleet(tmp_path / "fleet")
    out = tmp_path / "fleet.json"
    junit = tmp_path / "fleet.xml"
    result = run_cli(
        "parity",
        "fleet",
        *(str(c) for c in configs.values()),
        "--executor",
        "ray",
        "--cache-dir",
        str(shared_cache),
        "--json",
        str(out),
        "--junit",
        str(junit),
        env=ray_cluster.driver_env(),  # RAY_ADDRESS: the cluster's
    )
    assert result.returncode == 3, result.stderr
    report = json.loads(out.read_text())
    _assert_three_verdicts(report, configs)
    xmlschema.XMLSchema(XSD).validate(junit.read_text())
    assert report["executor"] == "ray" and report["address"] == ray_cluster.address
    # each row names the node that ran it: one of the cluster's two
    for row in report["configs"]:
        assert re.fullmatch(r"ray node[12] \([0-9a-f]{8}\)", row["where"]), row["where"]
        assert row["where"].endswith(f"({row['node_id'][:8]})")
    assert "on the Ray cluster at" in result.stderr
    # nothing of the fleet is left: no check process, no Ray cluster of the driver's own
    assert _processes_mentioning(str(tmp_path)) == []
    own = [
        pid
        for pid in _processes_mentioning(str(ray_cluster.short))
        if "gcs_server" in _cmdline(pid)
    ]
    assert set(own) <= ray_cluster.pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _processes_mentioning(text: str) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and int(p.name) != os.getpid() and text in _cmdline(int(p.name))
    ]
