"""A worker's log is bounded: a model that prints without end fills neither the disk nor, when
parity reads the log back for an error message, the memory; and a process the model started
in a session of its own (out of reach of the group kill), still holding the log's pipe, does
not keep the check waiting."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import LOCAL_CONFIG, failures, run_cli

from envlock.backends.base import LOG_HEAD, LOG_TAIL

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="POSIX process sessions"
)

NOISY = """
import sys

print("noisy model: first line", flush=True)
line = "x" * 1023 + "\\n"
for _ in range(12 * 1024):  # 12 MiB on stdout, 12 MiB on stderr
    sys.stdout.write(line)
    sys.stderr.write(line)
print("noisy model: last line", flush=True)


def predict(inputs):
    raise RuntimeError("the noisy model gives up")
"""

ESCAPED = """
import os
import subprocess

# Leaves the worker's process group (a session of its own) with the log's pipe as stdout.
child = subprocess.Popen(["setsid", "sleep", "1000"])
with open(os.path.join(os.environ["PIDS"], str(os.getpid())), "w") as f:
    f.write(str(child.pid))


def predict(inputs):
    return {"y": inputs["x"] * 2.0}
"""


def test_a_model_printing_24_mib_leaves_a_log_of_its_start_and_its_end(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(NOISY, LOCAL_CONFIG.format(timeout=300))
    work = tmp_path / "tmp"
    work.mkdir()
    report = tmp_path / "r.json"
    result = run_cli(
        "parity", "check", "--config", str(cfg), "-q", "--json", str(report),
        env={"TMPDIR": str(work)}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "the noisy model gives up" in result.stdout  # with the model's traceback
    # Both sides fail; the one failing second may be stopped first, its printing cut short.
    errors = json.loads(report.read_text())["errors"]
    failed = {e.partition("'")[2].partition("'")[0] for e in failures(errors)}
    assert failed, errors
    logs = sorted(work.rglob("worker.log"))
    assert len(logs) == 2, logs  # the work folder is kept: the logs are the evidence
    assert failed <= {log.parent.name for log in logs}, (failed, logs)
    for log in logs:
        text = log.read_bytes()
        assert len(text) <= LOG_HEAD + LOG_TAIL + 200
        assert text.startswith(b"noisy model: first line\n")
        if log.parent.name not in failed:
            continue  # stopped: its log is bounded and starts as it must, its end is cut
        assert b"noisy model: last line" in text[-LOG_TAIL:]
        # What was left out is said: at least all the model printed, less what was kept.
        said = re.search(rb"\n\[\.\.\. ([\d,]+) bytes of output left out here \.\.\.\]\n", text)
        assert said, text[LOG_HEAD - 100 : LOG_HEAD + 200]
        printed = 24 + 2 * 12 * 1024 * 1024 + 23
        assert int(said[1].replace(b",", b"")) >= printed - LOG_HEAD - LOG_TAIL


def test_a_process_escaping_the_group_with_the_logs_pipe_does_not_hold_the_check(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    config = LOCAL_CONFIG.format(timeout=300) + f'\n[run.env]\nPIDS = "{pids}"\n'
    cfg = write_project(ESCAPED, config)
    started = time.monotonic()
    try:
        result = run_cli("parity", "check", "--config", str(cfg), "-q", timeout=120)
        took = time.monotonic() - started
    finally:
        for f in pids.iterdir():  # the sleepers escaped parity's reach: ours to stop
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(f.read_text()), signal.SIGKILL)
    assert result.returncode == 0, result.stdout + result.stderr
    # Each worker's log is read for at most two seconds once its group is gone; the
    # sleepers hold their pipes for 1000 s.
    assert took < 60, took
