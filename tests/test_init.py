"""`parity init`: dependency sources read into a lock spec's main and train groups, an
MLflow model's signature and input example read into the input spec (real models saved by
MLflow, never loaded), files never replaced without --force and nothing written on a
failure. The slow tests init real projects and run `parity check` on what init wrote."""

from __future__ import annotations

import json
import shutil
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT, assert_valid_report, run_cli

from parity.cli import main
from parity.config import load_config
from parity.errors import ConfigError
from parity.init.mlflow_model import read_model, widen
from parity.init.project import init_project, parse_input
from parity.init.sources import (
    Dependencies,
    read_environment,
    read_pyproject,
    read_requirements,
)

# --- requirements files -------------------------------------------------------------------


def requirements(tmp_path: Path, text: str, name: str = "requirements.txt") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_requirements_with_hashes_includes_comments_and_markers(tmp_path: Path) -> None:
    requirements(tmp_path, "six==1.17.0  # the base\n", "base.txt")
    path = requirements(
        tmp_path,
        """\
        # pinned by pip-compile --generate-hashes
        -r base.txt
        numpy==2.4.6 \\
            --hash=sha256:aaaa \\
            --hash=sha256:bbbb
        tomli>=2 ; python_version < "3.11"
        requests[socks]>=2.31
        --index-url https://pypi.org/simple
        --extra-index-url https://example.org/simple
        --find-links wheels
        """,
    )
    deps = Dependencies()
    read_requirements(path, deps, "main")
    assert deps.main == [
        "six==1.17.0",
        "numpy==2.4.6",
        'tomli>=2; python_version < "3.11"',
        "requests[socks]>=2.31",
    ]
    assert deps.uv == {
        "index-url": "https://pypi.org/simple",
        "extra-index-url": ["https://example.org/simple"],
        "find-links": ["wheels"],
    }
    assert any("--hash values were left out" in n for n in deps.notes)


def test_constraints_go_to_uv_and_pre_allows_prereleases(tmp_path: Path) -> None:
    requirements(tmp_path, "urllib3<3\n", "constraints.txt")
    path = requirements(tmp_path, "-c constraints.txt\n--pre\nrequests\n")
    deps = Dependencies()
    read_requirements(path, deps, "main")
    assert deps.main == ["requests"]
    assert deps.uv == {"constraint-dependencies": ["urllib3<3"], "prerelease": "allow"}


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("-e .", "an editable install ('-e .') cannot go into a shared lock"),
        ("./src/mypkg", "'./src/mypkg' is a local path"),
        ("--no-binary :all:", "the option --no-binary has no place in a lock spec"),
        ("--index-url https://me:s3cret@example.org/simple", "an index URL with a password"),
        ("-r missing.txt", "includes missing.txt, which does not exist"),
        ("numpy===", "not a requirement a lock can hold: 'numpy==='"),
    ],
)
def test_what_a_lock_cannot_hold_is_refused_naming_the_line(
    tmp_path: Path, line: str, says: str
) -> None:
    path = requirements(tmp_path, f"six\n{line}\n")
    with pytest.raises(ConfigError) as e:
        read_requirements(path, Dependencies(), "main")
    assert str(e.value).startswith(f"{path}: line 2: ")
    assert says in str(e.value)
    assert e.value.exit_code == 2
    assert "s3cret" not in str(e.value)


def test_an_include_cycle_is_refused(tmp_path: Path) -> None:
    requirements(tmp_path, "-r b.txt\n", "a.txt")
    requirements(tmp_path, "-r a.txt\n", "b.txt")
    with pytest.raises(ConfigError, match="includes itself"):
        read_requirements(tmp_path / "a.txt", Dependencies(), "main")


# --- pyproject.toml -----------------------------------------------------------------------

PYPROJECT = """\
[project]
name = "segment"
requires-python = ">=3.11"
dependencies = ["numpy>=2", "scikit-learn==1.9.1"]

[project.optional-dependencies]
serve = ["fastapi"]
train = ["segment[plots]", "optuna"]
plots = ["matplotlib"]

[dependency-groups]
dev = ["pytest"]
training = ["tqdm", {include-group = "data"}]
data = ["pyarrow"]

[tool.uv]
find-links = ["/opt/wheels"]
index-url = "https://pypi.org/simple"
dev-dependencies = ["ruff"]
"""


def test_a_uv_project_gives_main_and_its_training_groups(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT)
    deps = Dependencies()
    read_pyproject(path, deps, None)
    assert deps.main == ["numpy>=2", "scikit-learn==1.9.1"]
    # the training group (with the group it includes) and the train extra (with the
    # project's own extra it names)
    assert deps.train == ["tqdm", "pyarrow", "matplotlib", "optuna"]
    assert deps.requires_python == ">=3.11"
    assert deps.uv == {"find-links": ["/opt/wheels"], "index-url": "https://pypi.org/simple"}
    assert any("left out data, dev, plots, serve" in n for n in deps.notes)


def test_train_groups_as_the_user_says(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT)
    deps = Dependencies()
    read_pyproject(path, deps, ["dev"])
    assert deps.train == ["pytest"]
    with pytest.raises(ConfigError, match="has no dependency group or extra 'nope'"):
        read_pyproject(path, Dependencies(), ["nope"])


def test_a_local_uv_source_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(PYPROJECT + '\n[tool.uv.sources]\nmylib = { path = "../mylib" }\n')
    with pytest.raises(ConfigError, match=r"tool.uv.sources.mylib: a local or workspace source"):
        read_pyproject(path, Dependencies(), None)


# --- environment.yml ----------------------------------------------------------------------

ENVIRONMENT = """\
name: segment
channels: [pytorch, conda-forge]
dependencies:
  - python=3.11
  - pip
  - numpy=2.4
  - scikit-learn==1.9.1=py311h0
  - pytorch::pytorch>=2.5
  - py-opencv
  - pandas 3.1.1
  - pip:
      - -r requirements.txt
      - skops==0.16.0
"""


def test_a_conda_environment_maps_to_pypi_names(tmp_path: Path) -> None:
    requirements(tmp_path, "mlflow-skinny==3.17.2\n")
    path = tmp_path / "environment.yml"
    path.write_text(ENVIRONMENT)
    deps = Dependencies()
    read_environment(path, deps, drop=[])
    assert deps.main == [
        "numpy==2.4.*",
        "scikit-learn==1.9.1",
        "torch>=2.5",
        "opencv-python",
        "pandas==3.1.1",
        "mlflow-skinny==3.17.2",
        "skops==0.16.0",
    ]
    assert deps.requires_python == "==3.11.*"
    assert any("conda's pytorch is torch on PyPI" in n for n in deps.notes)


def test_conda_packages_without_a_pypi_equivalent_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_text(ENVIRONMENT.replace("  - pip\n", "  - cudatoolkit=11.8\n  - libgcc-ng\n"))
    (tmp_path / "requirements.txt").write_text("")
    with pytest.raises(ConfigError) as e:
        read_environment(path, Dependencies(), drop=[])
    assert "no PyPI package stands for cudatoolkit=11.8, libgcc-ng" in str(e.value)
    assert "--drop NAME" in str(e.value)
    deps = Dependencies()
    read_environment(path, deps, drop=["cudatoolkit", "libgcc-ng"])
    assert "torch>=2.5" in deps.main


# --- MLflow models: signature and input example -> input spec -----------------------------


def test_widening_keeps_integers_and_unit_ranges() -> None:
    assert widen(0, 9, integer=True) == (0, 9)
    assert widen(3, 3, integer=True) == (3, 4)
    assert widen(-1.0, 1.0, integer=False) == (-1.2, 1.2)
    assert widen(0.2, 0.9, integer=False) == (0.13, 0.97)
    assert widen(0.0, 0.5, integer=False) == (0.0, 0.55)
    assert widen(0.04, 0.95, integer=False) == (0.0, 1.0)  # within [0, 1]: stays there
    assert widen(2.0, 2.0, integer=False) == (1.8, 2.2)
    assert widen(-5.0, -5.0, integer=False) == (-5.5, -4.5)


mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")


def fitted(frame: bool) -> tuple[Any, Any]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    data = pd.DataFrame(x, columns=list("abcd")) if frame else x
    if frame:
        data["n"] = np.arange(60, dtype=np.int64) % 7
    return LogisticRegression().fit(data, y), data


def save(path: Path, model: Any, **kw: Any) -> Path:
    mlflow.sklearn.save_model(model, str(path), pip_requirements=["scikit-learn"], **kw)
    return path


def test_a_tensor_signature_gives_one_array_and_the_examples_range(tmp_path: Path) -> None:
    model, x = fitted(frame=False)
    folder = save(tmp_path / "m", model, input_example=x[:5])
    read = read_model("m", folder=folder)
    [array] = read.arrays
    assert (array.name, array.shape, array.dtype) == ("input", (4,), "float32")
    lo, hi = float(x[:5].min()), float(x[:5].max())
    assert (array.low, array.high) == widen(lo, hi, integer=False)
    assert array.low is not None and array.high is not None
    assert array.low < lo and array.high > hi
    assert read.dependencies.main == ["mlflow==" + mlflow.__version__, "scikit-learn"]
    assert read.dependencies.requires_python == "==3.11.*"  # from python_env.yaml
    assert read.flavor == "sklearn"


def test_without_requirements_txt_the_conda_yaml_is_read(tmp_path: Path) -> None:
    model, x = fitted(frame=False)
    folder = save(tmp_path / "m", model, input_example=x[:5])
    (folder / "requirements.txt").unlink()
    (folder / "python_env.yaml").unlink()
    deps = read_model("m", folder=folder).dependencies
    assert deps.main == ["mlflow==" + mlflow.__version__, "scikit-learn"]
    assert deps.requires_python == "==3.11.*"  # conda.yaml's python=3.11.x


def test_a_column_signature_gives_one_array_per_column(tmp_path: Path) -> None:
    model, data = fitted(frame=True)
    folder = save(tmp_path / "m", model, input_example=data.head(10))
    arrays = {a.name: a for a in read_model("m", folder=folder).arrays}
    assert list(arrays) == ["a", "b", "c", "d", "n"]
    assert {a.dtype for n, a in arrays.items() if n != "n"} == {"float32"}
    assert arrays["n"].dtype == "int64" and arrays["n"].shape == ()
    head = data.head(10)
    assert (arrays["n"].low, arrays["n"].high) == (float(head.n.min()), float(head.n.max()))


def test_named_tensors_with_a_free_axis_take_its_length_from_the_example(
    tmp_path: Path,
) -> None:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    code = tmp_path / "combine.py"
    code.write_text(
        "import mlflow\n\nclass M(mlflow.pyfunc.PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n        return model_input\n\n"
        "mlflow.models.set_model(M())\n"
    )
    signature = ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype("float32"), (-1, -1, 3), "x"),
                TensorSpec(np.dtype("int64"), (-1,), "k"),
            ]
        )
    )
    example = {"x": np.zeros((2, 5, 3), np.float32), "k": np.array([1, 4])}
    path = tmp_path / "m"
    mlflow.pyfunc.save_model(
        str(path),
        python_model=str(code),
        signature=signature,
        input_example=example,
        pip_requirements=[],
    )
    arrays = {a.name: a for a in read_model("m", folder=path).arrays}
    assert arrays["x"].shape == (5, 3) and arrays["x"].dtype == "float32"
    assert arrays["k"].shape == () and (arrays["k"].low, arrays["k"].high) == (1, 4)


def test_what_seeded_inputs_cannot_express_is_refused(tmp_path: Path) -> None:
    from sklearn.dummy import DummyClassifier

    frame = pd.DataFrame({"city": ["a", "b"], "x": [1.0, 2.0]})
    model = DummyClassifier().fit(frame, [0, 1])
    folder = save(tmp_path / "m", model, input_example=frame)
    result = run_cli(
        "parity", "init", "--mlflow-model", str(folder), "--dir", str(tmp_path / "p"), "--no-ask"
    )
    assert result.returncode == 2, result.stderr
    assert "column 'city' is of type 'string'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "p" / "parity.toml").exists()

    spaced = pd.DataFrame({"sepal length": [1.0, 2.0], "petals": [3, 4]})
    folder = save(tmp_path / "m2", DummyClassifier().fit(spaced, [0, 1]), input_example=spaced)
    with pytest.raises(ConfigError) as e:
        read_model("m2", folder=folder)
    assert "column 'sepal length' cannot name an input array" in str(e.value)
    assert "mix floats and integers" in str(e.value)


def test_columns_named_otherwise_become_one_input_split_into_them(tmp_path: Path) -> None:
    """sklearn's iris frame: names with spaces; one 2-D input of the table's width."""
    from sklearn.datasets import load_iris
    from sklearn.dummy import DummyClassifier

    iris = load_iris(as_frame=True)
    frame = iris.data
    model = DummyClassifier().fit(frame, iris.target)
    folder = save(tmp_path / "m", model, input_example=frame.head(10))
    read = read_model("m", folder=folder)
    [x] = read.arrays
    assert (x.name, x.shape, x.dtype) == ("x", (4,), "float64")
    values = frame.head(10).to_numpy()
    assert (x.low, x.high) == widen(values.min(), values.max(), integer=False)
    assert any("one input x of 4 columns" in n for n in read.notes)


def test_a_model_with_neither_signature_nor_example_is_refused(tmp_path: Path) -> None:
    model, _ = fitted(frame=False)
    folder = save(tmp_path / "m", model)
    with pytest.raises(ConfigError, match="neither a signature nor an input example"):
        read_model("m", folder=folder)


def test_nothing_is_unpickled_the_model_file_is_never_opened(tmp_path: Path) -> None:
    """The model's own file may be anything (here it is unreadable): init reads text only."""
    model, x = fitted(frame=False)
    folder = save(tmp_path / "m", model, input_example=x[:3])
    for f in folder.iterdir():
        text = (
            "MLmodel",
            "requirements.txt",
            "python_env.yaml",
            "conda.yaml",
            "input_example.json",
        )
        if f.name not in text:
            f.write_bytes(b"\x80\x04 not a pickle")
            f.chmod(0)
    assert read_model("m", folder=folder).arrays[0].shape == (4,)


# --- writing a project --------------------------------------------------------------------


def test_input_specs() -> None:
    a = parse_input("lr=uint8[48,48]:image")
    assert (a.name, a.shape, a.dtype, a.generator, a.low) == (
        "lr",
        (48, 48),
        "uint8",
        "image",
        None,
    )
    k = parse_input("k=int64[]:0..9")
    assert (k.shape, k.low, k.high) == ((), 0.0, 9.0)
    assert parse_input("x=float32[3x4]:-1..1:normal").shape == (3, 4)
    for bad in ("x=float32", "x=bool[3]", "x=float32[3]:5..1", "x=float32[0]", "x=float32[3]:up"):
        with pytest.raises(ConfigError):
            parse_input(bad)


def numpy_project(tmp_path: Path) -> Path:
    """A requirements.txt project with a tiny NumPy model and a training-only extra."""
    project = tmp_path / "tiny"
    project.mkdir()
    (project / "requirements.txt").write_text(f"numpy=={np.__version__}\n")
    (project / "requirements-train.txt").write_text("-r requirements.txt\niniconfig==2.1.0\n")
    (project / "tinymodel.py").write_text(
        textwrap.dedent(
            """\
            import numpy as np

            WEIGHTS = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)


            def predict(batch):
                x = batch["x"]
                return {"scores": np.tanh(x @ WEIGHTS), "total": x.sum(axis=1)}
            """
        )
    )
    return project


def test_init_writes_config_and_spec_and_refuses_to_overwrite(tmp_path: Path) -> None:
    project = numpy_project(tmp_path)
    args = ["--requirements", str(project / "requirements.txt"), "--adapter", "tinymodel:predict"]
    args += ["--input", "x=float32[4]:-2..2", "--dir", str(project), "--no-lock", "--no-ask"]
    first = CliRunner().invoke(main, ["init", *args, "--json", str(tmp_path / "init.json")])
    assert first.exit_code == 0, first.output
    done = json.loads((tmp_path / "init.json").read_text())
    assert done["written"] == ["parity.toml", "locks/pyproject.toml"] and not done["locked"]
    assert done["groups"] == {"main": [f"numpy=={np.__version__}"], "train": ["iniconfig==2.1.0"]}
    assert "train adds: 1 requirement(s): iniconfig==2.1.0" in first.output
    assert "requirements-train.txt found beside requirements.txt" in first.output
    spec = tomllib.loads((project / "locks" / "pyproject.toml").read_text())
    assert spec["project"]["dependencies"] == [f"numpy=={np.__version__}"]
    assert spec["dependency-groups"] == {"train": ["iniconfig==2.1.0"]}
    assert spec["tool"]["uv"]["package"] is False and "exclude-newer" in spec["tool"]["uv"]
    config = tomllib.loads((project / "parity.toml").read_text())
    assert config["model"] == {"adapter": "tinymodel:predict", "paths": ["."]}
    assert config["inputs"]["arrays"]["x"] == {
        "shape": [4],
        "dtype": "float32",
        "low": -2,
        "high": 2,
    }
    assert config["environments"]["train"]["group"] == "train"
    assert config["environments"]["infer"]["group"] == "main"
    assert str(tmp_path) not in (project / "parity.toml").read_text()  # portable
    assert not (project / "parity_adapter.py").exists()  # an adapter was given

    before = (project / "parity.toml").read_text()
    (project / "parity.toml").write_text(before + "# mine\n")
    again = CliRunner().invoke(main, ["init", *args])
    assert again.exit_code == 2
    assert f"{project / 'parity.toml'}" in again.output and "--force" in again.output
    assert (project / "parity.toml").read_text().endswith("# mine\n")
    forced = CliRunner().invoke(main, ["init", *args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert (project / "parity.toml").read_text() == before


def test_the_same_exclude_newer_gives_the_same_spec_again(tmp_path: Path) -> None:
    project = numpy_project(tmp_path)
    args = ["--requirements", str(project / "requirements.txt"), "--adapter", "tinymodel:predict"]
    args += ["--input", "x=float32[4]", "--dir", str(project), "--no-lock", "--no-ask"]
    spec = project / "locks" / "pyproject.toml"
    first = CliRunner().invoke(
        main, ["init", *args, "--exclude-newer", "2026-11-01T01:00:00+01:00"]
    )
    assert first.exit_code == 0, first.output
    written = spec.read_text()
    assert tomllib.loads(written)["tool"]["uv"]["exclude-newer"] == "2026-11-01T00:00:00Z"
    again = CliRunner().invoke(
        main, ["init", *args, "--force", "--exclude-newer", "2026-11-01T00:00:00Z"]
    )
    assert again.exit_code == 0, again.output
    assert spec.read_text() == written
    dated = CliRunner().invoke(main, ["init", *args, "--force", "--exclude-newer", "2026-10-31"])
    assert dated.exit_code == 0, dated.output
    assert tomllib.loads(spec.read_text())["tool"]["uv"]["exclude-newer"] == "2026-10-31"
    for bad in ("yesterday", "2026-11-01T00:00:00", "2026-13-01"):
        refused = CliRunner().invoke(main, ["init", *args, "--force", "--exclude-newer", bad])
        assert refused.exit_code == 2, refused.output
        assert "--exclude-newer" in refused.output and bad in refused.output
    assert tomllib.loads(spec.read_text())["tool"]["uv"]["exclude-newer"] == "2026-10-31"


def test_without_an_adapter_a_skeleton_is_written(tmp_path: Path) -> None:
    project = numpy_project(tmp_path)
    result = init_project(
        project, requirements=[project / "requirements.txt"], inputs=["x=float32[4]"], lock=False
    )
    assert result.adapter == "parity_adapter:predict"
    assert "parity_adapter.py" in result.written
    skeleton = (project / "parity_adapter.py").read_text()
    compile(skeleton, "parity_adapter.py", "exec")
    assert "def predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:" in skeleton
    assert any("skeleton" in n for n in result.notes)


def test_train_flags_move_packages(tmp_path: Path) -> None:
    path = requirements(tmp_path, "numpy\ntqdm>=4\nsix\n")
    result = init_project(
        tmp_path / "p",
        requirements=[path],
        train=["tqdm", "rich"],
        inputs=["x=float32[2]"],
        adapter="m:predict",
        lock=False,
    )
    assert result.groups == {"main": ["numpy", "six"], "train": ["tqdm>=4", "rich"]}


def test_a_failure_midway_writes_nothing(tmp_path: Path) -> None:
    """The lock cannot be solved (two pins of one package): exit 3, and no file at all."""
    project = numpy_project(tmp_path)
    (project / "requirements.txt").write_text("six==1.17.0\nsix==1.16.0\n")
    (project / "requirements-train.txt").unlink()
    before = sorted(p.name for p in project.iterdir())
    result = run_cli(
        "parity",
        "init",
        "--requirements",
        "requirements.txt",
        "--adapter",
        "tinymodel:predict",
        "--input",
        "x=float32[4]",
        "--no-ask",
        cwd=project,
    )
    assert result.returncode == 3, result.stderr
    assert "uv could not lock" in result.stderr
    assert sorted(p.name for p in project.iterdir()) == before
    # a folder init made to write into is taken back too
    fresh = tmp_path / "fresh" / "project"
    result = run_cli(
        "parity",
        "init",
        "--requirements",
        str(project / "requirements.txt"),
        "--input",
        "x=float32[4]",
        "--dir",
        str(fresh),
        "--no-ask",
    )
    assert result.returncode == 3, result.stderr
    assert not (tmp_path / "fresh").exists()


def test_no_source_and_no_inputs_are_clear_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", "--dir", str(tmp_path), "--no-ask"])
    assert result.exit_code == 2
    assert "no dependency source: give --requirements, --pyproject, --environment" in result.output
    path = requirements(tmp_path, "numpy\n")
    result = CliRunner().invoke(
        main, ["init", "--dir", str(tmp_path), "--requirements", str(path), "--no-ask"]
    )
    assert result.exit_code == 2 and "--input: the input arrays are unknown" in result.output


def test_on_a_terminal_it_asks_for_what_is_missing(tmp_path: Path) -> None:
    project = numpy_project(tmp_path)
    answers = "\n".join(["", "", "tinymodel:predict", "x=float32[4]"]) + "\n"
    result = CliRunner().invoke(
        main,
        ["init", "--dir", str(project), "--no-lock", "--ask"],
        input=answers,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "MLflow model" in result.output
    offered = f"[{project / 'requirements.txt'}]"
    assert f"Dependencies file (requirements.txt, pyproject.toml or environment.yml) {offered}" in (
        result.output
    )
    config = tomllib.loads((project / "parity.toml").read_text())
    assert config["model"]["adapter"] == "tinymodel:predict"
    # and asked again, it offers to replace what it wrote
    result = CliRunner().invoke(
        main, ["init", "--dir", str(project), "--no-lock", "--ask"], input=answers + "n\n"
    )
    assert result.exit_code == 2 and "replace?" in result.output


def test_a_real_terminal_is_asked_without_flags(tmp_path: Path) -> None:
    """stdin a terminal (a pty), no --ask: `parity init` asks, and writes what it was told."""
    import os
    import select
    import subprocess

    from conftest import BIN

    project = numpy_project(tmp_path)
    leader, follower = os.openpty()
    proc = subprocess.Popen(
        [str(BIN / "parity"), "init", "--no-lock"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        cwd=project,
        close_fds=True,
    )
    os.close(follower)
    out = b""
    answers = [b"\n", b"\n", b"tinymodel:predict\n", b"x=float32[4]\n"]
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the process is done
                break
            if not chunk:
                break
            out += chunk
            if answers and out.rstrip().endswith((b":", b"]:")):
                os.write(leader, answers.pop(0))
    finally:
        os.close(leader)
        code = proc.wait(timeout=60)
    text = out.decode(errors="replace")
    assert code == 0, text
    assert "MLflow model" in text and "Adapter (module:function" in text
    assert "parity init: wrote parity.toml, locks/pyproject.toml" in text
    config = tomllib.loads((project / "parity.toml").read_text())
    assert config["model"]["adapter"] == "tinymodel:predict"
    assert config["inputs"]["arrays"]["x"] == {"shape": [4], "dtype": "float32"}


def test_a_relative_mlflow_folder_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "locks").mkdir()
    shutil.copy(ROOT / "locks" / "pylock.toml", tmp_path / "locks" / "pylock.toml")
    config = tmp_path / "parity.toml"
    config.write_text(
        '[model]\nadapter = "mlflow:models/m1"\n[inputs]\nseed = 1\ncount = 2\n'
        '[inputs.arrays.x]\nshape = [2]\n[environments.a]\nbackend = "local"\n'
        '[environments.b]\nbackend = "local"\n'
    )
    loaded = load_config(config)
    assert loaded.adapter == "mlflow:models/m1"  # as written (reports, bundles)
    assert loaded.worker_adapter == f"mlflow:{tmp_path / 'models' / 'm1'}"
    config.write_text(config.read_text().replace("models/m1", "runs:/abc/model"))
    assert load_config(config).worker_adapter == "mlflow:runs:/abc/model"


# --- real projects, real checks -----------------------------------------------------------


def passing_check(config: Path, cache: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`parity check` of what init wrote, run from elsewhere, its work folder kept in
    `work/` beside the config: it must pass."""
    out = config.parent / "report.json"
    result = run_cli(
        "parity",
        "check",
        "--config",
        str(config),
        "--json",
        str(out),
        "--cache-dir",
        str(cache),
        "--workdir",
        str(config.parent / "work"),
        cwd=config.parent.parent,
        env=env,
    )
    report = json.loads(out.read_text())
    assert_valid_report(report)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["verdict"] == "pass"
    return report


@pytest.mark.slow
def test_a_requirements_project_passes_its_first_check(tmp_path: Path, shared_cache: Path) -> None:
    project = numpy_project(tmp_path)
    result = run_cli(
        "parity",
        "init",
        "--requirements",
        "requirements.txt",
        "--adapter",
        "tinymodel:predict",
        "--input",
        "x=float32[4]:-2..2",
        "--no-ask",
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    assert "main: 1 locked package(s): numpy" in result.stdout
    assert "train: 2 locked package(s): iniconfig, numpy" in result.stdout
    report = passing_check(project / "parity.toml", shared_cache)
    assert sorted(o["name"] for o in report["outputs"]) == ["scores", "total"]
    # the environments differ by the training-only package, as the spec says
    lock = tomllib.loads((project / "locks" / "pylock.toml").read_text())
    assert {p["name"] for p in lock["packages"]} == {"numpy", "iniconfig"}


@dataclass
class Store:
    uri: str
    experiment: str


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One tracking store for the module (creating one takes a while): SQLite (MLflow 3
    refuses new file stores), with the experiment's artifacts beside it."""
    tmp_path = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            experiment = mlflow.create_experiment("init", (tmp_path / "artifacts").as_uri())
            yield Store(uri, experiment)
        finally:
            mlflow.set_tracking_uri(None)


def test_a_registered_model_is_read_through_mlflow(store: Store) -> None:
    """models:/ and runs:/ URIs: MLflow downloads the text files alone; an unknown version
    or run is the user's error (exit 2), naming it."""
    model, x = fitted(frame=False)
    with mlflow.start_run(experiment_id=store.experiment) as run:
        mlflow.sklearn.log_model(
            model,
            name="model",
            input_example=x[:4],
            pip_requirements=["scikit-learn"],
            registered_model_name="clf",
        )
    for uri in ("models:/clf/1", f"runs:/{run.info.run_id}/model"):
        read = read_model(uri)
        assert [(a.name, a.shape, a.dtype) for a in read.arrays] == [("input", (4,), "float32")]
        assert read.dependencies.main[1:] == ["scikit-learn"]
    for uri, says in (("models:/clf/7", "version=7"), ("runs:/nope/model", "nope")):
        with pytest.raises(ConfigError) as e:
            read_model(uri)
        assert f"MLflow cannot find {uri}" in str(e.value) and says in str(e.value)


def test_a_tracking_uri_given_goes_to_run_env_never_with_a_password(
    store: Store, tmp_path: Path
) -> None:
    model, x = fitted(frame=False)
    with mlflow.start_run(experiment_id=store.experiment) as run:
        mlflow.sklearn.log_model(
            model, name="model", input_example=x[:4], pip_requirements=["scikit-learn"]
        )
    uri = f"runs:/{run.info.run_id}/model"
    args = ["init", "--mlflow-model", uri, "--no-lock", "--no-ask", "--dir", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, "--tracking-uri", store.uri])
    assert result.exit_code == 0, result.output
    config = tomllib.loads((tmp_path / "parity.toml").read_text())
    assert config["run"]["env"] == {"MLFLOW_TRACKING_URI": store.uri}
    assert "pass_env" not in config["run"]
    assert config["model"] == {"adapter": f"mlflow:{uri}"}
    secret = "http://me:hunter2hunter2@127.0.0.1:5000"
    result = CliRunner().invoke(main, [*args, "--force", "--tracking-uri", secret])
    assert result.exit_code == 2
    assert "--tracking-uri: a URI with a password" in result.output
    assert "hunter2" not in result.output
    assert tomllib.loads((tmp_path / "parity.toml").read_text()) == config


@pytest.mark.slow
def test_an_mlflow_sklearn_model_passes_its_first_check(
    tmp_path: Path, shared_cache: Path, store: Store
) -> None:
    """A scikit-learn model logged with MLflow (signature and input example, its
    requirements pinned as MLflow pins them) -> `parity init --mlflow-model runs:/...` ->
    `parity check` passes in two venvs built from the model's own requirements."""
    model, data = fitted(frame=True)
    pins = [
        f"{p}=={version(p)}"
        for p in ("mlflow", "scikit-learn", "numpy", "pandas", "scipy", "skops")
    ]
    with mlflow.start_run(experiment_id=store.experiment) as run:
        mlflow.sklearn.log_model(
            model,
            name="model",
            input_example=data.head(20),
            pip_requirements=pins,
            pyfunc_predict_fn="predict_proba",
        )
    uri = f"runs:/{run.info.run_id}/model"
    project = tmp_path / "project"
    result = run_cli(
        "parity",
        "init",
        "--mlflow-model",
        uri,
        "--dir",
        str(project),
        "--no-ask",
        env={"MLFLOW_TRACKING_URI": store.uri},
    )
    assert result.returncode == 0, result.stderr
    config = tomllib.loads((project / "parity.toml").read_text())
    assert config["model"]["adapter"] == f"mlflow:{uri}"
    assert sorted(config["inputs"]["arrays"]) == ["a", "b", "c", "d", "n"]
    assert config["run"]["pass_env"] == ["MLFLOW_TRACKING_URI"]
    spec = tomllib.loads((project / "locks" / "pyproject.toml").read_text())
    assert spec["project"]["dependencies"] == pins
    report = passing_check(
        project / "parity.toml", shared_cache, env={"MLFLOW_TRACKING_URI": store.uri}
    )
    assert [o["name"] for o in report["outputs"]] == ["output"]
    # and the outputs are the model's own probabilities for the seeded inputs
    with np.load(project / "work" / "inputs" / "inputs.npz", allow_pickle=False) as f:
        frame = pd.DataFrame({c: f[c] for c in ["a", "b", "c", "d", "n"]})
    with np.load(project / "work" / "train" / "outputs.npz", allow_pickle=False) as f:
        outputs = f["output"]
    assert outputs.shape == (64, 2)
    np.testing.assert_allclose(outputs, model.predict_proba(frame), rtol=1e-6)


def _ignore(_: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


@pytest.mark.slow
def test_the_reference_model_passes_its_first_check(tmp_path: Path, shared_cache: Path) -> None:
    """`parity init` from the reference model's own uv project (locks/pyproject.toml, torch
    from the local wheel folder its [tool.uv] names) with its adapter and input."""
    project = tmp_path / "reference"
    shutil.copytree(ROOT / "model", project / "model", ignore=_ignore)
    source = tmp_path / "pyproject.toml"
    shutil.copy(ROOT / "locks" / "pyproject.toml", source)
    result = run_cli(
        "parity",
        "init",
        "--pyproject",
        str(source),
        "--adapter",
        "model.adapter:predict",
        "--input",
        "lr=uint8[48,48]:image",
        "--count",
        "32",
        "--no-ask",
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    spec = tomllib.loads((project / "locks" / "pyproject.toml").read_text())
    assert spec["dependency-groups"] == {"train": ["tqdm>=4.66"]}
    assert spec["tool"]["uv"]["find-links"] == ["/opt/wheels"]
    passing_check(project / "parity.toml", shared_cache)
