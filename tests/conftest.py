"""Shared fixtures: the repository, the CLI runners, and environment caches.

Slow tests share one environment cache per session (`$PARITY_TEST_CACHE` to reuse one
across runs while developing; `$ENVLOCK_CACHE_DIR` when set, as CI sets it); tests that
check caching itself use a fresh one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest
from hypothesis import settings
from raycluster import LocalRayCluster, local_ray_cluster

if TYPE_CHECKING:
    from parity.report import ParityReport

# First calls import heavy modules (numpy paths); time is not what these test.
settings.register_profile("project", deadline=None)
settings.load_profile("project")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`$PARITY_TEST_CACHE`, else `$ENVLOCK_CACHE_DIR` (CI sets it to a folder of its clean
    clone: the tests that run the commands without `--cache-dir` build there, and so do the
    CI steps after the tests, so each environment is built once per run), else a fresh one."""
    explicit = os.environ.get("PARITY_TEST_CACHE") or os.environ.get("ENVLOCK_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return tmp_path_factory.mktemp("envlock-cache")


@pytest.fixture(scope="session")
def ray_cluster(
    tmp_path_factory: pytest.TempPathFactory, shared_cache: Path
) -> Iterator[LocalRayCluster]:
    """A real two-node Ray cluster on 127.0.0.1 (`tests/raycluster.py`), one per session:
    starting it takes 10 to 40 s. Its nodes share the session's envlock cache (each node
    building its own torch venvs took minutes of CI). Tests that use it are slow."""
    pytest.importorskip("ray", reason="the `ray` extra is not installed")
    root = tmp_path_factory.mktemp("ray-nodes")
    with local_ray_cluster(root, shared_cache=shared_cache) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def sklearn_drift(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/sklearn-drift, copied and trained as its users do: the joblib artifacts
    written by `python -m segclf.train` inside the training venv (scikit-learn 1.3.2, in
    `shared_cache`). Tests write their own config files into it, each under its own name."""
    import shutil

    from envlock.backends import VenvBackend
    from envlock.lockfile import MAIN, read_lock

    project = tmp_path_factory.mktemp("sklearn-drift") / "sklearn-drift"
    shutil.copytree(
        ROOT / "examples" / "sklearn-drift",
        project,
        ignore=shutil.ignore_patterns("artifacts", "__pycache__"),
    )
    train = VenvBackend(shared_cache).materialize(
        read_lock(project / "locks" / "train" / "pylock.toml"), MAIN
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(train.python), "-m", "segclf.train"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (project / "segclf" / "artifacts" / "scorer.joblib").exists()
    return project


class DriftCheck(NamedTuple):
    """`parity check` of the numpy-drift example: exit code, JSON report, stdout, JUnit."""

    code: int
    report: dict[str, Any]
    stdout: str
    junit: Path


@pytest.fixture(scope="session")
def numpy_drift_check(
    repo: Path, shared_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> DriftCheck:
    """The numpy-drift example checked once per session, as `make drift` runs it (with a
    JSON report and a JUnit file): 256 inputs in two torch venvs, which several modules'
    tests read (test_reference_model, test_search) rather than each running it again."""
    import json

    out = tmp_path_factory.mktemp("numpy-drift-check")
    report, junit = out / "report.json", out / "parity.xml"
    result = run_cli(
        "parity",
        "check",
        "--config",
        "examples/numpy-drift/parity.toml",
        "--json",
        str(report),
        "--junit",
        str(junit),
        "--cache-dir",
        str(shared_cache),
        cwd=repo,
    )
    assert report.exists(), result.stderr
    data = json.loads(report.read_text())
    assert_valid_report(data)
    return DriftCheck(result.returncode, data, result.stdout, junit)


def sklearn_drift_config(project: Path, name: str, **changes: dict[str, object]) -> Path:
    """A config for the sklearn-drift example written into `project` as `name`: the
    example's own parity.toml with `changes` (section -> keys to set) applied, so tests
    follow the example instead of copying it."""
    import tomllib

    import tomli_w

    config = tomllib.loads((project / "parity.toml").read_text())
    for section, keys in changes.items():
        config.setdefault(section, {}).update(keys)
    path = project / name
    path.write_text(tomli_w.dumps(config))
    return path


def run_cli(
    tool: str,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """Run `envlock` or `parity` as a user would: a real process, real exit code."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [str(BIN / tool), *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def failures(errors: list[str]) -> list[str]:
    """A report's `errors` but the notes of a side stopped because the other failed first
    (which of two failing sides fails first is a race: the other is stopped, or fails too)."""
    stopped = r"environment '.+': stopped: environment '.+' failed first"
    return [e for e in errors if not re.fullmatch(stopped, e.splitlines()[0])]


def the_failure(errors: list[str], failed: str = "infer", other: str = "train") -> str:
    """The one failure in a report's `errors`, environment `failed`'s: the `other` side is
    stopped when it fails and says so after it (on its first line: a shard adds where),
    unless it had finished already."""
    error, *rest = errors
    stopped = f"environment {other!r}: stopped: environment {failed!r} failed first"
    assert [e.splitlines()[0] for e in rest] in ([], [stopped]), errors
    return error


@pytest.fixture
def write_project(tmp_path: Path) -> Callable[..., Path]:
    """Write a small parity project (an adapter module and a config) into tmp_path."""

    def write(adapter_code: str, config: str, module: str = "adapter") -> Path:
        pkg = tmp_path / "src"
        pkg.mkdir(exist_ok=True)
        (pkg / f"{module}.py").write_text(textwrap.dedent(adapter_code))
        cfg = tmp_path / "parity.toml"
        cfg.write_text(textwrap.dedent(config))
        return cfg

    return write


LOCAL_CONFIG = """\
[model]
adapter = "adapter:predict"
paths = ["src"]

[inputs]
seed = 7
count = 12
batch_size = 5

[inputs.arrays.x]
shape = [3, 4]
dtype = "float32"

[environments.train]
backend = "local"

[environments.infer]
backend = "local"

[run]
timeout = {timeout}
"""


SCALED_MODEL = """
import json
import os


def predict(inputs):
    return {"y": inputs["x"] * float(os.environ.get("SCALE", "1"))}
"""


def scaled_project(root: Path, scale: str) -> Path:
    """A project whose infer environment multiplies the output by `scale` ("1": it passes;
    anything else fails): what the CI templates (GitHub, GitLab) are run against."""
    (root / "src").mkdir(parents=True)
    (root / "src" / "adapter.py").write_text(textwrap.dedent(SCALED_MODEL))
    config = LOCAL_CONFIG.format(timeout=300) + f'\n[environments.infer.env]\nSCALE = "{scale}"\n'
    (root / "parity.toml").write_text(config)
    return root


TINY_SPEC = """\
[project]
name = "{name}"
version = "0"
requires-python = "==3.11.*"
dependencies = ["six==1.17.0"]

[dependency-groups]
train = ["iniconfig==2.1.0"]

[tool.uv]
package = false
exclude-newer = "2026-11-25T00:00:00Z"
"""


def lock_tiny_spec(folder: Path, name: str) -> Path:
    """Lock a tiny spec (six in main, iniconfig in train) with `envlock lock`; its pylock."""
    (folder / "pyproject.toml").write_text(TINY_SPEC.format(name=name))
    result = run_cli("envlock", "lock", "--spec", str(folder / "pyproject.toml"))
    assert result.returncode == 0, result.stderr
    assert "main: 1, train: 2 packages" in result.stdout
    return folder / "pylock.toml"


def assert_valid_report(report: dict[str, object]) -> None:
    """Fail unless `report` follows the JSON Schema that ships with parity."""
    import json

    from jsonschema import Draft202012Validator

    from parity.report import SCHEMA_PATH

    validator = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def checked(drift: float) -> ParityReport:
    """The report of a real comparison, `drift` added to the candidate's output: what the
    logging integrations (MLflow, W&B) are tested with."""
    import numpy as np

    from parity.judging.compare import compare_arrays
    from parity.policies import TolerancePolicy
    from parity.report import ParityReport

    ref = np.linspace(0, 1, 200, dtype=np.float32).reshape(10, 20)
    out = compare_arrays("sr", ref, ref + np.float32(drift), TolerancePolicy(atol=1e-3))
    return ParityReport(
        verdict="pass" if out.passed else "fail",
        config="parity.toml",
        reference="train",
        candidate="infer",
        inputs={"count": 10, "seed": 1, "digest": "sha256:" + "ab" * 32},
        environments={},
        outputs=[out],
        version_diffs=[],
        reasons=[] if out.passed else [f"output 'sr': {out.reason}"],
    )


# --- a sharded check's report against a local one (tests/test_ray_executor.py,
# tests/test_docker.py) ---------------------------------------------------------------

# The figures a report's comparison holds, which a sharded check must give exactly.
FIGURES = ("verdict", "reasons", "outputs", "version_diffs", "warnings")


def parity_check(
    config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`parity check` on `config` with a JSON report; the process and the report."""
    report = config.with_suffix(".json")
    done = run_cli(
        "parity", "check", "--config", str(config), "--json", str(report), *args,
        env=env, timeout=timeout,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    data = json.loads(report.read_text()) if report.exists() else {}
    if data:
        assert_valid_report(data)
    return done, data


# Figures a partial merge (`merge = "partial"`) adds up in another order than one pass over
# the whole output: equal to about 1e-15 relative (parity.judging.partial).
SUMMATION_ORDER = ("mean_abs_diff", "mean_rel_diff")


def same_outputs(sharded: list[dict[str, Any]], local: list[dict[str, Any]]) -> None:
    """The output comparisons are equal, the means up to summation order."""
    assert [o["name"] for o in sharded] == [o["name"] for o in local]
    for s, loc in zip(sharded, local, strict=True):
        for key in SUMMATION_ORDER:
            assert s[key] == pytest.approx(loc[key], rel=1e-12, abs=0), (s["name"], key)
        assert {k: v for k, v in s.items() if k not in SUMMATION_ORDER} == {
            k: v for k, v in loc.items() if k not in SUMMATION_ORDER
        }, s["name"]


def same_figures(sharded: dict[str, Any], local: dict[str, Any]) -> None:
    """Every comparison figure of `sharded` is `local`'s; the inputs are the same set."""
    for key in FIGURES:
        if key == "outputs" and sharded["execution"].get("merge") == "partial":
            same_outputs(sharded[key], local[key])
        else:
            assert sharded.get(key) == local.get(key), key
    assert sharded["errors"] == local["errors"] == []
    assert sharded["inputs"] == local["inputs"]
    assert "execution" not in local
