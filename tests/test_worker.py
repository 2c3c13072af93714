"""The worker and the host around it: model errors, hostile output, timeouts, reports.

These use the `local` backend (this interpreter, which has numpy) so they stay fast; the
same worker runs inside venvs in test_reference_model.py.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from conftest import LOCAL_CONFIG, assert_valid_report, run_cli

from parity.errors import HostileOutputError
from parity.outputs import load_outputs

GOOD_ADAPTER = """\
import numpy as np

def predict(inputs):
    x = inputs["x"]
    return {"y": x * np.float32(2), "total": x.sum(axis=(1, 2))}
"""


def test_identical_local_environments_pass_with_a_json_report(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(GOOD_ADAPTER, LOCAL_CONFIG.format(timeout=120))
    report_path = tmp_path / "out" / "report.json"
    result = run_cli("parity", "check", "--config", str(cfg), "--json", str(report_path))
    assert result.returncode == 0, result.stderr
    assert "parity check: PASS" in result.stdout
    report = json.loads(report_path.read_text())
    assert_valid_report(report)
    with pytest.raises(AssertionError, match="'maybe' is not one of"):
        assert_valid_report({**report, "verdict": "maybe"})  # the schema does check
    assert report["schema_version"] == "1"
    assert report["verdict"] == "pass"
    assert report["version_diffs"] == []
    assert {o["name"]: (o["passed"], o["total"]) for o in report["outputs"]} == {
        "total": (True, 12),
        "y": (True, 144),
    }
    assert set(report["environments"]) == {"train", "infer"}
    assert report["environments"]["train"]["packages"]["numpy"] == np.__version__
    assert report["inputs"]["digest"].startswith("sha256:")


def test_json_to_stdout_holds_only_json(write_project: Callable[..., Path]) -> None:
    cfg = write_project(GOOD_ADAPTER, LOCAL_CONFIG.format(timeout=120))
    result = run_cli("parity", "check", "--config", str(cfg), "--json", "-")
    assert result.returncode == 0
    assert json.loads(result.stdout)["verdict"] == "pass"


def test_model_raising_in_the_worker_exits_3_with_its_error(
    write_project: Callable[..., Path],
) -> None:
    cfg = write_project(
        """\
        def predict(inputs):
            raise ValueError("weights file is corrupt: expected 3 layers")
        """,
        LOCAL_CONFIG.format(timeout=120),
    )
    report_path = cfg.with_name("report.json")
    result = run_cli("parity", "check", "--config", str(cfg), "--json", str(report_path))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "parity check: ERROR" in result.stdout
    report = json.loads(report_path.read_text())
    assert_valid_report(report)
    assert report["verdict"] == "error" and report["outputs"] == []
    assert "ValueError: weights file is corrupt: expected 3 layers" in result.stdout
    assert 'in predict\n    raise ValueError("weights file' in result.stdout  # the traceback


def test_adapter_import_error_exits_3(write_project: Callable[..., Path]) -> None:
    cfg = write_project("import not_a_module_anywhere\n", LOCAL_CONFIG.format(timeout=120))
    result = run_cli("parity", "check", "--config", str(cfg))
    assert result.returncode == 3
    assert "ModuleNotFoundError: No module named 'not_a_module_anywhere'" in result.stdout


def test_worker_that_outlives_its_timeout_is_killed(write_project: Callable[..., Path]) -> None:
    cfg = write_project(
        """\
        import time

        def predict(inputs):
            time.sleep(60)
        """,
        LOCAL_CONFIG.format(timeout=2),
    )
    result = run_cli("parity", "check", "--config", str(cfg), timeout=50)
    assert result.returncode == 3
    assert "worker timed out after 2s and was killed" in result.stdout


class _Canary:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (_touch, (self.path, "unpickled"))


def _touch(path: str, text: str) -> None:
    Path(path).write_text(text)


def test_hostile_npz_with_object_array_is_refused_not_unpickled(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    hostile = tmp_path / "outputs.npz"
    arr = np.empty(1, dtype=object)
    arr[0] = _Canary(str(canary))
    np.savez(hostile, y=arr)
    assert b"canary" in hostile.read_bytes()  # the pickle payload really is in the file
    with pytest.raises(HostileOutputError, match="refused"):
        load_outputs(hostile)
    assert not canary.exists()


def test_hostile_code_in_the_environment_cannot_make_the_host_unpickle(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    # Code inside the environment replaces the worker's outputs with a pickle bomb
    # after the worker wrote them.
    cfg = write_project(
        textwrap.dedent(
            f"""\
            import atexit, json, os, pickle, sys
            import numpy as np

            class Bomb:
                def __reduce__(self):
                    return (open, ({str(canary)!r}, "w"))

            def _replace():
                job = json.load(open(sys.argv[1]))
                arr = np.empty(1, dtype=object)
                arr[0] = Bomb()
                np.savez(os.path.join(job["outdir"], "outputs.npz"), y=arr)

            atexit.register(_replace)

            def predict(inputs):
                return {{"y": inputs["x"]}}
            """
        ),
        LOCAL_CONFIG.format(timeout=120),
    )
    result = run_cli("parity", "check", "--config", str(cfg))
    assert result.returncode == 3, result.stdout
    assert "has dtype object; refused" in result.stdout
    assert not canary.exists()


def test_adapter_returning_objects_is_reported(write_project: Callable[..., Path]) -> None:
    cfg = write_project(
        """\
        import numpy as np

        def predict(inputs):
            return {"y": np.array([object()] * len(inputs["x"]))}
        """,
        LOCAL_CONFIG.format(timeout=120),
    )
    result = run_cli("parity", "check", "--config", str(cfg))
    assert result.returncode == 3
    assert "output 'y' has dtype object; outputs must be numeric arrays" in result.stdout


def test_outputs_that_differ_fail_with_the_numbers(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    # Each environment gets its own PARITY_SIDE via the run.env table? No: both run the
    # same interpreter, so make the adapter differ by the worker's output folder name.
    cfg = write_project(
        """\
        import json, sys
        import numpy as np

        SIDE = json.load(open(sys.argv[1]))["outdir"].rstrip("/").split("/")[-1]

        def predict(inputs):
            y = inputs["x"].astype(np.float32)
            if SIDE == "infer":
                y = y + np.float32(1e-3)
            return {"y": y}
        """,
        LOCAL_CONFIG.format(timeout=120),
    )
    report_path = tmp_path / "r.json"
    junit, markdown = tmp_path / "ci" / "parity.xml", tmp_path / "ci" / "summary.md"
    result = run_cli(
        "parity",
        "check",
        "--config",
        str(cfg),
        "--json",
        str(report_path),
        "--junit",
        str(junit),
        "--markdown",
        str(markdown),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("parity check: FAIL")
    assert "\x1b" not in result.stdout  # a pipe, not a terminal: no colour
    assert re.search(r"^✗ y\s+allclose\(atol=0,\s+144/144 elements\s+0\.001\s", result.stdout, re.M)
    assert "parity: inputs: 12 samples, seed 7" in result.stderr  # progress, plain
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "1", "0")
    failure = suite.find("testcase[@name='y']/failure")
    assert failure is not None and "144 of 144 elements beyond" in failure.get("message", "")
    assert failure.get("type") == "tolerance"
    assert "policy: allclose(atol=0, rtol=0)" in (failure.text or "")
    text = markdown.read_text()
    assert text.startswith("## Parity check: FAIL")
    assert "| `y` | **fail** (tolerance): 144 of 144 elements beyond atol=0, rtol=0" in text
    assert "| `allclose(atol=0, rtol=0)` | 144 / 144 elements (100%) |" in text
    report = json.loads(report_path.read_text())
    assert_valid_report(report)
    (y,) = report["outputs"]
    assert y["passed"] is False
    assert y["mismatched"] == y["total"] == 144
    assert y["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert "output 'y': 144 of 144 elements beyond atol=0, rtol=0" in report["reasons"][0]


def test_the_workers_folder_does_not_shadow_the_models_imports(
    write_project: Callable[..., Path],
) -> None:
    # parity/ holds html.py, inputs.py, config.py, ...: run by path, the worker's folder
    # must not stand in front of the standard library or the environment's packages.
    cfg = write_project(
        """\
        import html.entities
        import numpy as np

        def predict(inputs):
            assert len(html.entities.html5) > 2000
            return {"y": inputs["x"]}
        """,
        LOCAL_CONFIG.format(timeout=120),
    )
    result = run_cli("parity", "check", "--config", str(cfg))
    assert result.returncode == 0, result.stdout
