"""The house rules of docs/ARCHITECTURE.md, as a newcomer would check them: no import
cycles, the worker and the probe import only what every environment has, the public API
resolves, and the architecture document names only modules that exist."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "scripts"))
import import_cycles

ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"


def test_envlock_and_parity_have_no_import_cycles() -> None:
    graph = grimp.build_graph("envlock", "parity")
    assert import_cycles.cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic import b\n")
    (package / "b.py").write_text("def f():\n    from cyclic import c\n")
    (package / "c.py").write_text("import cyclic.a\n")
    (package / "d.py").write_text("import cyclic.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclic", cache_dir=None)
    assert import_cycles.cycles(graph) == [["cyclic.a", "cyclic.b", "cyclic.c"]]


def test_the_import_contracts_hold() -> None:
    result = run_cli("lint-imports", "--no-cache", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        # numpy for the arrays; mlflow only for an `mlflow:` adapter, which needs it anyway,
        # and pandas (MLflow's own dependency) only for such a model's column-based schema.
        ("parity/runs/worker.py", {"numpy", "mlflow", "pandas"}),
        # threadpoolctl is read when the environment has it.
        ("envlock/probe.py", {"threadpoolctl"}),
        # Run by a new venv's interpreter to compile it (the standard library alone).
        ("envlock/backends/bytecode.py", set()),
    ],
)
def test_code_that_runs_inside_environments_needs_only_the_standard_library(
    path: str, allowed: set[str]
) -> None:
    outside = _imports(ROOT / path) - set(sys.stdlib_module_names) - {"__future__"}
    assert outside <= allowed, f"{path} imports {sorted(outside - allowed)}"


@pytest.mark.parametrize("package", ["envlock", "parity"])
def test_every_public_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


def test_the_public_api_has_what_the_commands_use() -> None:
    import parity

    for name in ("run_check", "check_against", "record_bundle", "bisect_environments", "search"):
        assert callable(getattr(parity, name)), name


def test_the_architecture_document_names_only_modules_that_exist() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    names = re.findall(r"\b((?:envlock|parity)(?:\.[a-z_]+)+)\b", text)
    named = {n for n in names if not n.endswith(".toml")}  # parity.toml is a file
    assert len(named) > 20  # the document does name the modules
    missing = []
    for dotted in sorted(named):
        parts = dotted.split(".")
        # `parity.runs.replay.WorkFolder`-style names end in an attribute, not a module.
        for cut in range(len(parts), 1, -1):
            try:
                module = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            rest = parts[cut:]
            target: object = module
            for attr in rest:
                target = getattr(target, attr, None)
            if target is None:
                missing.append(dotted)
            break
        else:
            missing.append(dotted)
    assert missing == []


def test_every_parity_subpackage_is_in_the_architecture_document() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    packages = sorted(
        p.parent.name for p in (ROOT / "parity").glob("*/__init__.py") if p.parent.name
    )
    assert packages, "parity has subpackages"
    assert [p for p in packages if f"parity.{p}" not in text] == []


# What a plain `parity check` of two venvs never uses (issue 17): heavy third-party
# packages (pandas alone takes a second and a half), and the parts of parity and envlock
# behind an option (bundles, MLflow, report files, Docker images). Each is imported where
# it is used; importing one at module level again fails here.
NOT_ON_THE_CHECK_PATH = [
    "deepdiff",
    "pandas",
    "mlflow",
    "wandb",
    "docker",
    "dvc",
    "hypothesis",
    "requests",
    "jsonschema",
    "filelock",
    "tomli_w",
    "urllib.request",
    "parity.bundle",
    "parity.integrations.mlflow",
    "parity.integrations.wandb",
    "parity.investigations.search",
    "parity.render.html",
    "parity.render.junit",
    "parity.render.markdown",
    "parity.render.metrics",
    "envlock.images",
    "parity.runs.worker",
]


def test_the_check_command_and_a_config_import_only_what_a_check_uses() -> None:
    code = (
        "import contextlib, sys\n"
        "from pathlib import Path\n"
        "import parity.cli\n"
        "from parity.config import load_config\n"
        "with contextlib.redirect_stdout(None), contextlib.suppress(SystemExit):\n"
        "    parity.cli.main(['check', '--help'])\n"
        "load_config(Path('parity.toml'))\n"
        f"print(sorted(set({NOT_ON_THE_CHECK_PATH!r}) & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_host_and_the_worker_agree_on_the_job_protocol() -> None:
    """The host does not import the worker (issue 17), so the constants both sides use are
    written twice: here they must agree."""
    from parity.runs import job, worker

    assert Path(worker.__file__) == job.WORKER
    for name in ("JOB_SCHEMA", "WARNINGS_FILE", "WARNING_ENTRIES", "WARNING_MESSAGE"):
        assert getattr(job, name) == getattr(worker, name), name


# What a `parity check` needs only once its workers run (issue 17): imported while they run
# (`parity.check`'s meanwhile), so that they start after the command imported only what
# starting them needs. Importing one at start-up again fails here.
NOT_BEFORE_THE_WORKERS_START = [
    "numpy",
    "rich",
    "envlock.diff",
    "parity.judging.judge",
    "parity.judging.compare",
    "parity.comparison",
    "parity.investigations.localize",
    "parity.render.terminal",
    "parity.report",
    "envlock.backends.docker",
]


def test_a_check_starts_its_workers_before_importing_judging_and_rendering() -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import parity.cli, parity.check, parity.runs.replay\n"
        "from parity.config import load_config\n"
        "from parity.render.progress import progress_printer\n"
        "progress_printer(True)\n"
        "load_config(Path('parity.toml'))\n"
        f"print(sorted(set({NOT_BEFORE_THE_WORKERS_START!r}) & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
