"""`adapter = "mlflow:<model uri>"` with models as MLflow's flavors log them (issue 14): each
model gets the batch in the form its signature takes (one array, a DataFrame of columns, a
dict of tensors) and what it returns becomes named numeric outputs.

The fast tests give `_mlflow_input` and `_mlflow_outputs` (the worker's) real MLflow
schemas; the slow ones log real models into a SQLite store in a temporary folder and run
`parity check` on two `local` environments, comparing the outputs with the model's own
numbers."""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_valid_report, failures, run_cli

from parity.runs.worker import ModelInputError, _checked_outputs, _mlflow_input, _mlflow_outputs

mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")

from mlflow.models import infer_signature  # noqa: E402
from mlflow.types.schema import ColSpec, Schema, TensorSpec  # noqa: E402

URI = "runs:/r/model"
BATCH = {"x": np.arange(20, dtype=np.float32).reshape(5, 4)}


# --- the worker's conversions, with real MLflow schemas -----------------------------------


def test_no_signature_and_one_input_gives_the_array() -> None:
    assert _mlflow_input(URI, None, BATCH) is BATCH["x"]


def test_a_python_model_without_a_signature_gets_the_dict_as_before() -> None:
    batch = {**BATCH, "y": np.zeros((5, 2), np.int64)}
    assert _mlflow_input(URI, None, batch, custom=True) is batch


def test_no_signature_and_several_inputs_is_a_clear_error() -> None:
    batch = {**BATCH, "y": np.zeros((5, 2), np.int64)}
    with pytest.raises(ModelInputError) as e:
        _mlflow_input(URI, None, batch)
    assert "has no signature" in str(e.value)
    assert "x (5, 4) float32, y (5, 2) int64" in str(e.value)
    assert "input_example" in str(e.value)


def test_a_single_tensor_gets_the_array_cast_where_safe() -> None:
    schema = Schema([TensorSpec(np.dtype("float64"), (-1, 4))])
    data = _mlflow_input(URI, schema, BATCH)
    assert data.dtype == np.float64 and np.array_equal(data, BATCH["x"])
    with pytest.raises(ModelInputError, match=r"input 'x' has shape \(5, 4\)"):
        _mlflow_input(URI, Schema([TensorSpec(np.dtype("float32"), (-1, 3))]), BATCH)


def test_named_tensors_get_a_dict_with_the_names_matched() -> None:
    schema = Schema(
        [TensorSpec(np.dtype("float32"), (-1, 4), "x"), TensorSpec(np.dtype("int64"), (-1,), "k")]
    )
    batch = {"k": np.arange(5, dtype=np.int32), **BATCH}
    data = _mlflow_input(URI, schema, batch)
    assert sorted(data) == ["k", "x"] and data["k"].dtype == np.int64
    with pytest.raises(ModelInputError) as e:
        _mlflow_input(URI, schema, {"x": BATCH["x"], "j": batch["k"]})
    assert "(missing: k)" in str(e.value) and "(not in the signature: j)" in str(e.value)


def test_columns_come_from_inputs_named_like_them_or_one_2d_input_split() -> None:
    schema = Schema([ColSpec("double", c) for c in "abcd"])
    split = _mlflow_input(URI, schema, BATCH)
    assert list(split.columns) == list("abcd")
    assert (split.dtypes == np.float64).all()
    assert np.array_equal(split["c"].to_numpy(), BATCH["x"][:, 2])
    named = _mlflow_input(URI, schema, {c: BATCH["x"][:, i] for i, c in enumerate("dcba")})
    assert list(named.columns) == list("abcd")  # the schema's order
    assert np.array_equal(named.to_numpy(), split.to_numpy()[:, ::-1])


def test_a_column_mismatch_lists_the_columns_and_the_inputs() -> None:
    schema = Schema([ColSpec("float", c) for c in "abcd"])
    with pytest.raises(ModelInputError) as e:
        _mlflow_input(URI, schema, {"x": np.zeros((5, 3), np.float32)})
    message = str(e.value)
    assert "a (float), b (float), c (float), d (float)" in message
    assert "x (5, 3) float32" in message and "width 4" in message


def test_array_columns_get_one_array_per_sample_that_mlflow_accepts() -> None:
    from mlflow.models.utils import _enforce_schema
    from mlflow.types.schema import Array

    schema = Schema(
        [
            ColSpec(Array("double"), "x"),
            ColSpec(Array(Array("float")), "m"),
            ColSpec("long", "k"),
        ]
    )
    batch = {
        "x": BATCH["x"],  # (5, 4) float32: a row of 4 doubles per sample
        "m": np.arange(60, dtype=np.float32).reshape(5, 3, 4),
        "k": np.arange(5, dtype=np.int32),
    }
    frame = _mlflow_input(URI, schema, batch)
    assert list(frame.columns) == ["x", "m", "k"]
    enforced = _enforce_schema(frame, schema)  # MLflow's own check takes it as it is
    for i in range(5):
        assert np.array_equal(np.asarray(enforced["x"][i]), BATCH["x"][i])
        assert np.asarray(enforced["x"][i]).dtype == np.float64  # cast where safe
        assert np.array_equal(np.asarray(enforced["m"][i]), batch["m"][i])
    assert enforced["k"].tolist() == [0, 1, 2, 3, 4]


def test_an_array_column_given_one_value_per_sample_is_a_clear_error() -> None:
    from mlflow.types.schema import Array

    schema = Schema([ColSpec(Array("double"), "x")])
    with pytest.raises(ModelInputError) as e:
        _mlflow_input(URI, schema, {"x": np.zeros(5, np.float64)})
    assert "for the Array column(s) 'x' one array per sample" in str(e.value)
    assert "x (5,) float64" in str(e.value)


def test_an_object_or_map_column_is_refused_naming_it() -> None:
    from mlflow.types.schema import Map, Object, Property

    for kind in (Object([Property("a", "double")]), Map("double")):
        schema = Schema([ColSpec(kind, "x")])
        with pytest.raises(ModelInputError) as e:
            _mlflow_input(URI, schema, {"x": np.zeros((5, 1))})
        assert "takes column 'x' as" in str(e.value) and "a dict per row" in str(e.value)


def test_outputs_of_every_kind_become_named_arrays() -> None:
    frame = pd.DataFrame({"p": [0.1, 0.2], 3: [1, 2]})
    assert sorted(_checked_outputs(_mlflow_outputs(frame), 2)) == ["3", "p"]
    assert list(_mlflow_outputs(pd.Series([1.0, 2.0], name="score"))) == ["score"]
    assert list(_mlflow_outputs(pd.Series([1.0, 2.0]))) == ["output"]
    assert _mlflow_outputs([[1, 2], [3, 4]])["output"].shape == (2, 2)
    out = _mlflow_outputs({"y": [1.0, 2.0], "z": np.ones((2, 3))})
    assert out["y"].shape == (2,) and out["z"].shape == (2, 3)
    cells = pd.DataFrame({"v": [np.ones(3), np.zeros(3)]})  # a column of arrays
    assert _mlflow_outputs(cells)["v"].shape == (2, 3)
    with pytest.raises(TypeError, match="returned str"):
        _mlflow_outputs("a label")


# --- real models, real checks ----------------------------------------------------------


@dataclass
class Store:
    uri: str
    experiment: str
    root: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One SQLite store for the module's models (creating one takes a while)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; undone after the module, else the
    # `parity` processes of later tests would log to this store.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.create_experiment("flavors", (root / "artifacts").as_uri())
        try:
            yield Store(uri, experiment, root)
        finally:
            mlflow.set_tracking_uri(None)


def logged(store: Store, log: Callable[[], Any]) -> str:
    """The `runs:/` URI of the model `log()` logs as `model` in a new run."""
    with mlflow.start_run(experiment_id=store.experiment) as run:
        log()
    return f"runs:/{run.info.run_id}/model"


def pipeline(frame: bool) -> Any:
    """A scaler and a logistic regression fitted on 4 features (columns a-d if `frame`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    data = pd.DataFrame(x, columns=list("abcd")) if frame else x
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(data, y), data


def log_sklearn(model: Any, **kw: Any) -> Callable[[], Any]:
    # pip_requirements: inferring them loads the model in a subprocess, a minute for nothing
    return lambda: mlflow.sklearn.log_model(
        model, name="model", pyfunc_predict_fn="predict_proba", pip_requirements=[], **kw
    )


def check(
    store: Store | None,
    tmp_path: Path,
    model_uri: str,
    arrays: str,
    python: Path | None = None,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    """`parity check` of `model_uri` on two local environments with the input `arrays`
    (TOML tables): the process, its JSON report and its kept work folder. The environments
    run `python` (default: this interpreter) with `store` as the tracking store, if any."""
    interpreter = f'python = "{python}"\n' if python else ""
    config = tmp_path / "parity.toml"
    config.write_text(
        f'[model]\nadapter = "mlflow:{model_uri}"\n\n'
        "[inputs]\nseed = 7\ncount = 12\nbatch_size = 5\n\n"
        + textwrap.dedent(arrays)
        + f'\n[environments.train]\nbackend = "local"\n{interpreter}'
        + f'\n[environments.infer]\nbackend = "local"\n{interpreter}'
        + "\n[run]\ntimeout = 600\n"
        + (f'\n[run.env]\nMLFLOW_TRACKING_URI = "{store.uri}"\n' if store else "")
    )
    work, out = tmp_path / "work", tmp_path / "report.json"
    result = run_cli(
        "parity", "check", "--config", str(config), "--json", str(out), "--workdir", str(work)
    )
    report = json.loads(out.read_text())
    assert_valid_report(report)
    return result, report, work


def replayed(work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inputs the check generated and the reference environment's outputs."""
    with np.load(work / "inputs" / "inputs.npz", allow_pickle=False) as f:
        inputs = {k: f[k] for k in f.files}
    with np.load(work / "train" / "outputs.npz", allow_pickle=False) as f:
        outputs = {k: f[k] for k in f.files}
    return inputs, outputs


def passed(result: subprocess.CompletedProcess[str], report: dict[str, Any]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["verdict"] == "pass"


X4 = '[inputs.arrays.x]\nshape = [4]\ndtype = "float32"\n'


@pytest.mark.slow
def test_sklearn_without_a_signature_gets_the_array(store: Store, tmp_path: Path) -> None:
    model, _ = pipeline(frame=False)
    uri = logged(store, log_sklearn(model))
    result, report, work = check(store, tmp_path, uri, X4)
    passed(result, report)
    inputs, outputs = replayed(work)
    assert list(outputs) == ["output"] and outputs["output"].shape == (12, 2)
    np.testing.assert_allclose(outputs["output"], model.predict_proba(inputs["x"]), rtol=1e-6)


@pytest.mark.slow
def test_sklearn_with_a_dataframe_example_gets_its_columns(store: Store, tmp_path: Path) -> None:
    model, data = pipeline(frame=True)
    uri = logged(store, log_sklearn(model, input_example=data.head(3)))
    # one 2-D input of the schema's width is split into its columns, in order
    result, report, work = check(store, tmp_path, uri, X4)
    passed(result, report)
    inputs, outputs = replayed(work)
    direct = model.predict_proba(pd.DataFrame(inputs["x"], columns=list("abcd")))
    np.testing.assert_allclose(outputs["output"], direct, rtol=1e-6)


@pytest.mark.slow
def test_sklearn_columns_from_inputs_named_like_them(store: Store, tmp_path: Path) -> None:
    model, data = pipeline(frame=True)
    uri = logged(store, log_sklearn(model, input_example=data.head(3)))
    # float64 inputs are cast to the schema's float (float32) columns
    arrays = "".join(f'[inputs.arrays.{c}]\nshape = []\ndtype = "float64"\n\n' for c in "dcba")
    result, report, work = check(store, tmp_path, uri, arrays)
    passed(result, report)
    inputs, outputs = replayed(work)
    frame = pd.DataFrame({c: inputs[c].astype(np.float32) for c in "abcd"})
    np.testing.assert_allclose(outputs["output"], model.predict_proba(frame), rtol=1e-6)


@pytest.mark.slow
def test_sklearn_with_a_numpy_example_gets_the_tensor(store: Store, tmp_path: Path) -> None:
    model, data = pipeline(frame=False)
    uri = logged(store, log_sklearn(model, input_example=data[:3]))
    assert mlflow.pyfunc.load_model(uri).metadata.get_input_schema().is_tensor_spec()
    result, report, work = check(store, tmp_path, uri, X4)
    passed(result, report)
    inputs, outputs = replayed(work)
    np.testing.assert_allclose(outputs["output"], model.predict_proba(inputs["x"]), rtol=1e-6)


SAVE_TORCH = """\
import sys

import mlflow.pytorch
import numpy as np
import torch

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh()).eval()
# pip_requirements: inferring them loads the model in one more process (torch, MLflow)
example = np.zeros((2, 4), np.float32)
mlflow.pytorch.save_model(net, sys.argv[1], input_example=example, pip_requirements=[])
"""

RUN_TORCH = """\
import sys

import mlflow.pytorch
import numpy as np
import torch

net = mlflow.pytorch.load_model(sys.argv[1])
with np.load(sys.argv[2], allow_pickle=False) as f:
    x = torch.from_numpy(f["x"])
with torch.no_grad():
    np.save(sys.argv[3], net(x).numpy())
"""


@pytest.fixture(scope="module")
def torch_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with torch 2.13.0 (the CPU build, from the local wheel folder) and MLflow: the
    suite's own venv has no torch."""
    import os
    import shutil
    import sys

    import scipy

    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert uv, "uv is the project's own dependency"
    venv = tmp_path_factory.mktemp("torch") / "venv"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    wheels = [a for a in ("--find-links", "/opt/wheels") if Path("/opt/wheels").is_dir()]
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            *wheels,
            "torch==2.13.0",
            f"mlflow-skinny=={mlflow.__version__}",
            f"numpy=={np.__version__}",
            f"pandas=={pd.__version__}",
            f"scipy=={scipy.__version__}",  # MLflow's signature inference imports it
        ],
        check=True,
        env={**os.environ, "UV_INDEX_STRATEGY": "unsafe-best-match"},
        timeout=1200,
    )
    python = venv / "bin" / "python"
    # uv installs without bytecode here, and with PYTHONDONTWRITEBYTECODE=1 (set in CI) every
    # process of the test (the save, the two replays, the direct run) compiled torch and
    # MLflow again as it imported them: most of the test's time. One save with bytecode
    # written compiles what they import, once (cheaper than compiling all of the venv).
    warm = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    model = venv.parent / "compiled-by-saving"
    subprocess.run([str(python), "-c", SAVE_TORCH, str(model)], check=True, env=warm, timeout=600)
    return python


@pytest.mark.slow
def test_pytorch_module_with_a_tensor_signature(torch_python: Path, tmp_path: Path) -> None:
    """A torch module saved by mlflow.pytorch (inside a venv with torch) gets the array its
    tensor signature names, and its outputs are the module's own."""
    model = tmp_path / "net"
    subprocess.run([str(torch_python), "-c", SAVE_TORCH, str(model)], check=True, timeout=600)
    result, report, work = check(None, tmp_path, str(model), X4, python=torch_python)
    passed(result, report)
    _, outputs = replayed(work)
    assert list(outputs) == ["output"] and outputs["output"].shape == (12, 3)
    direct = tmp_path / "direct.npy"
    subprocess.run(
        [
            str(torch_python),
            "-c",
            RUN_TORCH,
            str(model),
            str(work / "inputs" / "inputs.npz"),
            str(direct),
        ],
        check=True,
        timeout=600,
    )
    np.testing.assert_allclose(outputs["output"], np.load(direct), rtol=1e-6)


TWO_TENSORS = """\
import mlflow
import numpy as np


class Combine(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        x, k = model_input["x"], model_input["k"]
        return {"weighted": x * k[:, None].astype(np.float32), "total": x.sum(axis=1)}


mlflow.models.set_model(Combine())
"""

TABLE_OUT = """\
import mlflow
import numpy as np
import pandas as pd


class Summary(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input)
        return pd.DataFrame({"mean": x.mean(axis=1), "max": x.max(axis=1)})


mlflow.models.set_model(Summary())
"""


def log_code(store: Store, code: str, name: str, example: Any) -> str:
    path = store.root / f"{name}.py"
    path.write_text(code)
    signature = infer_signature(example)
    return logged(
        store,
        lambda: mlflow.pyfunc.log_model(
            name="model", python_model=str(path), signature=signature, pip_requirements=[]
        ),
    )


@pytest.mark.slow
def test_pyfunc_with_named_tensors_gets_a_dict_and_returns_one(
    store: Store, tmp_path: Path
) -> None:
    example = {"x": np.zeros((2, 4), np.float32), "k": np.zeros(2, np.int64)}
    uri = log_code(store, TWO_TENSORS, "combine", example)
    registered = mlflow.register_model(uri, "combine")  # and checked through the registry
    arrays = X4 + '\n[inputs.arrays.k]\nshape = []\ndtype = "int64"\nlow = 0\nhigh = 5\n'
    result, report, work = check(store, tmp_path, f"models:/combine/{registered.version}", arrays)
    passed(result, report)
    inputs, outputs = replayed(work)
    assert sorted(outputs) == ["total", "weighted"]
    np.testing.assert_allclose(outputs["weighted"], inputs["x"] * inputs["k"][:, None], rtol=1e-6)
    np.testing.assert_allclose(outputs["total"], inputs["x"].sum(axis=1), rtol=1e-6)


ROW_SUMS = """\
import mlflow
import numpy as np


class RowSums(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return {"sums": np.stack([np.asarray(r).sum(axis=-1) for r in model_input["x"]])}


mlflow.models.set_model(RowSums())
"""


@pytest.mark.slow
def test_pyfunc_with_an_array_column_gets_one_array_per_sample(
    store: Store, tmp_path: Path
) -> None:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array

    path = store.root / "rowsums.py"
    path.write_text(ROW_SUMS)
    signature = ModelSignature(inputs=Schema([ColSpec(Array("double"), "x")]))
    uri = logged(
        store,
        lambda: mlflow.pyfunc.log_model(
            name="model", python_model=str(path), signature=signature, pip_requirements=[]
        ),
    )
    result, report, work = check(store, tmp_path, uri, X4)
    passed(result, report)
    inputs, outputs = replayed(work)
    np.testing.assert_allclose(outputs["sums"], inputs["x"].astype(np.float64).sum(axis=1))


@pytest.mark.slow
def test_pyfunc_returning_a_dataframe_gives_one_output_per_column(
    store: Store, tmp_path: Path
) -> None:
    uri = log_code(store, TABLE_OUT, "summary", np.zeros((2, 4), np.float32))
    result, report, work = check(store, tmp_path, uri, X4)
    passed(result, report)
    assert sorted(o["name"] for o in report["outputs"]) == ["max", "mean"]
    inputs, outputs = replayed(work)
    np.testing.assert_allclose(outputs["mean"], inputs["x"].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(outputs["max"], inputs["x"].max(axis=1))


def refused(result: subprocess.CompletedProcess[str], report: dict[str, Any]) -> str:
    """The one clear error of a model that cannot take its input: exit 3 (the model
    failed in its environment), no traceback, said by the side that failed first (the
    other fails the same way, or is stopped by that failure and says so)."""
    assert result.returncode == 3, result.stdout + result.stderr
    assert report["verdict"] == "error" and len(report["errors"]) == 2
    errors = failures(report["errors"])
    assert errors and all("ModelInputError" in e for e in errors), report["errors"]
    error = errors[0]
    assert error.split(": ", 1)[1].startswith("the model failed in the worker (predict): ")
    assert "Traceback" not in result.stdout and "During handling" not in result.stdout
    return str(error)


@pytest.mark.slow
def test_several_inputs_without_a_signature_is_one_clear_error(
    store: Store, tmp_path: Path
) -> None:
    model, _ = pipeline(frame=False)
    uri = logged(store, log_sklearn(model))
    arrays = X4 + '\n[inputs.arrays.y]\nshape = [2]\ndtype = "float32"\n'
    error = refused(*check(store, tmp_path, uri, arrays)[:2])
    assert "has no signature" in error and "x (5, 4) float32, y (5, 2) float32" in error


@pytest.mark.slow
def test_a_column_schema_mismatch_is_one_clear_error(store: Store, tmp_path: Path) -> None:
    model, data = pipeline(frame=True)
    uri = logged(store, log_sklearn(model, input_example=data.head(3)))
    error = refused(
        *check(store, tmp_path, uri, '[inputs.arrays.x]\nshape = [3]\ndtype = "float32"\n')[:2]
    )
    assert "a (float), b (float), c (float), d (float)" in error
    assert "x (5, 3) float32" in error


COUNTER = """\
import mlflow
import numpy as np


class Counter(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input["k"].to_numpy() * 2


mlflow.models.set_model(Counter())
"""


def test_a_refusal_by_mlflows_schema_enforcement_is_said_once(tmp_path: Path) -> None:
    from parity.runs.worker import _fail, _mlflow_predict

    code = tmp_path / "counter.py"
    code.write_text(COUNTER)
    signature = mlflow.models.ModelSignature(inputs=Schema([ColSpec("long", "k")]))
    path = tmp_path / "model"
    mlflow.pyfunc.save_model(
        str(path), python_model=str(code), signature=signature, pip_requirements=[]
    )
    predict = _mlflow_predict(str(path))
    out = predict({"k": np.arange(5, dtype=np.int32)})  # int32 is cast to the long column
    assert np.array_equal(out["output"], np.arange(5) * 2)
    with pytest.raises(ModelInputError) as e:
        predict({"k": np.full(5, 0.5, np.float32)})  # no safe cast: MLflow refuses it
    message = str(e.value)
    assert message.startswith(f"the MLflow model {path} refused its input: ")
    assert "k (long)" in message and "a table with columns k (float32)" in message
    assert "Failed to enforce schema" not in message  # MLflow's wrapper, with the whole batch
    assert e.value.__suppress_context__  # one error, not MLflow's two chained tracebacks
    try:
        raise e.value
    except ModelInputError as exc:
        _fail(str(tmp_path), "predict", exc)
    written = json.loads((tmp_path / "error.json").read_text())
    assert written["type"] == "ModelInputError" and written["traceback"] == ""
