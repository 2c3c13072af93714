"""Faults after, and at the end of, a run: each gives every report the user asked for,
says what went wrong and where in one line, exits 3, never prints a traceback, and leaves
no work folder behind unless it says so.

- An output that turns out corrupt only while it is judged (a member shorter than its
  header declares, a CRC mismatch) is an `error` verdict naming the environment whose
  output it is, with the JSON, JUnit, Markdown and HTML reports all written.
- A worker that exits with status 0 without writing its outputs (`/bin/true` as the
  environment's python, `os._exit(0)` in predict) says so, naming the environment; a
  python that does not exist is named before anything runs.
- The work folder is kept, with "work folder kept: PATH" said once, exactly when a
  failure leaves evidence in it; otherwise it is removed.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import LOCAL_CONFIG, assert_valid_report, run_cli, the_failure

from parity.bundle import _write_manifest

ADAPTER = """\
import os
import numpy as np

def predict(inputs):
    if os.environ.get("EXIT_IN_PREDICT"):
        os._exit(0)
    x = inputs["x"].astype(np.float64)
    # 46 KiB: more than one read of its member, so only reading it all checks its CRC
    wide = np.repeat(x[:, :, :, None], 120, axis=3)
    return {"y": x * 2.0, "wide": wide}
"""

CONFIG = LOCAL_CONFIG.format(timeout=120)
INFER = '[environments.infer]\nbackend = "local"\n'
KEPT = "parity: work folder kept: "


def infer_with(extra: str) -> str:
    """The config with `extra` lines added to the `infer` environment's table."""
    assert INFER in CONFIG
    return CONFIG.replace(INFER, INFER + extra)


def parity(*args: str, cwd: Path, temp: Path) -> tuple[int, str, str]:
    """Run parity with its temporary folders in `temp`; exit code, stdout, stderr."""
    result = run_cli("parity", *args, cwd=cwd, env={"TMPDIR": str(temp)}, timeout=300)
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream, stream
    return result.returncode, result.stdout, result.stderr


def kept(stderr: str) -> list[Path]:
    """The work folders parity said it kept."""
    return [Path(line.removeprefix(KEPT)) for line in stderr.splitlines() if line.startswith(KEPT)]


def left_in(temp: Path) -> list[Path]:
    return sorted(temp.iterdir())


@pytest.fixture
def project(write_project: Callable[..., Path], tmp_path: Path) -> Path:
    write_project(ADAPTER, CONFIG)
    (tmp_path / "temp").mkdir()
    return tmp_path


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of `train` recorded once for the module (tests alter copies of it)."""
    root = tmp_path_factory.mktemp("golden-project")
    (root / "src").mkdir()
    (root / "src" / "adapter.py").write_text(ADAPTER)
    (root / "parity.toml").write_text(CONFIG)
    result = run_cli("parity", "record", "--env", "train", "--out", "golden", "-q", cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "golden"


def corrupt_bundle(golden: Path, into: Path, how: str) -> Path:
    """A copy of `golden` whose `wide` output is corrupt inside its member, in a way only
    reading the data finds, with a manifest that matches (as if recorded so)."""
    bundle = into / "golden"
    shutil.copytree(golden, bundle)
    npz = bundle / "outputs.npz"
    with zipfile.ZipFile(npz) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    data = members["wide.npy"]
    if how == "truncated":  # a valid archive whose member is shorter than its header says
        members["wide.npy"] = data[:-40]
        with zipfile.ZipFile(npz, "w", zipfile.ZIP_STORED) as zf:
            for name, content in members.items():
                zf.writestr(name, content)
    else:  # the member's last bytes changed after its CRC was written
        raw = bytearray(npz.read_bytes())
        at = bytes(raw).index(data) + len(data) - 3
        raw[at] ^= 0xFF
        npz.write_bytes(bytes(raw))
    (bundle / "manifest.json").unlink()
    _write_manifest(bundle)
    return bundle


@pytest.mark.parametrize(
    ("how", "cause"), [("truncated", "wide.npy is truncated"), ("crc", "Bad CRC-32")]
)
def test_an_output_corrupt_inside_its_member_still_gives_every_report(
    project: Path, golden: Path, how: str, cause: str
) -> None:
    bundle = corrupt_bundle(golden, project, how)
    out = project / "reports"
    code, stdout, stderr = parity(
        "check",
        "--against",
        str(bundle),
        "--json",
        str(out / "r.json"),
        "--junit",
        str(out / "r.xml"),
        "--markdown",
        str(out / "r.md"),
        "--html",
        str(out / "r.html"),
        cwd=project,
        temp=project / "temp",
    )
    assert code == 3, stderr
    report = json.loads((out / "r.json").read_text())
    assert_valid_report(report)
    assert report["verdict"] == "error"
    (error,) = report["errors"]
    assert error.startswith("environment 'train': its outputs are unreadable: "), error
    assert f"{bundle / 'outputs.npz'}: " in error and cause in error
    for name in ("r.xml", "r.md", "r.html"):
        assert cause in (out / name).read_text(), name
    assert "parity check: ERROR" in stdout and cause in stdout
    # The candidate's outputs are evidence: the folder is kept, and said so once.
    (folder,) = kept(stderr)
    assert folder.is_dir() and (folder / "infer" / "outputs.npz").is_file()
    assert left_in(project / "temp") == [folder]


def test_a_python_that_does_not_exist_is_named_before_anything_runs(project: Path) -> None:
    (project / "parity.toml").write_text(infer_with('python = "/nope/python3"\n'))
    code, _, stderr = parity("check", "--json", "r.json", cwd=project, temp=project / "temp")
    assert code == 3, stderr
    error = the_failure(json.loads((project / "r.json").read_text())["errors"])
    assert error == "environment 'infer': python /nope/python3 does not exist"
    assert "[infer] running" not in stderr


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ('python = "/bin/true"\n', " (in local interpreter /bin/true)"),
        ('[environments.infer.env]\nEXIT_IN_PREDICT = "1"\n', " (in local interpreter "),
    ],
    ids=["not-a-python", "os-exit-in-predict"],
)
def test_a_worker_that_exits_0_without_outputs_says_so(
    project: Path, extra: str, where: str
) -> None:
    (project / "parity.toml").write_text(infer_with(extra))
    code, _, stderr = parity("check", "--json", "r.json", cwd=project, temp=project / "temp")
    assert code == 3, stderr
    report = json.loads((project / "r.json").read_text())
    assert report["verdict"] == "error"
    error = the_failure(report["errors"])
    first = error.splitlines()[0]
    assert first.startswith(f"environment 'infer': the worker{where}"), first
    assert first.endswith(
        "exited with status 0 without writing its outputs (outputs.npz); last output:"
    ), first
    assert "not a regular file" not in error
    # Its log is the evidence: the work folder stays, and says so once.
    (folder,) = kept(stderr)
    assert (folder / "infer" / "worker.log").is_file()
    assert left_in(project / "temp") == [folder]


def test_the_work_folder_is_removed_unless_a_failure_keeps_it(project: Path, golden: Path) -> None:
    temp = project / "temp"
    # A pass keeps nothing and says nothing.
    code, _, stderr = parity("check", cwd=project, temp=temp)
    assert code == 0, stderr
    assert kept(stderr) == [] and left_in(temp) == []
    # A config error found after the environments ran: removed, nothing said.
    (project / "parity.toml").write_text(CONFIG + "\n[tolerance.outputs.yy]\natol = 1\n")
    code, _, stderr = parity("check", cwd=project, temp=temp)
    assert code == 2, stderr
    assert kept(stderr) == [] and left_in(temp) == []
    # A bundle of other inputs, refused after the work folder was made: removed.
    (project / "parity.toml").write_text(CONFIG.replace("seed = 7", "seed = 8"))
    code, _, stderr = parity("check", "--against", str(golden), cwd=project, temp=temp)
    assert code == 2 and "was recorded on a different input set" in stderr, stderr
    assert kept(stderr) == [] and left_in(temp) == []
    # A worker that fails while recording: kept, as for a check (its log is the evidence).
    (project / "parity.toml").write_text(infer_with('python = "/bin/true"\n'))
    code, _, stderr = parity("record", "--env", "infer", "--out", "b", cwd=project, temp=temp)
    assert code == 3 and "without writing its outputs (outputs.npz)" in stderr, stderr
    assert not (project / "b").exists()
    (folder,) = kept(stderr)
    assert (folder / "infer" / "worker.log").is_file()
    assert left_in(temp) == [folder]
    shutil.rmtree(folder)
    # Quiet, a check prints no progress but still where it left its evidence.
    code, _, stderr = parity("check", "-q", cwd=project, temp=temp)
    assert code == 3, stderr
    (folder,) = kept(stderr)
    assert [line for line in stderr.splitlines() if line.startswith("parity:")] == [
        f"{KEPT}{folder}"
    ]
    assert left_in(temp) == [folder]


def test_a_bug_in_parity_after_the_run_is_an_error_verdict_with_its_traceback_kept(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No real input is known to raise anything but a ParityError, OSError or a corrupt
    archive while judging, so a judge that raises RuntimeError stands in for a bug."""
    import parity.check
    import parity.judging.judge
    from parity.config import load_config

    def judge(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    # parity.check imports it when judging (issue 17: not before the workers start)
    monkeypatch.setattr(parity.judging.judge, "judge", judge)
    said: list[str] = []
    report = parity.check.run_check(
        load_config(project / "parity.toml"),
        workdir=None,
        progress=said.append,
    )
    assert report.verdict == "error" and report.exit_code == 3
    (error,) = report.errors
    assert error.startswith("judging the outputs failed with an unexpected RuntimeError: boom")
    folders = [Path(m.removeprefix("work folder kept: ")) for m in said if "kept" in m]
    assert len(folders) == 1
    trace = (folders[0] / "parity-traceback.txt").read_text()
    assert f"the traceback is in {folders[0] / 'parity-traceback.txt'}" in error
    assert trace.startswith("Traceback") and "RuntimeError: boom" in trace
    shutil.rmtree(folders[0])


def test_a_difference_beyond_2_to_the_1023_has_a_histogram_bin() -> None:
    """Found by tests/test_fortran_outputs.py: the top bin's upper edge was 2.0**1024, an
    OverflowError that aborted the comparison."""
    import sys

    import numpy as np

    from parity.judging.compare import compare_arrays

    result = compare_arrays("y", np.array([0.0, 1.0]), np.array([2.0**1023, 1.0]))
    assert result.max_abs_diff == 2.0**1023 and not result.passed
    assert result.histogram.bins == ((2.0**1023, sys.float_info.max, 1),)
    assert result.histogram.zero == 1
