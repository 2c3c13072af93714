"""Fingerprints and diffs: what the probe records (and never records), and how diffs behave."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from envlock.diff import Side, diff, from_fingerprint

CANARIES = {
    "CUDA_CANARY_TOKEN": "canary-value-1",
    "OMP_SECRET_KEY": "canary-value-2",
    "MKL_PASSWORD": "canary-value-3",
    "NVIDIA_API_KEY": "canary-value-4",
    "TORCH_AUTH": "canary-value-5",
    "MKL_PASSPHRASE": "canary-value-6",
    "NVIDIA_PAT": "canary-value-7",
    "CUDA_SENTRY_DSN": "https://u:canary-value-8@sentry.example/1",
}


def test_the_fingerprint_never_writes_a_secret() -> None:
    env = {**CANARIES, "OMP_NUM_THREADS": "3", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    result = run_cli("envlock", "fingerprint", "--python", str(BIN / "python"), env=env)
    assert result.returncode == 0, result.stderr
    for value in CANARIES.values():
        assert value not in result.stdout
    for name in CANARIES:
        assert name not in result.stdout
    fp = json.loads(result.stdout)
    assert fp["env"]["OMP_NUM_THREADS"] == "3"
    assert fp["env"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert fp["env_withheld"] == len(CANARIES)


def test_a_parity_report_never_holds_a_secret(write_project: Any, tmp_path: Path) -> None:
    from conftest import LOCAL_CONFIG

    cfg = write_project(
        "def predict(inputs):\n    return {'y': inputs['x']}\n", LOCAL_CONFIG.format(timeout=60)
    )
    out = {kind: tmp_path / f"r.{kind}" for kind in ("json", "md", "html", "xml")}
    result = run_cli(
        "parity",
        "check",
        "--config",
        str(cfg),
        "--json",
        str(out["json"]),
        "--markdown",
        str(out["md"]),
        "--html",
        str(out["html"]),
        "--junit",
        str(out["xml"]),
        env=CANARIES,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(out["json"].read_text())["environments"]["train"]["env"] is not None
    for kind, path in out.items():
        text = path.read_text()
        found = [name for name, value in CANARIES.items() if value in text]
        assert not found, f"{kind} report holds the value of {found}"
    assert not any(v in result.stdout + result.stderr for v in CANARIES.values())


def test_fingerprint_sections(repo: Path) -> None:
    result = run_cli("envlock", "fingerprint", "--python", str(BIN / "python"))
    fp = json.loads(result.stdout)
    assert fp["python"]["version"].startswith("3.")
    assert {"compiler", "build", "implementation"} <= set(fp["python"])
    assert fp["platform"]["machine"] and fp["cpu"]["count"] >= 1
    assert isinstance(fp["cpu"]["flags"], list)
    dists = {d["name"]: d for d in fp["distributions"]}
    assert dists["click"]["installer"] == "uv"
    assert dists["click"]["files_sha256"].startswith("sha256:")
    assert fp["numpy"]["version"] and "blas" in fp["numpy"]
    no_import = run_cli("envlock", "fingerprint", "--python", str(BIN / "python"), "--no-import")
    assert "numpy" not in json.loads(no_import.stdout)


def _python_3_9() -> str | None:
    """A working Python 3.9 here: on PATH, or one pyenv installed."""
    import glob
    import os
    import shutil
    import subprocess

    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which("python3.9"), *glob.glob(f"{root}/versions/3.9*/bin/python3")]
    for exe in filter(None, candidates):
        ok = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
        if ok.returncode == 0 and ok.stdout.startswith("Python 3.9"):
            return exe
    return None


def test_the_probe_runs_on_python_3_9_with_the_standard_library_only() -> None:
    import subprocess

    from envlock.probe import __file__ as probe_path

    python = _python_3_9()
    if python is None:
        pytest.skip("no Python 3.9 interpreter here")
    # -I: isolated, no site-packages of ours; the probe must need nothing but the stdlib.
    out = subprocess.run(
        [python, "-I", probe_path, "--no-import"], capture_output=True, text=True, check=True
    )
    fp = json.loads(out.stdout)
    assert fp["python"]["version"].startswith("3.9.")
    assert "cpu" in fp and "distributions" in fp


# --- properties of the diff -------------------------------------------------------------

names = st.sampled_from(["numpy", "torch", "scipy", "pip", "tqdm", "requests", "pillow", "six"])
versions = st.sampled_from(["1.0", "1.26.4", "2.0.1", "2.4.6"])
fingerprints = st.fixed_dictionaries(
    {
        "distributions": st.dictionaries(names, versions).map(
            lambda d: [{"name": k, "version": v} for k, v in d.items()]
        ),
        "python": st.fixed_dictionaries(
            {"version": st.sampled_from(["3.11.2", "3.11.7"]), "implementation": st.just("CPython")}
        ),
        "platform": st.fixed_dictionaries({"machine": st.sampled_from(["x86_64", "aarch64"])}),
        "cpu": st.fixed_dictionaries(
            {"flags": st.lists(st.sampled_from(["avx2", "avx512f", "fma"]), unique=True)}
        ),
        "env": st.dictionaries(
            st.sampled_from(["OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "NVIDIA_TF32_OVERRIDE"]),
            st.sampled_from(["0", "1", "2"]),
        ),
    }
)


def side(fp: dict[str, Any], label: str) -> Side:
    return Side(label, from_fingerprint(fp), "fingerprint")


@given(fingerprints)
def test_a_fingerprint_diffed_with_itself_is_empty(fp: dict[str, Any]) -> None:
    assert diff(side(fp, "a"), side(fp, "b")) == []


@settings(max_examples=200)
@given(fingerprints, fingerprints)
def test_diff_is_symmetric(a: dict[str, Any], b: dict[str, Any]) -> None:
    forward = {(d.component, d.a, d.b, d.severity) for d in diff(side(a, "a"), side(b, "b"))}
    backward = {(d.component, d.b, d.a, d.severity) for d in diff(side(b, "b"), side(a, "a"))}
    assert forward == backward


@given(fingerprints, fingerprints, st.randoms(use_true_random=False))
def test_classification_does_not_depend_on_order(
    a: dict[str, Any], b: dict[str, Any], rnd: random.Random
) -> None:
    shuffled = {**a, "distributions": rnd.sample(a["distributions"], len(a["distributions"]))}
    shuffled["cpu"] = {"flags": rnd.sample(a["cpu"]["flags"], len(a["cpu"]["flags"]))}
    one = {(d.component, d.severity, d.explanation) for d in diff(side(a, "a"), side(b, "b"))}
    two = {
        (d.component, d.severity, d.explanation) for d in diff(side(shuffled, "a"), side(b, "b"))
    }
    assert one == two


@given(fingerprints, fingerprints)
def test_every_package_that_differs_is_listed_whatever_the_overlap(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    va = {d["name"]: d["version"] for d in a["distributions"]}
    vb = {d["name"]: d["version"] for d in b["distributions"]}
    listed = {d.key: (d.a, d.b) for d in diff(side(a, "a"), side(b, "b")) if d.section == "package"}
    assert listed == {
        n: (va.get(n), vb.get(n)) for n in va.keys() | vb.keys() if va.get(n) != vb.get(n)
    }


def test_a_small_lock_against_a_large_environment_lists_each_package() -> None:
    # 2 names shared out of 61: a diff that compared whole sections would say one line.
    lock = Side(
        "pylock.toml",
        {"package": {"numpy": "1.26.4", "six": "1.17.0", "iniconfig": "2.1.0"}},
        "lock",
    )
    others = {f"pkg-{i:02d}": "1.0" for i in range(58)}
    large = side(
        {
            "distributions": [
                {"name": n, "version": v}
                for n, v in {"numpy": "2.4.6", "six": "1.17.0", **others}.items()
            ]
        },
        "fp",
    )
    found = {d.component: d for d in diff(lock, large)}
    assert len(found) == 60
    assert sorted(found) == sorted(
        ["package numpy", "package iniconfig", *(f"package {n}" for n in others)]
    )
    numpy = found["package numpy"]
    assert (numpy.a, numpy.b, numpy.severity) == ("1.26.4", "2.4.6", "numerics")
    assert numpy.explanation.startswith("numpy: major version differs (1.26.4 vs 2.4.6); NumPy 2")
    assert found["package pkg-00"].explanation == (
        "pkg-00: installed only in the second environment; check whether the model uses it."
    )
    nothing_shared = diff(
        side({"distributions": [{"name": "numpy", "version": "2.4.6"}]}, "a"),
        side({"distributions": [{"name": "six", "version": "1.17.0"}]}, "b"),
    )
    assert [(d.component, d.a, d.b, d.severity) for d in nothing_shared] == [
        ("package numpy", "2.4.6", None, "numerics"),
        ("package six", None, "1.17.0", "other"),
    ]


def test_a_section_recorded_on_one_side_only_is_one_line() -> None:
    # A probe run with --no-import records no numpy section: that is not one difference per key.
    with_numpy = {"distributions": [], "numpy": {"blas": {"name": "openblas", "version": "0.3"}}}
    found = diff(side(with_numpy, "a"), side({"distributions": []}, "b"))
    assert [(d.component, d.a, d.b) for d in found] == [("numpy", "present", None)]
    assert found[0].explanation == (
        "numpy: present vs absent; this changes which kernels compute the numbers."
    )


def test_every_difference_is_explained_in_one_line() -> None:
    a = {
        "distributions": [{"name": "numpy", "version": "2.4.6"}, {"name": "pip", "version": "24"}],
        "python": {"version": "3.11.7"},
        "cpu": {"flags": ["avx2", "avx512f"]},
        "env": {"OMP_NUM_THREADS": "1"},
        "torch": {"tf32_cudnn": True, "version": "2"},
    }
    b = {
        "distributions": [{"name": "numpy", "version": "1.26.4"}, {"name": "pip", "version": "25"}],
        "python": {"version": "3.11.2"},
        "cpu": {"flags": ["avx2"]},
        "env": {"OMP_NUM_THREADS": "4"},
        "torch": {"tf32_cudnn": False, "version": "2"},
    }
    found = {d.component: d for d in diff(side(a, "a"), side(b, "b"))}
    assert {c: d.severity for c, d in found.items()} == {
        "package numpy": "numerics",
        "package pip": "benign",
        "python version": "runtime",
        "cpu avx512f": "numerics",
        "env OMP_NUM_THREADS": "numerics",
        "torch tf32_cudnn": "numerics",
    }
    assert all("\n" not in d.explanation for d in found.values())
    assert "NEP 50" in found["package numpy"].explanation
    assert "TF32" in found["torch tf32_cudnn"].explanation
    assert "summation order" in found["env OMP_NUM_THREADS"].explanation


def test_each_difference_gives_its_section_key_and_reason_apart() -> None:
    a = {
        "distributions": [{"name": "numpy", "version": "2.4.6"}],
        "cpu": {"flags": ["avx512f"]},
        "env": {"OMP_NUM_THREADS": "1; 2"},
    }
    b = {
        "distributions": [{"name": "numpy", "version": "1.26.4"}],
        "cpu": {"flags": []},
        "env": {"OMP_NUM_THREADS": "4"},
    }
    found = {(d.section, d.key): d for d in diff(side(a, "a"), side(b, "b"))}
    assert sorted(found) == [("cpu", "avx512f"), ("env", "OMP_NUM_THREADS"), ("package", "numpy")]
    numpy = found["package", "numpy"]
    assert (numpy.component, numpy.a, numpy.b) == ("package numpy", "2.4.6", "1.26.4")
    assert numpy.why.startswith("NumPy 2 changed type promotion (NEP 50)")
    assert numpy.explanation == f"numpy: major version differs (2.4.6 vs 1.26.4); {numpy.why}"
    cpu = found["cpu", "avx512f"]
    assert cpu.explanation == f"CPU feature avx512f: yes vs absent; {cpu.why}"
    threads = found["env", "OMP_NUM_THREADS"]
    assert threads.why.startswith("thread counts change summation order.")
    assert threads.explanation == f"env OMP_NUM_THREADS: 1; 2 vs 4; {threads.why}"


def test_diff_json_keeps_its_shape_and_gives_the_structured_fields(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"distributions": [{"name": "pip", "version": "24"}]}))
    b.write_text(json.dumps({"distributions": [{"name": "pip", "version": "25"}]}))
    result = run_cli("envlock", "diff", str(a), str(b), "--json")
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout) == [
        {
            "component": "package pip",
            "section": "package",
            "key": "pip",
            "a": "24",
            "b": "25",
            "severity": "benign",
            "explanation": "pip: major version differs (24 vs 25); "
            "tooling, does not reach a model's numbers.",
            "why": "tooling, does not reach a model's numbers.",
        }
    ]


# --- the CLI on real locks and real environments ------------------------------------------


def test_diff_two_locks(repo: Path) -> None:
    result = run_cli(
        "envlock",
        "diff",
        "locks/pylock.toml#train",
        "examples/numpy-drift/locks/pylock.toml#train",
        "--json",
    )
    assert result.returncode == 1, result.stderr
    assert [(d["component"], d["a"], d["b"], d["severity"]) for d in json.loads(result.stdout)] == [
        ("package numpy", "2.4.6", "1.26.4", "numerics")
    ]
    same = run_cli("envlock", "diff", "locks/pylock.toml", "locks/pylock.toml#main")
    assert same.returncode == 0 and "no differences" in same.stdout


def test_diff_of_a_lock_and_a_much_larger_environment_lists_every_package(
    repo: Path, tmp_path: Path
) -> None:
    from envlock import read_lock

    probe = run_cli("envlock", "fingerprint", "--python", str(BIN / "python"), "--no-import")
    assert probe.returncode == 0, probe.stderr
    fp = tmp_path / "fp.json"
    fp.write_text(probe.stdout)
    installed = {d["name"]: d["version"] for d in json.loads(probe.stdout)["distributions"]}
    lock = "examples/numpy-drift/locks/pylock.toml"
    locked = read_lock(repo / lock).versions("train")
    shared = set(installed) & set(locked)
    # Few names shared: the case where comparing whole sections hid every package.
    assert "numpy" in shared and len(shared) < len(installed) / 3
    differing = sorted(
        f"package {n}"
        for n in installed.keys() | locked.keys()
        if installed.get(n) != locked.get(n)
    )
    result = run_cli("envlock", "diff", f"{lock}#train", str(fp), "--json")
    assert result.returncode == 1, result.stderr
    found = {d["component"]: d for d in json.loads(result.stdout)}
    assert sorted(found) == differing
    numpy = found["package numpy"]
    assert (numpy["a"], numpy["b"], numpy["severity"]) == ("1.26.4", installed["numpy"], "numerics")
    assert f"version differs (1.26.4 vs {installed['numpy']}); NumPy 2" in numpy["explanation"]
    text = run_cli("envlock", "diff", f"{lock}#train", str(fp))
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"{len(differing)} differences (")
    assert len(lines) == 1 + len(differing)
    assert f"  [numerics] {numpy['explanation']}" in lines


@pytest.mark.slow
def test_real_fingerprints_of_two_venvs_that_differ_in_numpy(
    repo: Path, shared_cache: Path, tmp_path: Path
) -> None:
    fps = []
    for lock in ("locks/pylock.toml", "examples/numpy-drift/locks/pylock.toml"):
        made = run_cli("envlock", "materialize", lock, "--cache-dir", str(shared_cache))
        assert made.returncode == 0, made.stderr
        fp = run_cli("envlock", "fingerprint", "--python", made.stdout.strip())
        assert fp.returncode == 0, fp.stderr
        path = tmp_path / f"fp{len(fps)}.json"
        path.write_text(fp.stdout)
        fps.append(path)
    result = run_cli("envlock", "diff", str(fps[0]), str(fps[1]), "--json")
    assert result.returncode == 1
    found = {d["component"]: d for d in json.loads(result.stdout)}
    assert found["package numpy"]["a"] == "2.4.6" and found["package numpy"]["b"] == "1.26.4"
    assert {c for c in found if c.startswith("package ")} == {"package numpy"}
    assert all(d["severity"] == "numerics" for d in found.values())
    # A fingerprint matches its own lock, and differs from the other one in numpy only.
    assert run_cli("envlock", "diff", str(fps[0]), "locks/pylock.toml").returncode == 0
    other = run_cli(
        "envlock", "diff", str(fps[0]), "examples/numpy-drift/locks/pylock.toml", "--json"
    )
    assert [d["component"] for d in json.loads(other.stdout)] == ["package numpy"]


@pytest.mark.parametrize(
    ("a", "b", "nep50"),
    [("1.26.4", "2.4.6", True), ("2.4.6", "1.26.4", True), ("2.3.5", "2.4.6", False)],
)
def test_the_nep_50_note_is_given_only_across_numpy_1_and_2(a: str, b: str, nep50: bool) -> None:
    def fp(version: str) -> dict[str, Any]:
        return {"distributions": [{"name": "numpy", "version": version}]}

    (numpy,) = diff(side(fp(a), "a"), side(fp(b), "b"))
    assert ("NEP 50" in numpy.why) is nep50
    assert ("NumPy 2" in numpy.why) is nep50
    # every numpy difference still says what a release can change and what to do
    assert numpy.severity == "numerics"
    assert numpy.why.endswith("Install the same version in both (one lock).")
    if not nep50:
        assert "numpy releases change" in numpy.why


def test_a_package_on_one_side_only_gets_no_release_note() -> None:
    a = {
        "distributions": [
            {"name": "numpy", "version": "2.4.6"},
            {"name": "torch", "version": "2.9.1"},
        ]
    }
    b = {"distributions": [{"name": "numpy", "version": "1.26.4"}]}
    found = {d.key: d for d in diff(side(a, "a"), side(b, "b"))}
    assert "NEP 50" in found["numpy"].why
    assert "releases" not in found["torch"].why  # there is no second release to compare
