"""What a check spends besides the model (issue 17's fixed overhead), each saving as what it
must still do: a lock read again is the same lock until its file changes, a worker waiting
for its inputs still sees them (or its host giving up), and a command that ends freezes
what is alive instead of collecting it, once however many commands a process runs. The
figures themselves are `benchmarks/trivial_check.py`'s and `benchmarks/parity_overhead.py`'s
(a benchmark prints ratios; a test never times)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from conftest import LOCAL_CONFIG, ROOT

from envlock import read_lock

LOCK = ROOT / "tests" / "data" / "locks" / "markers" / "pylock.toml"


def test_a_lock_read_again_is_the_same_lock_until_its_file_changes(tmp_path: Path) -> None:
    lock = tmp_path / "pylock.toml"
    lock.write_bytes(LOCK.read_bytes())
    first = read_lock(lock)
    assert read_lock(lock) is first  # parsed once: the config's check and each environment
    assert read_lock(tmp_path / "." / "pylock.toml").path == first.path
    # The same bytes under another name: that name is the lock's path.
    other = tmp_path / "pylock.other.toml"
    other.write_bytes(LOCK.read_bytes())
    assert read_lock(other).path == other and read_lock(other).digest == first.digest
    # Changed, even keeping its size and modification time: read again.
    text = lock.read_text()
    changed = text.replace("size = 34031", "size = 34032")
    assert changed != text and len(changed) == len(text)
    stat = lock.stat()
    lock.write_text(changed)
    os.utime(lock, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = read_lock(lock)
    assert again is not first and again.digest != first.digest
    six = next(p for p in again.packages if p.name == "six")
    assert six.sdist is not None and six.sdist.size == 34032


def _worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_worker_under_test", ROOT / "parity" / "runs" / "worker.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_worker_sees_inputs_that_come_late_and_a_host_that_gives_up(tmp_path: Path) -> None:
    worker = _worker()
    inputs, abort = tmp_path / "inputs.npz", tmp_path / "abort"

    def write_later(path: Path) -> None:
        time.sleep(0.3)
        path.write_bytes(b"")

    later = threading.Thread(target=write_later, args=(inputs,))
    later.start()
    assert worker._wait_for(str(inputs), str(abort), 60.0) is True
    later.join()
    gone = tmp_path / "never.npz"
    aborting = threading.Thread(target=write_later, args=(abort,))
    aborting.start()
    assert worker._wait_for(str(gone), str(abort), 60.0) is False
    aborting.join()
    assert worker._wait_for(str(gone), None, 0.05) is False


def test_commands_run_in_one_process_freeze_at_its_exit_once() -> None:
    code = (
        "import atexit, contextlib, io\n"
        "import parity.cli, envlock.cli\n"
        "before = atexit._ncallbacks()\n"
        "for main in (parity.cli.main, envlock.cli.main, parity.cli.main):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(['--version'])\n"
        "print(atexit._ncallbacks() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


IDENTITY = """\
def predict(inputs):
    return {"y": inputs["x"]}
"""


def test_a_check_that_prints_only_its_json_never_imports_rich(
    write_project: Callable[..., Path],
) -> None:
    """`--json -` prints the JSON alone: the terminal renderer (rich) is neither used nor
    imported while the workers run."""
    cfg = write_project(IDENTITY, LOCAL_CONFIG.format(timeout=120))
    code = (
        "import sys, parity.cli\n"
        "try:\n"
        "    parity.cli.main(['check', '--config', sys.argv[1], '--json', '-', '-q'])\n"
        "except SystemExit as e:\n"
        "    sys.stderr.write(f'exit={e.code} rich={\"rich\" in sys.modules}\\n')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(cfg)], cwd=ROOT, capture_output=True, text=True
    )
    assert json.loads(out.stdout)["verdict"] == "pass", out.stderr
    assert "exit=0 rich=False" in out.stderr, out.stderr
    # and the same check rendered for a reader does import it, to print the report
    shown = subprocess.run(
        [sys.executable, "-c", code.replace("'--json', '-', ", ""), str(cfg)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert "parity check: PASS" in shown.stdout, shown.stderr
    assert "exit=0 rich=True" in shown.stderr, shown.stderr
