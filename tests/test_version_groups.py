"""Version differences that read like an explanation: what differs only because another
difference requires it is grouped under that one, root causes first, in every format.

The fast tests diff fingerprints as the probe writes them (a torch CPU build against a CUDA
one, whose triton and nvidia-* packages come only with it); the slow one runs a real check
between the sklearn-drift venvs, where numpy's BLAS and LAPACK lines follow numpy's version.
"""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from envlock.diff import diff as diff_sides
from envlock.diff import load_side
from envlock.probe import required_names
from parity.judging.versions import VersionDiff, version_reasons

NVIDIA = [f"nvidia-{n}-cu12" for n in ("cublas", "cudnn", "cufft", "nccl")]


def fingerprint(distributions: dict[str, tuple[str, list[str]]], **sections: Any) -> dict:
    return {
        "schema": 1,
        "python": {"version": "3.11.7", "implementation": "CPython"},
        "platform": {"system": "Linux", "machine": "x86_64"},
        "distributions": [
            {"name": n, "version": v, "requires": r} for n, (v, r) in sorted(distributions.items())
        ],
        "env": {},
        **sections,
    }


def torch_sides(tmp_path: Path) -> tuple[Path, Path]:
    stable = {
        "filelock": ("3.16.1", []),
        "tqdm": ("4.67.1", []),
        "numpy": ("2.2.6", []),
    }
    cpu = fingerprint(
        {**stable, "torch": ("2.13.0+cpu", ["filelock", "numpy"])},
        torch={"version": "2.13.0+cpu", "cuda": None, "threads": 4},
    )
    cuda = fingerprint(
        {
            **stable,
            "torch": ("2.14.1", ["filelock", "numpy", "triton", *NVIDIA]),
            "triton": ("3.5.0", ["setuptools"]),
            "setuptools": ("80.9.0", []),
            # cudnn comes with torch and requires cublas too: both are grouped under torch.
            "nvidia-cudnn-cu12": ("9.10.2.21", ["nvidia-cublas-cu12"]),
            **{n: ("12.8.4.1", []) for n in NVIDIA if n != "nvidia-cudnn-cu12"},
            # colorama is required by tqdm, which did not change: a difference of its own.
            "colorama": ("0.4.6", []),
            "tqdm": ("4.67.1", ["colorama"]),
        },
        torch={"version": "2.14.1", "cuda": "12.8", "threads": 4},
    )
    paths = []
    for name, fp in (("cpu", cpu), ("cuda", cuda)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(fp))
        paths.append(path)
    return paths[0], paths[1]


def test_packages_that_come_only_with_torch_are_grouped_under_it(tmp_path: Path) -> None:
    a, b = torch_sides(tmp_path)
    found = diff_sides(load_side(str(a)), load_side(str(b)))
    shown = [(d.component, d.caused_by) for d in found]
    # torch first, then what follows from it; colorama (tqdm requires it) stands alone.
    assert shown == [
        ("package colorama", None),
        ("package torch", None),
        *((f"package {n}", "package torch") for n in sorted([*NVIDIA, "setuptools", "triton"])),
        ("torch cuda", "package torch"),
    ]
    why = {d.key: d.why for d in found if d.section == "package"}
    assert why["triton"] == "comes with torch (torch requires it)"
    assert why["setuptools"] == "comes with torch (triton requires it)"
    # torch requires cublas itself (cudnn does too): the changed requirer is named.
    assert why["nvidia-cublas-cu12"] == "comes with torch (torch requires it)"

    result = run_cli("envlock", "diff", str(a), str(b), "--json")
    entries = json.loads(result.stdout)
    assert "caused_by" not in entries[0] and "caused_by" not in entries[1]
    assert {e["caused_by"] for e in entries[2:]} == {"package torch"}
    text = run_cli("envlock", "diff", str(a), str(b)).stdout.splitlines()
    assert text[2].startswith("  [numerics] torch: version differs")
    assert all(line.startswith("      [") for line in text[3:])


def test_a_root_cause_is_one_reason_with_what_follows_from_it_counted() -> None:
    def version(name: str, fails: bool, caused_by: str | None = None) -> VersionDiff:
        versions = {"cpu": None, "cuda": "1"} if caused_by else {"cpu": "2.13.0", "cuda": "2.14.1"}
        return VersionDiff(name, versions, "numerics", False, "", fails, caused_by)

    diffs = [version("torch", True)] + [version(n, True, "torch") for n in ["triton", *NVIDIA]]
    assert version_reasons(diffs) == [
        "torch differs: 2.13.0 (cpu), 2.14.1 (cuda) [numerics], with 5 difference(s) that "
        "follow from it: triton, nvidia-cublas-cu12, nvidia-cudnn-cu12, nvidia-cufft-cu12, "
        "nvidia-nccl-cu12"
    ]
    # A root the policy lets pass still says when what follows from it fails.
    diffs[0] = version("torch", False)
    assert len(version_reasons(diffs)) == 1 and "with 5 difference(s)" in version_reasons(diffs)[0]


def test_numpys_anonymous_lapack_is_named_by_its_blas(tmp_path: Path) -> None:
    blas = {"name": "openblas64", "version": "0.3.23.dev"}
    old = fingerprint(
        {"numpy": ("1.26.4", [])},
        numpy={
            "version": "1.26.4",
            "blas": blas,
            "lapack": {"name": "dep140213194937296", "version": "1.26.4"},
        },
    )
    new_lib = {"name": "scipy-openblas", "version": "0.3.29"}
    new = fingerprint(
        {"numpy": ("2.2.6", [])}, numpy={"version": "2.2.6", "blas": new_lib, "lapack": new_lib}
    )
    (tmp_path / "a.json").write_text(json.dumps(old))
    (tmp_path / "b.json").write_text(json.dumps(new))
    found = diff_sides(load_side(str(tmp_path / "a.json")), load_side(str(tmp_path / "b.json")))
    assert [(d.component, d.a, d.caused_by) for d in found] == [
        ("package numpy", "1.26.4", None),
        ("numpy blas", "openblas64 0.3.23.dev", "package numpy"),
        ("numpy lapack", "openblas64 (via blas) 0.3.23.dev", "package numpy"),
    ]
    assert not any("dep1402" in d.explanation for d in found)


def test_the_probe_records_required_names_without_extras() -> None:
    assert required_names(
        [
            "numpy<1.28.0,>=1.21.6",
            "Jinja2 >=3; python_version >= '3.8'",
            "pytest; extra == 'test'",
            "nvidia_cudnn_cu12==9.10.2.21 ; platform_system == 'Linux'",
        ]
    ) == ["jinja2", "numpy", "nvidia-cudnn-cu12"]
    assert required_names(None) == []


CONFIG = """\
[model]
adapter = "plain:predict"
paths = ["src"]

[inputs]
seed = 3
count = 8
batch_size = 8

[inputs.arrays.x]
shape = [4]
dtype = "float64"
generator = "normal"

[environments.train]
backend = "venv"
lock = "{root}/examples/sklearn-drift/locks/train/pylock.toml"

[environments.infer]
backend = "venv"
lock = "{root}/examples/sklearn-drift/locks/infer/pylock.toml"

[run]
reference = "train"
threads = 1

[tolerance]
atol = 0
rtol = 0

[policy]
fail_on_version_diffs = ["numerics"]
"""


@pytest.mark.slow
def test_real_fingerprints_numpys_blas_lines_follow_numpy_in_every_format(
    repo: Path, shared_cache: Path, tmp_path: Path
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "plain.py").write_text(
        textwrap.dedent(
            """\
            import numpy as np


            def predict(batch):
                return {"y": np.asarray(batch["x"], dtype=np.float64) * 2.0}
            """
        )
    )
    config = tmp_path / "parity.toml"
    config.write_text(CONFIG.format(root=repo))
    out = {k: tmp_path / f"report.{k}" for k in ("json", "xml", "md", "html")}
    result = run_cli(
        "parity",
        "check",
        "--config",
        str(config),
        "--cache-dir",
        str(shared_cache),
        "--json",
        str(out["json"]),
        "--junit",
        str(out["xml"]),
        "--markdown",
        str(out["md"]),
        "--html",
        str(out["html"]),
    )
    assert result.returncode == 1, result.stdout + result.stderr  # the versions fail it
    report = json.loads(out["json"].read_text())
    diffs = [(v["name"], v.get("caused_by")) for v in report["version_diffs"]]
    at = diffs.index(("numpy", None))
    assert diffs[at + 1 : at + 3] == [("numpy blas", "numpy"), ("numpy lapack", "numpy")]
    assert [n for n, c in diffs if c is None] == [
        "joblib",
        "numpy",
        "scikit-learn",
        "scipy",
        "threadpoolctl",
    ]
    lapack = next(v for v in report["version_diffs"] if v["name"] == "numpy lapack")
    assert lapack["versions"]["train"] == "openblas64 (via blas) 0.3.23.dev"
    assert "scipy-openblas" in lapack["versions"]["infer"]
    # One reason per root cause: numpy's, counting its BLAS and LAPACK.
    numpy_reasons = [r for r in report["reasons"] if r.startswith("numpy")]
    assert numpy_reasons == [
        "numpy differs: 1.26.4 (train), 2.2.6 (infer) [numerics], with 2 difference(s) that "
        "follow from it: numpy blas, numpy lapack"
    ]
    assert not any("dep1" in r for r in report["reasons"])
    assert "dep1" not in result.stdout
    assert "↳ numpy blas" in result.stdout and "with numpy" in result.stdout
    md = out["md"].read_text()
    assert "| ↳ `numpy blas` |" in md and "| with `numpy` |" in md
    html = out["html"].read_text()
    assert "&#8627; <code>numpy lapack</code>" in html
    suite = ET.parse(out["xml"]).getroot()
    cases = {
        c.get("name"): c for c in suite.iter("testcase") if c.get("classname") == "parity.versions"
    }
    assert cases["numpy"].find("failure") is not None
    assert "with numpy blas" in (cases["numpy"].find("failure").text or "")
    for name in ("numpy blas", "numpy lapack"):
        assert cases[name].find("failure") is None
        assert "[with numpy]" in (cases[name].find("system-out").text or "")
