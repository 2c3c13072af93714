"""The serving examples, as their users run them: a real MLServer (1.7.1, the Open
Inference Protocol) and a real BentoML (1.4, its own HTTP API), each in a venv envlock
builds from the example's lock, serving the reference model on 127.0.0.1, checked against
the training venv: the reference lock passes, the numpy-drift lock fails naming numpy.
Then the failures a real server has, with the example's serving venvs (built once per
session in `shared_cache`): a wrong model (or API) name, a model slower than the request
timeout, a golden bundle recorded in training checked against the endpoint, and the
server killed in the middle of a replay."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w
from conftest import BIN, ROOT, assert_valid_report, run_cli

pytestmark = pytest.mark.slow
SERVERS = {
    # example -> what its server's processes carry in their command lines, and its package
    "mlserver": (str(ROOT / "examples" / "mlserver" / "models"), "mlserver", "1.7.1"),
    "bentoml": ("service:Espcn", "bentoml", "1.4.40"),
}


def run_example(
    example: str, tmp_path: Path, cache: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], dict]:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example / "check.py"),
         "--cache-dir", str(cache), "--out", str(tmp_path), *args,
         "--", "--json", str(report)],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    data = json.loads(report.read_text()) if report.exists() else {}
    if data:
        assert_valid_report(data)
    return done, data


def assert_no_server_left(example: str) -> None:
    """Nothing the example started still runs (the server, its workers)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    marker = SERVERS[example][0]
    assert not [line for line in ps.stdout.splitlines() if marker in line]


@pytest.mark.parametrize("example", SERVERS)
def test_the_served_reference_model_passes(
    example: str, tmp_path: Path, shared_cache: Path
) -> None:
    done, report = run_example(example, tmp_path, shared_cache)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["verdict"] == "pass"
    served = report["environments"]["served"]
    _, package, version = SERVERS[example]
    assert served["backend"] == "endpoint" and served["fingerprinted"] is True
    assert served["packages"][package] == version
    assert all(o["passed"] and o["mismatched"] == 0 for o in report["outputs"])
    assert "tensors travel as JSON" in done.stderr
    # what the server brings runs the server: reported, expected, never failing the check
    server = next(v for v in report["version_diffs"] if v["name"] == package)
    assert server["expected"] and "serving stack" in server["note"]
    assert not any(v["fails"] for v in report["version_diffs"])
    assert_no_server_left(example)


@pytest.mark.parametrize("example", SERVERS)
def test_a_server_built_from_the_numpy_drift_lock_fails_naming_numpy(
    example: str, tmp_path: Path, shared_cache: Path
) -> None:
    lock = ROOT / "examples" / example / "numpy-drift" / "pylock.toml"
    done, report = run_example(example, tmp_path, shared_cache, "--lock", str(lock))
    assert done.returncode == 1, done.stdout + done.stderr
    assert report["verdict"] == "fail"
    numpy = next(v for v in report["version_diffs"] if v["name"] == "numpy")
    assert numpy["versions"] == {"train": "2.4.6", "served": "1.26.4"} and numpy["fails"]
    said = "numpy differs: 2.4.6 (train), 1.26.4 (served)"
    assert any(r.startswith(said) for r in report["reasons"])
    assert not all(o["passed"] for o in report["outputs"])  # NEP 50: the numbers change too
    assert_no_server_left(example)


# -- one real MLServer for the session: failures a server has ------------------------------
#
# The server runs from the example's serving venv (built once into `shared_cache`, as the
# example builds it for the tests above) and serves a copy of the example's model
# repository with one more model, `slow` (tests/mlserver_slow.py: it answers after 60 s),
# so the example's own runtime has no test-only path.

sys.path.insert(0, str(ROOT / "examples"))
import serving  # noqa: E402  (examples/serving.py: build, record, start and stop servers)

MLSERVER_LOCK = ROOT / "examples" / "mlserver" / "locks" / "pylock.toml"
SLOW_MODEL = {
    "name": "slow",
    "implementation": "mlserver_slow.SlowRuntime",
    "inputs": [{"name": "lr", "datatype": "UINT8", "shape": [-1, 48, 48]}],
    "outputs": [{"name": "sr", "datatype": "UINT8", "shape": [-1, 96, 96]}],
}


@dataclass(frozen=True)
class Served:
    url: str
    python: Path  # the serving venv's interpreter
    fingerprint: Path  # recorded of that venv (`envlock fingerprint --out`)


def model_repository(folder: Path, access_log: bool = False) -> Path:
    """The example's model repository (settings.json, espcn) and the `slow` model, copied
    into `folder`; with `access_log`, the server logs each request (settings `debug`)."""
    models = folder / "models"
    shutil.copytree(
        ROOT / "examples" / "mlserver" / "models",
        models,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    settings = json.loads((models / "settings.json").read_text())
    (models / "settings.json").write_text(json.dumps({**settings, "debug": access_log}))
    (models / "slow").mkdir()
    (models / "slow" / "model-settings.json").write_text(json.dumps(SLOW_MODEL))
    shutil.copy(Path(__file__).parent / "mlserver_slow.py", models / "slow")
    return models


@contextlib.contextmanager
def mlserver(
    python: Path, folder: Path, access_log: bool = False
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """MLServer serving `model_repository(folder)` on 127.0.0.1 (free ports, one process,
    metrics off, as the example starts it) while the block runs: its URL and process. Its
    log is `folder / "server.log"`."""
    models = model_repository(folder, access_log)
    http, grpc = serving.free_port(), serving.free_port()
    env = {
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(grpc),
        "ESPCN_ROOT": str(ROOT),  # the copied runtime finds model/ here
    }
    url = f"http://127.0.0.1:{http}"
    command = [str(python.parent / "mlserver"), "start", str(models)]
    with serving.server(
        command, env, folder, folder / "server.log", f"{url}/v2/models/espcn/ready"
    ) as proc:
        yield url, proc


@pytest.fixture(scope="session")
def serving_venv(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Served:
    """The example's serving venv (in `shared_cache`, as the example builds it above) and
    its recorded fingerprint; no server yet."""
    python = serving.serving_python(MLSERVER_LOCK, shared_cache)
    fingerprint = tmp_path_factory.mktemp("serving-venv") / "served.fingerprint.json"
    serving.record_fingerprint(python, fingerprint)
    return Served("", python, fingerprint)


@pytest.fixture(scope="session")
def served(serving_venv: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One MLServer for the session's tests of it (those that kill a server start their own)."""
    with mlserver(serving_venv.python, tmp_path_factory.mktemp("mlserver")) as (url, _):
        yield Served(url, serving_venv.python, serving_venv.fingerprint)


def config(folder: Path, url: str, example: str = "mlserver", **served: object) -> Path:
    """examples/`example`/parity.toml with the server at `url`, `served` added to (or, as
    None, taken from) its endpoint's settings, written into `folder`; [inputs] count and
    batch_size as `served` names them (`count`, `batch_size`)."""
    here = ROOT / "examples" / example
    data = tomllib.loads((here / "parity.toml").read_text())
    data["model"]["paths"] = [str((here / p).resolve()) for p in data["model"]["paths"]]
    train = data["environments"]["train"]
    train["lock"] = str((here / train["lock"]).resolve())
    for key in ("count", "batch_size"):
        if key in served:
            data["inputs"][key] = served.pop(key)
    endpoint = data["environments"]["served"]
    endpoint["url"] = url
    for key, value in served.items():
        if value is None:
            endpoint.pop(key, None)
        else:
            endpoint[key] = value
    path = folder / "parity.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def parity_check(cfg: Path, *args: str, timeout: float = 600) -> tuple[int, str, dict, float]:
    """`parity check` as a user runs it: exit code, stdout + stderr, the JSON report, seconds."""
    report = cfg.parent / "report.json"
    report.unlink(missing_ok=True)
    started = time.monotonic()
    done = run_cli("parity", "check", "--config", str(cfg), "--json", str(report), *args,
                   env={"COLUMNS": "200"}, timeout=timeout)  # fmt: skip
    seconds = time.monotonic() - started
    data = json.loads(report.read_text()) if report.exists() else {}
    if data:
        assert_valid_report(data)
    return done.returncode, done.stdout + done.stderr, data, seconds


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` that still run (not gone, not a zombie waiting to be reaped)."""
    running = []
    for pid in pids:
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                running.append(pid)
    return running


def processes_naming(text: str) -> list[str]:
    """The command lines of running processes that contain `text`."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if text in line and "ps -eo" not in line]


def test_a_wrong_model_name_is_a_config_error_naming_what_mlserver_serves(
    served: Served, tmp_path: Path
) -> None:
    cfg = config(tmp_path, served.url, model="espcm", count=8, batch_size=4)
    code, text, _, _ = parity_check(cfg)
    assert code == 2, text
    said = (
        f"environments.served.model: the server at {served.url} has no model 'espcm' "
        "(it serves: espcn, slow)"
    )
    assert said in text, text


def test_a_slow_mlserver_model_hits_the_request_timeout(served: Served, tmp_path: Path) -> None:
    cfg = config(tmp_path, served.url, model="slow", request_timeout=2, count=8, batch_size=4)
    code, text, report, seconds = parity_check(cfg)
    assert code == 3, text
    said = (
        f"environment 'served': batch 0: the server at {served.url} took longer than "
        "request_timeout (2s) answering"
    )
    assert said in text, text
    assert report["verdict"] == "error"
    assert seconds < 60  # not the 60 s the model takes, nor a hang
    print(f"request timeout: exit {code} after {seconds:.1f}s")


def test_a_golden_bundle_recorded_in_training_checks_the_mlserver_endpoint(
    served: Served, tmp_path: Path
) -> None:
    recorded = {"fingerprint": str(served.fingerprint), "lock": str(MLSERVER_LOCK)}
    cfg = config(tmp_path, served.url, count=64, batch_size=16, **recorded)
    bundle = tmp_path / "golden"
    done = run_cli("parity", "record", "--config", str(cfg), "--env", "train", "--out", str(bundle))
    assert done.returncode == 0, done.stdout + done.stderr
    code, text, report, _ = parity_check(cfg, "--against", str(bundle))
    assert code == 0, text
    assert report["candidate"] == "served" and report["against"]
    assert all(o["passed"] and o["mismatched"] == 0 for o in report["outputs"])
    assert report["environments"]["served"]["versions_from"] == "recorded"
    assert report["environments"]["served"]["packages"]["mlserver"] == "1.7.1"
    assert not any(v["fails"] for v in report["version_diffs"])


def test_mlserver_killed_mid_replay_ends_the_check_with_exit_3_and_nothing_left(
    serving_venv: Served, tmp_path: Path
) -> None:
    # Its own server (this one dies); many small batches, so that some are in flight.
    log = tmp_path / "server" / "server.log"
    with mlserver(serving_venv.python, tmp_path / "server", access_log=True) as (url, proc):
        cfg = config(tmp_path, url, count=128, batch_size=1, retries=2)
        answered = '"POST /v2/models/espcn/infer HTTP/1.1" 200'
        killed = kill_mid_replay(cfg, url, proc, log, answered, 128)
    assert processes_naming(str(tmp_path)) == []  # neither the server nor a worker is left
    assert alive(killed) == []


def kill_mid_replay(
    cfg: Path, url: str, proc: subprocess.Popen[bytes], log: Path, answered: str, batches: int
) -> list[int]:
    """Run `parity check` on `cfg`, SIGKILL the server (its process group and every
    descendant) once its `log` shows 5 lines with `answered` (batches it answered), and
    check what the user sees: exit 3 naming the endpoint and a batch in the middle of the
    replay, in bounded time. The processes killed."""
    work = cfg.parent / "work"
    check = subprocess.Popen(
        [str(BIN / "parity"), "check", "--config", str(cfg), "--workdir", str(work)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        count = 0
        deadline = time.monotonic() + 300
        while count < 5 and check.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            count = log.read_text(errors="replace").count(answered)
        assert count >= 5 and check.poll() is None, log.read_text()[-2000:]
        family = serving._descendants(proc.pid)
        said: list[tuple[float, str]] = []  # progress lines, as they come, and when
        printed: list[str] = []
        assert check.stderr is not None and check.stdout is not None
        # each stream read by one thread only (communicate() would race the stderr reader)
        readers = [
            threading.Thread(
                target=lambda: said.extend((time.monotonic(), x) for x in check.stderr or ()),
                daemon=True,
            ),
            threading.Thread(target=lambda: printed.extend(check.stdout or ()), daemon=True),
        ]
        for reader in readers:
            reader.start()
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in family:  # those that made process groups of their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        check.wait(timeout=120)
        ended = time.monotonic() - killed
        for reader in readers:
            reader.join(10)
        out = "".join(printed)
    finally:
        if check.poll() is None:
            check.kill()
            check.wait()
    text = "".join(x for _, x in said) + out
    assert check.returncode == 3, text
    when, line = next((t, x) for t, x in said if "[served] error: environment 'served'" in x)
    match = re.search(
        rf"environment 'served': batch (\d+): no answer from {url} \(.+\) after 3 tries$", line
    )
    assert match, line
    assert count <= int(match[1]) < batches  # killed in the middle of the replay
    assert when - killed < 15  # the endpoint's failure: its retries' backoff, no hang
    assert ended < 60  # the check: then the training side ends its replay, no hang
    print(
        f"killed after {count} answers; the endpoint failed on batch {match[1]} "
        f"{when - killed:.1f}s later, the check ended {ended:.1f}s after the kill"
    )
    print(line.strip())
    return [proc.pid, *family]


def test_bentoml_a_wrong_api_name_and_killed_mid_replay(shared_cache: Path, tmp_path: Path) -> None:
    """One BentoML server (started as the example starts it) for the failures that apply to
    its HTTP API: an API it lacks (exit 2, naming those it has), then killed mid-replay."""
    here = ROOT / "examples" / "bentoml"
    python = serving.serving_python(here / "locks" / "pylock.toml", shared_cache)
    port = serving.free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(python.parent / "bentoml"), "serve", "service:Espcn",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = tmp_path / "server.log"
    with serving.server(command, {}, here, log, f"{url}/readyz") as proc:
        cfg = config(tmp_path, url, "bentoml", model="predikt", count=8, batch_size=4)
        code, text, _, _ = parity_check(cfg)
        assert code == 2, text
        said = (
            f"environments.served.model: the service at {url} has no API 'predikt' "
            "(it has: predict)"
        )
        assert said in text, text

        cfg = config(tmp_path, url, "bentoml", count=128, batch_size=1, retries=2)
        answered = "path=/predict,type=application/json"
        killed = kill_mid_replay(cfg, url, proc, log, answered, 128)
    assert processes_naming(str(tmp_path)) == []  # no worker is left
    assert alive(killed) == [] and len(killed) > 1  # nor BentoML, nor its workers
