"""Hostile processes: nothing a model starts outlives parity. A check that passes, a worker
that times out, Ctrl-C, SIGTERM and kill -9 of parity each leave no worker and no process
the model forked; Ctrl-C and SIGTERM act at once, exit 130 and 143, and write no report.

The model (run by the `local` backend: no venv to build) forks a sleeper when it loads and
records its worker's pid and the sleeper's in a file of its own, in a folder the config's
`[run.env]` names; its predictions then sleep as long as `SLEEP` says."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BIN, LOCAL_CONFIG, run_cli

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads process states from /proc"
)

ADAPTER = """
import os
import subprocess
import time

if os.environ["FORK"] == "fork":
    child = os.fork()
    if child == 0:
        time.sleep(1000)
        os._exit(0)
else:
    child = subprocess.Popen(["sleep", "1000"]).pid
tmp = os.path.join(os.environ["PIDS"], f".{os.getpid()}")
with open(tmp, "w") as f:
    f.write(f"{os.getpid()} {child}")
os.replace(tmp, os.path.join(os.environ["PIDS"], str(os.getpid())))


def predict(inputs):
    if os.environ.get("BROKEN"):
        raise RuntimeError("this side of the model is broken")
    time.sleep(float(os.environ["SLEEP"]))
    return {"y": inputs["x"] * 2.0}
"""


def config(pids: Path, *, sleep: float, timeout: float = 120, fork: str = "popen") -> str:
    return LOCAL_CONFIG.format(timeout=timeout) + (
        f'\n[run.env]\nPIDS = "{pids}"\nSLEEP = "{sleep}"\nFORK = "{fork}"\n'
    )


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie waiting for init to reap it has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def still_running(pids: list[int], within: float = 5.0) -> list[int]:
    """The processes of `pids` that have not ended within `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        alive = [p for p in pids if not gone(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.fixture
def pids_folder(tmp_path: Path) -> Iterator[Path]:
    """Where the model records its processes; any still running afterwards (the test
    failed) are killed, so that a failure leaves nothing behind either."""
    folder = tmp_path / "pids"
    folder.mkdir()
    yield folder
    for pid in recorded(folder):
        if not gone(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def recorded(folder: Path) -> list[int]:
    """Every worker's pid and its sleeper's, as the model recorded them."""
    return [int(p) for f in folder.iterdir() if f.name[0] != "." for p in f.read_text().split()]


def wait_for_workers(folder: Path, proc: subprocess.Popen[str], count: int = 2) -> list[int]:
    """The pids once the model has loaded in `count` workers (each has forked its sleeper)."""
    deadline = time.monotonic() + 120
    while len([f for f in folder.iterdir() if f.name[0] != "."]) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    pids = recorded(folder)
    assert len(pids) == 2 * count
    assert still_running(pids, within=0) == pids  # all running
    return pids


@pytest.mark.parametrize("fork", ["popen", "fork"])
def test_nothing_the_model_forked_outlives_a_passing_check(
    write_project: Callable[..., Path], pids_folder: Path, tmp_path: Path, fork: str
) -> None:
    cfg = write_project(ADAPTER, config(pids_folder, sleep=0, fork=fork))
    result = run_cli("parity", "check", "--config", str(cfg), "-q", timeout=300)
    assert result.returncode == 0, result.stderr
    pids = recorded(pids_folder)
    assert len(pids) == 4  # two workers, a sleeper each
    assert still_running(pids) == []


def test_a_timed_out_worker_and_what_it_forked_are_killed(
    write_project: Callable[..., Path], pids_folder: Path, tmp_path: Path
) -> None:
    cfg = write_project(ADAPTER, config(pids_folder, sleep=300, timeout=3))
    # The work folder is kept (the worker logs are the evidence): in tmp_path.
    result = run_cli(
        "parity", "check", "--config", str(cfg), "-q", env={"TMPDIR": str(tmp_path)}, timeout=300
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "worker timed out after 3s and was killed" in result.stdout
    pids = recorded(pids_folder)
    assert len(pids) == 4
    assert still_running(pids) == []


def start_check(cfg: Path, report: Path, tmp: Path) -> subprocess.Popen[str]:
    """`parity check --json report` as a process of its own, its temporary files in `tmp`
    (with its progress on stderr)."""
    tmp.mkdir()
    return subprocess.Popen(
        [str(BIN / "parity"), "check", "--config", str(cfg), "--json", str(report)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )


@pytest.mark.parametrize(
    ("signum", "code", "name"),
    [(signal.SIGINT, 130, "SIGINT (Ctrl-C)"), (signal.SIGTERM, 143, "SIGTERM")],
)
def test_ctrl_c_and_sigterm_stop_every_worker_at_once(
    write_project: Callable[..., Path],
    pids_folder: Path,
    tmp_path: Path,
    signum: int,
    code: int,
    name: str,
) -> None:
    # The model would sleep 300 s per batch, far beyond the bound asserted here.
    cfg = write_project(ADAPTER, config(pids_folder, sleep=300, timeout=600))
    report = tmp_path / "report.json"
    proc = start_check(cfg, report, tmp_path / "tmp")
    try:
        pids = wait_for_workers(pids_folder, proc)
        sent = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code, stderr
    assert took < 10, f"took {took:.1f}s"
    assert "Traceback" not in stderr
    # One line says it, last; the workers killed are not reported as failing.
    assert stderr.splitlines()[-1] == f"parity: interrupted by {name}: stopped 2 process(es)"
    assert "error" not in stderr.lower() and "status -9" not in stderr, stderr
    assert not report.exists()  # --json was asked: no verdict is claimed
    assert sorted(p.name for p in tmp_path.iterdir()) == [cfg.name, "pids", "src", "tmp"]
    assert list((tmp_path / "tmp").iterdir()) == []  # the work folder was removed
    assert still_running(pids) == []


def test_one_side_failing_stops_the_other_at_once(
    write_project: Callable[..., Path], pids_folder: Path, tmp_path: Path
) -> None:
    """The inference side fails on its first batch while the training side would replay
    for 300 s a batch: the check stops the training side's worker (and what it forked),
    ends with exit 3 and reports the failure first, then what it stopped."""
    cfg = write_project(
        ADAPTER,
        config(pids_folder, sleep=300, timeout=600) + '\n[environments.infer.env]\nBROKEN = "1"\n',
    )
    report = tmp_path / "report.json"
    started = time.monotonic()
    proc = start_check(cfg, report, tmp_path / "tmp")
    try:
        _, stderr = proc.communicate(timeout=200)
        took = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 3, stderr
    assert took < 100, f"took {took:.1f}s"  # not the training side's 300 s batch
    assert "Traceback" not in stderr
    assert "[train] stopped: environment 'infer' failed first" in stderr, stderr
    errors = json.loads(report.read_text())["errors"]
    assert len(errors) == 2 and "this side of the model is broken" in errors[0], errors
    assert errors[1] == "environment 'train': stopped: environment 'infer' failed first"
    assert still_running(recorded(pids_folder)) == []  # whatever had started


def test_kill_9_of_parity_kills_its_workers_and_what_they_forked(
    write_project: Callable[..., Path], pids_folder: Path, tmp_path: Path
) -> None:
    cfg = write_project(ADAPTER, config(pids_folder, sleep=300, timeout=600))
    proc = start_check(cfg, tmp_path / "report.json", tmp_path / "tmp")
    try:
        pids = wait_for_workers(pids_folder, proc)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert still_running(pids) == []


def test_an_interrupted_recording_leaves_no_bundle(
    write_project: Callable[..., Path], pids_folder: Path, tmp_path: Path
) -> None:
    cfg = write_project(ADAPTER, config(pids_folder, sleep=300, timeout=600))
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen(
        [str(BIN / "parity"), "record", "--config", str(cfg), "--out", str(tmp_path / "golden")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
    )
    try:
        pids = wait_for_workers(pids_folder, proc, count=1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, stderr
    assert stderr.splitlines()[-1] == "parity: interrupted by SIGTERM: stopped 1 process(es)"
    assert "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [cfg.name, "pids", "src", "tmp"]
    assert list((tmp_path / "tmp").iterdir()) == []
    assert still_running(pids) == []


FAKE_UV = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "uv 0.9.9"; exit 0; fi
echo $$ > "{pidfile}.tmp" && mv "{pidfile}.tmp" "{pidfile}"
exec sleep 300
"""


def sigterm_while_uv_hangs(command: list[str], tmp_path: Path) -> tuple[int, str, int]:
    """Run `command` with a uv that hangs (a solve or an install that never ends), send it
    SIGTERM once uv runs: its exit code, its stderr and uv's pid."""
    pidfile = tmp_path / "uv.pid"
    uv = tmp_path / "uv"
    uv.write_text(FAKE_UV.format(pidfile=pidfile))
    uv.chmod(0o755)
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ENVLOCK_UV": str(uv)},
    )
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "uv did not start"
            time.sleep(0.05)
        uv_pid = int(pidfile.read_text())
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
        if pidfile.exists() and not gone(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    return proc.returncode, stderr, uv_pid


def test_sigterm_ends_an_envlock_command_and_the_uv_it_runs(tmp_path: Path) -> None:
    spec = tmp_path / "pyproject.toml"
    spec.write_text('[project]\nname = "x"\nversion = "0"\ndependencies = []\n')
    command = [str(BIN / "envlock"), "lock", "--spec", str(spec)]
    code, stderr, uv_pid = sigterm_while_uv_hangs(command, tmp_path)
    assert code == 143, stderr
    last = stderr.splitlines()[-1]
    assert last == "envlock: interrupted by SIGTERM: stopped 1 process(es)", stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "pylock.toml").exists()
    assert still_running([uv_pid]) == []


def test_sigterm_while_a_venv_is_built_in_a_worker_thread_ends_its_uv(
    tmp_path: Path, repo: Path
) -> None:
    # The venvs of a check are built in worker threads, which no signal reaches: the uv
    # each one runs is killed through the list of what is running, not by the exception.
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "adapter.py").write_text("def predict(inputs):\n    return inputs\n")
    cfg = tmp_path / "parity.toml"
    lock = repo / "locks" / "pylock.toml"
    cfg.write_text(
        LOCAL_CONFIG.format(timeout=60).replace(
            '[environments.infer]\nbackend = "local"', f'[environments.infer]\nlock = "{lock}"'
        )
    )
    assert f'lock = "{lock}"' in cfg.read_text()
    command = [str(BIN / "parity"), "check", "--config", str(cfg), "--cache-dir", str(tmp_path)]
    code, stderr, uv_pid = sigterm_while_uv_hangs(command, tmp_path)
    assert code == 143, stderr
    # uv, and the train worker if it had started
    assert re.fullmatch(
        r"parity: interrupted by SIGTERM: stopped [12] process\(es\)", stderr.splitlines()[-1]
    ), stderr
    assert "Traceback" not in stderr
    assert still_running([uv_pid]) == []
