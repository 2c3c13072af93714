"""What an MLflow model says about itself, read without loading it.

Only text files of the model's folder are read: `MLmodel` (YAML, safe loader), the input
example (JSON), `requirements.txt`, `python_env.yaml` and `conda.yaml`. The model itself
(a pickle, skops, a torch file) is never opened, so nothing is unpickled. A `runs:/` or
`models:/` URI (or any URI MLflow resolves) has those files alone downloaded by MLflow
into a temporary folder; a local folder is read where it is.

The signature gives the input arrays' names, per-sample shapes and dtypes; the input
example their value ranges (`widen`). What parity's seeded inputs cannot express (string,
boolean, binary or datetime columns, objects and maps, an axis whose length neither the
signature nor the example gives, a name that is not an identifier) is refused with a
`ConfigError` naming it (exit 2).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parity.init.sources import (
    Dependencies,
    InitError,
    load_yaml,
    read_environment,
    read_requirements,
)

# The files read, and how large each may be (the example is data, the rest small text).
MODEL_FILES = ("MLmodel", "requirements.txt", "python_env.yaml", "conda.yaml")
MAX_TEXT_BYTES = 1 << 20
MAX_EXAMPLE_BYTES = 64 << 20
# MLflow's error codes for a run, model, version or artifact that is not there
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")
_IDENTIFIER = re.compile(r"^[A-Za-z_][\w-]*$")
# MLflow's column types and tensor dtypes as parity's input dtypes.
COLUMN_DTYPES = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32"}
TENSOR_DTYPES = ("uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")


@dataclass(frozen=True)
class ArrayPlan:
    """One input array parity.toml will declare: per-sample shape, dtype, and the range
    its values are drawn from (None: the generator's default)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    low: float | None = None
    high: float | None = None
    generator: str = "uniform"
    note: str | None = None  # where the range came from, as a comment


@dataclass
class MlflowModel:
    """What `parity init` takes from an MLflow model."""

    uri: str
    arrays: list[ArrayPlan]
    dependencies: Dependencies
    flavor: str | None
    notes: list[str]
    mlflow_version: str | None = None  # the MLflow that saved it (MLmodel's mlflow_version)


def is_local(uri: str) -> bool:
    """Whether `uri` is a folder path rather than a URI MLflow resolves (runs:/, models:/,
    s3://, file:// ...)."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) is None


def read_model(
    uri: str, *, folder: Path | None = None, tracking_uri: str | None = None
) -> MlflowModel:
    """Read the MLflow model at `uri` (a local folder is `folder`, already resolved; a URI
    is read from `tracking_uri`, default MLflow's: $MLFLOW_TRACKING_URI)."""
    with _model_files(uri, folder, tracking_uri) as where:
        mlmodel_path = where / "MLmodel"
        if not mlmodel_path.is_file():
            raise InitError(
                None, "--mlflow-model", f"{uri} has no MLmodel file: not an MLflow model"
            )
        _check_size(mlmodel_path, MAX_TEXT_BYTES)
        mlmodel = load_yaml(mlmodel_path)
        if not isinstance(mlmodel, dict):
            raise InitError(mlmodel_path, None, "not an MLmodel file (not a mapping)")
        notes: list[str] = []
        signature = _signature(mlmodel, mlmodel_path)
        example = _example(mlmodel, where, uri)
        if signature is None and example is None:
            raise InitError(
                None,
                "--mlflow-model",
                f"{uri} has neither a signature nor an input example, so its inputs are "
                "unknown: log it with input_example=... (or give --input NAME=DTYPE[SHAPE])",
            )
        arrays = _arrays(uri, signature, example, notes)
        deps = _dependencies(where, uri, notes)
        flavors = mlmodel.get("flavors")
        flavor = None
        if isinstance(flavors, dict):
            flavor = next((str(f) for f in flavors if f != "python_function"), None)
        saved_by = mlmodel.get("mlflow_version")
        saved = str(saved_by) if re.match(r"^\d+(\.\d+)*$", str(saved_by)) else None
        return MlflowModel(uri, arrays, deps, flavor, notes, saved)


@contextmanager
def _model_files(uri: str, folder: Path | None, tracking_uri: str | None) -> Iterator[Path]:
    if folder is not None:
        if not folder.is_dir():
            raise InitError(None, "--mlflow-model", f"{uri}: no such folder")
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="parity-init-mlflow-") as tmp:
        yield _download(uri, Path(tmp), tracking_uri)


def _download(uri: str, into: Path, tracking_uri: str | None) -> Path:
    """The model's text files alone, downloaded by MLflow into `into`."""
    # MLflow draws a progress bar per file on stderr: these are a few small files
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException
    except ImportError:
        raise InitError(
            None,
            "--mlflow-model",
            f"{uri}: reading a model URI needs MLflow "
            "(pip install 'envlock-parity[mlflow]'), or give the model's local folder",
        ) from None
    base = uri.rstrip("/")
    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/MLmodel", dst_path=str(into), tracking_uri=tracking_uri
        )
    except MlflowException as e:
        if e.error_code not in _NOT_FOUND:  # the store failed or could not be reached
            raise _unreachable(uri, e) from None
        raise InitError(
            None, "--mlflow-model", f"MLflow cannot find {uri}: {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:  # the store unreachable: an infrastructure error
        raise _unreachable(uri, e) from None
    mlmodel = into / "MLmodel"
    if not mlmodel.is_file():  # MLflow may nest it under the artifact's path
        found = next(iter(into.rglob("MLmodel")), None)
        if found is None:
            raise InitError(None, "--mlflow-model", f"{uri} has no MLmodel file")
        shutil.move(str(found), mlmodel)
    data = load_yaml(mlmodel)
    info = data.get("saved_input_example_info") if isinstance(data, dict) else None
    wanted = list(MODEL_FILES[1:])
    if isinstance(info, dict) and isinstance(info.get("artifact_path"), str):
        wanted.append(info["artifact_path"])
    for name in wanted:
        if "/" in name or name.startswith("."):
            continue
        try:
            got = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{base}/{name}", dst_path=str(into), tracking_uri=tracking_uri
            )
        except MlflowException:
            continue  # files a model may lack
        if Path(got).resolve() != (into / name).resolve() and Path(got).is_file():
            shutil.move(got, into / name)
    return into


def _unreachable(uri: str, e: Exception) -> Exception:
    from parity.errors import ParityError

    first = (str(e).strip().splitlines() or [""])[0]
    error = ParityError(f"could not read {uri} from MLflow: {type(e).__name__}: {first}")
    error.exit_code = 3
    return error


def _check_size(path: Path, limit: int) -> None:
    size = path.stat().st_size
    if size > limit:
        raise InitError(path, None, f"{size} bytes, more than the {limit} read")


def _signature(mlmodel: dict[str, Any], path: Path) -> list[dict[str, Any]] | None:
    signature = mlmodel.get("signature")
    if not isinstance(signature, dict) or signature.get("inputs") in (None, ""):
        return None
    raw = signature["inputs"]
    try:
        inputs = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        raise InitError(path, "signature.inputs", f"not valid JSON: {e}") from None
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs) or not inputs:
        raise InitError(path, "signature.inputs", "must be a non-empty list of specs")
    return inputs


def _example(mlmodel: dict[str, Any], where: Path, uri: str) -> Any:
    info = mlmodel.get("saved_input_example_info")
    if not isinstance(info, dict) or not isinstance(info.get("artifact_path"), str):
        return None
    path = where / info["artifact_path"]
    if "/" in info["artifact_path"] or not path.is_file():
        return None
    _check_size(path, MAX_EXAMPLE_BYTES)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InitError(path, None, f"the input example is not valid JSON: {e}") from None
    return _example_columns(data, info)


def _example_columns(data: Any, info: dict[str, Any]) -> dict[str | None, Any] | None:
    """The example as name -> nested lists (None: the one unnamed input)."""
    if info.get("type") == "dataframe" and isinstance(data, dict):
        columns, rows = data.get("columns"), data.get("data")
        if isinstance(columns, list) and isinstance(rows, list):
            out: dict[str | None, Any] = {str(c): [] for c in columns}
            for row in rows:
                if isinstance(row, list) and len(row) == len(columns):
                    for c, v in zip(columns, row, strict=True):
                        out[str(c)].append(v)
            return out
        return None
    if isinstance(data, dict) and "inputs" in data:
        data = data["inputs"]
    if isinstance(data, dict):
        return {str(k): v for k, v in data.items()}
    if isinstance(data, list):
        return {None: data}
    return None


def _arrays(
    uri: str, signature: list[dict[str, Any]] | None, example: Any, notes: list[str]
) -> list[ArrayPlan]:
    if signature is None:
        notes.append(f"{uri} has no signature: the inputs follow its input example")
        assert example is not None
        return [_from_example(name, values) for name, values in example.items()]
    tensors = [s for s in signature if s.get("type") == "tensor"]
    if tensors and len(tensors) != len(signature):
        raise InitError(None, "--mlflow-model", f"{uri}: a signature mixing tensors and columns")
    if tensors:
        return [_tensor(uri, s, example) for s in tensors]
    return _columns(uri, signature, example, notes)


def _values(example: dict[str | None, Any] | None, name: str | None) -> Any:
    if example is None:
        return None
    if name in example:
        return example[name]
    if len(example) == 1:
        return next(iter(example.values()))
    return None


def _tensor(uri: str, spec: dict[str, Any], example: Any) -> ArrayPlan:
    tensor = spec.get("tensor-spec", {})
    name = spec.get("name")
    dtype = str(tensor.get("dtype"))
    shape = tensor.get("shape")
    label = name or "the model's input"
    if dtype not in TENSOR_DTYPES:
        raise InitError(
            None,
            "--mlflow-model",
            f"{uri}: {label} is a {dtype} tensor; parity's seeded "
            f"inputs are {', '.join(TENSOR_DTYPES)}",
        )
    if not isinstance(shape, list) or not shape:
        raise InitError(None, "--mlflow-model", f"{uri}: {label} has no shape in its signature")
    values = _values(example, name)
    seen = _shape_of(values)
    per_sample = list(shape[1:])  # the first axis is the batch
    for i, n in enumerate(per_sample):
        if isinstance(n, int) and n > 0:
            continue
        if seen is not None and len(seen) == len(shape) and seen[i + 1] > 0:
            per_sample[i] = seen[i + 1]
        else:
            raise InitError(
                None,
                "--mlflow-model",
                f"{uri}: {label}'s axis {i + 1} has no fixed length "
                f"(shape {shape}) and no input example gives one: declare it with --input",
            )
    return _ranged(_input_name(uri, name, "input"), tuple(per_sample), dtype, values)


def _columns(
    uri: str, signature: list[dict[str, Any]], example: Any, notes: list[str]
) -> list[ArrayPlan]:
    named = [s.get("name") for s in signature]
    if not all(isinstance(n, str) and _IDENTIFIER.match(n) for n in named):
        return [_one_table(uri, signature, example, notes)]
    plans = []
    for spec in signature:
        name, kind = spec.get("name"), spec.get("type")
        if not isinstance(name, str):
            raise InitError(
                None, "--mlflow-model", f"{uri}: a column without a name in its signature"
            )
        values = _values(example, name) if example and name in example else None
        if kind in COLUMN_DTYPES:
            plans.append(_ranged(_input_name(uri, name, name), (), COLUMN_DTYPES[kind], values))
        elif kind == "array":
            items = spec.get("items", {})
            dtype = COLUMN_DTYPES.get(str(items.get("type"))) if isinstance(items, dict) else None
            seen = _shape_of(values)
            if dtype is None or seen is None or len(seen) < 2:
                raise InitError(
                    None,
                    "--mlflow-model",
                    f"{uri}: column {name!r} is an array "
                    f"({json.dumps(items)}) whose element type or length parity cannot tell"
                    + ("" if seen else " (no input example gives its length)"),
                )
            plans.append(_ranged(_input_name(uri, name, name), tuple(seen[1:]), dtype, values))
        else:
            raise InitError(
                None,
                "--mlflow-model",
                f"{uri}: column {name!r} is of type {kind!r}; parity's "
                "seeded inputs are numbers (double, float, long, integer, arrays of them)",
            )
    notes.append(f"{uri}: one input per column of its signature ({len(plans)})")
    return plans


def _one_table(
    uri: str, signature: list[dict[str, Any]], example: Any, notes: list[str]
) -> ArrayPlan:
    """Columns some of whose names cannot name an input array ("sepal length (cm)"): one
    2-D input as wide as the table, which the worker splits into the columns in order. It
    needs one kind of number in every column (floats, or integers), so that each column
    takes its share of the one array."""
    kinds = [s.get("type") for s in signature]
    odd = next((s for s in signature if s.get("type") not in COLUMN_DTYPES), None)
    floats = all(k in ("double", "float") for k in kinds)
    if odd is not None:
        raise InitError(
            None,
            "--mlflow-model",
            f"{uri}: column {odd.get('name')!r} is of type {odd.get('type')!r}; parity's "
            "seeded inputs are numbers (double, float, long, integer)",
        )
    if not (floats or all(k in ("long", "integer") for k in kinds)):
        bad = next(
            str(s.get("name")) for s in signature if not _IDENTIFIER.match(str(s.get("name")))
        )
        raise InitError(
            None,
            "--mlflow-model",
            f"{uri}: column {bad!r} cannot name an input array, and the columns mix floats "
            "and integers, which one input split into the columns cannot hold",
        )
    dtype = ("float64" if "double" in kinds else "float32") if floats else "int64"
    values = None
    if isinstance(example, dict) and all(s.get("name") in example for s in signature):
        values = [example[s.get("name")] for s in signature]
    plan = _ranged("x", (len(signature),), dtype, values)
    notes.append(
        f"{uri}: its column names are not identifiers, so one input x of "
        f"{len(signature)} columns stands for them (split into the columns in order; one "
        "range for them all: declare each column's with --input to differ)"
    )
    return plan


def _input_name(uri: str, name: str | None, default: str) -> str:
    chosen = name or default
    if not _IDENTIFIER.match(chosen):
        raise InitError(
            None,
            "--mlflow-model",
            f"{uri}: its input {chosen!r} cannot name an input array "
            "(parity's names are identifiers)",
        )
    return chosen


def _from_example(name: str | None, values: Any) -> ArrayPlan:
    import numpy as np

    try:
        array = np.asarray(values)
    except ValueError:
        array = np.asarray([], dtype=object)
    if array.dtype.kind not in "iuf" or array.ndim == 0:
        raise InitError(
            None, "--mlflow-model", f"input example {name or ''}: not an array of numbers"
        )
    dtype = "float64" if array.dtype.kind == "f" else "int64"
    return _ranged(name or "input", tuple(array.shape[1:]), dtype, values)


def _shape_of(values: Any) -> tuple[int, ...] | None:
    if values is None:
        return None
    import numpy as np

    try:
        array = np.asarray(values)
    except ValueError:  # ragged
        return None
    return tuple(array.shape) if array.dtype.kind in "iufb" else None


def _ranged(name: str, shape: tuple[int, ...], dtype: str, values: Any) -> ArrayPlan:
    """The plan for one array, its range widened from the example's values (`widen`)."""
    import numpy as np

    if values is None:
        return ArrayPlan(name, shape, dtype, note="no input example: the default range")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        return ArrayPlan(name, shape, dtype, note="the example's values are not numbers")
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return ArrayPlan(name, shape, dtype, note="the example has no finite value")
    lo, hi = float(finite.min()), float(finite.max())
    low, high = widen(lo, hi, integer=dtype.startswith(("int", "uint")))
    return ArrayPlan(name, shape, dtype, low, high, note=f"the example spans {lo:.6g} to {hi:.6g}")


def widen(lo: float, hi: float, *, integer: bool) -> tuple[float, float]:
    """The range inputs are drawn from, given the example's smallest and largest value.

    Integers keep the example's range (they are often codes or counts: a value never seen
    may be invalid), one wider when the example holds one value. Floats get a tenth of the
    span on each side (of the value's size, or 1, when the example holds one value), but a
    range the example keeps within [0, 1] stays there, and one that is never negative stays
    so: pixel intensities and probabilities keep their meaning."""
    if integer:
        return (lo, hi) if hi > lo else (lo, lo + 1)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    low, high = lo - span / 10, hi + span / 10
    if lo >= 0:
        low = max(low, 0.0)
    if lo >= 0 and hi <= 1:
        high = min(high, 1.0)
    if low == high:
        high = low + 1.0
    return _round(low, floor=True), _round(high, floor=False)


def _round(x: float, *, floor: bool) -> float:
    """`x` to 4 significant digits, outward, so the config reads well."""
    if x == 0 or not math.isfinite(x):
        return x
    digits = 3 - math.floor(math.log10(abs(x)))
    scale = 10.0**digits
    value = (math.floor if floor else math.ceil)(x * scale) / scale
    return float(f"{value:.6g}")


def _dependencies(where: Path, uri: str, notes: list[str]) -> Dependencies:
    """The model's own requirements: requirements.txt, else conda.yaml's."""
    deps = Dependencies()
    requirements = where / "requirements.txt"
    conda = where / "conda.yaml"
    if requirements.is_file():
        _check_size(requirements, MAX_TEXT_BYTES)
        read_requirements(requirements, deps, "main")
    elif conda.is_file():
        _check_size(conda, MAX_TEXT_BYTES)
        read_environment(conda, deps, drop=[])
    else:
        raise InitError(
            None,
            "--mlflow-model",
            f"{uri} has neither requirements.txt nor conda.yaml: its "
            "dependencies are unknown; give --requirements or --pyproject",
        )
    python_env = where / "python_env.yaml"
    if python_env.is_file():
        _check_size(python_env, MAX_TEXT_BYTES)
        data = load_yaml(python_env)
        version = data.get("python") if isinstance(data, dict) else None
        if isinstance(version, str) and re.match(r"^\d+\.\d+", version):
            major_minor = ".".join(version.split(".")[:2])
            deps.requires_python = f"=={major_minor}.*"
    deps.sources = [uri]
    notes.append(
        f"{uri}: the lock spec is the model's own requirements"
        + (" (requirements.txt)" if requirements.is_file() else " (conda.yaml)")
    )
    return deps
