"""A numerics package that differs fails a check whose outputs agree, unless the policy
says otherwise (`[policy] fail_on_version_diffs`)."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from conftest import LOCAL_CONFIG, assert_valid_report, run_cli

ADAPTER = """\
def predict(inputs):
    return {"y": inputs["x"]}
"""


def shadowing_interpreter(folder: Path) -> Path:
    """A venv that sees this interpreter's packages (a .pth file) but finds threadpoolctl
    0.0.1 first: a real interpreter whose fingerprint differs in one numerics package,
    made in a second without a network or a download."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next((folder / "lib").glob("python3.*/site-packages"))
    (site / "parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    dist = site / "threadpoolctl-0.0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: threadpoolctl\nVersion: 0.0.1\n")
    return folder / "bin" / "python"


def test_a_numerics_package_that_differs_fails_outputs_that_agree(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    python = shadowing_interpreter(tmp_path / "venv")
    config = LOCAL_CONFIG.format(timeout=120).replace(
        '[environments.infer]\nbackend = "local"\n',
        f'[environments.infer]\nbackend = "local"\npython = "{python}"\n',
    )
    cfg = write_project(ADAPTER, config)
    out = tmp_path / "r.json"
    result = run_cli("parity", "check", "--config", str(cfg), "--json", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    assert all(o["passed"] for o in report["outputs"])  # the numbers agree
    version = metadata.version("threadpoolctl")
    assert report["reasons"] == [
        f"threadpoolctl differs: {version} (train), 0.0.1 (infer) [numerics]"
    ]
    assert "threadpoolctl differs: " in result.stdout

    cfg.write_text(config + "\n[policy]\nfail_on_version_diffs = []\n")
    allowed = run_cli("parity", "check", "--config", str(cfg), "--json", str(out))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    diffs = json.loads(out.read_text())["version_diffs"]
    assert [(d["name"], d["fails"]) for d in diffs if d["severity"] == "numerics"] == [
        ("threadpoolctl", False)
    ]
