"""The program parity runs inside each environment: job file in, outputs and fingerprint out.

    python worker.py JOB.json

It needs only the standard library and numpy, and it is run by path (never imported from
the parity package), so the environment under test is exactly what its lock installed.
It writes into the job's output folder:

    outputs.npz        one array per model output, (count, ...) each; plain numeric dtypes
    fingerprint.json   the environment's fingerprint (envlock's probe), taken after the run;
                       with `static_paths` in the job, only its sections about this
                       process (the host has the rest, see `_fingerprint`)
    result.json        status, timings and the outputs' shapes and dtypes
    error.json         instead of outputs, when the model or the job failed
    warnings.json      every Python warning and log record of level WARNING or above while
                       the model loaded and predicted, counted per distinct (category or
                       logger, message): also when the model failed (see `_Caught`)

With `"mode": "stages"` the job's inputs hold one sample, which runs through the adapter
module's stages (`stages()`: `(name, fn)` or `(name, fn, model)` tuples, the model a torch
module or a scikit-learn Pipeline, see `run_stages`), and the worker writes instead of
outputs and fingerprint:

    stages.npz         one array per captured value: each stage's result and, for a stage
                       with a torch module, each submodule's output (with a Pipeline, each
                       step's output), in execution order
    stages.json        what each array is: stage, kind (stage, module or step), module or
                       step name

and `warnings.json`, as in predict mode.

With `"mode": "serve"` (for `parity search`) the worker loads the model once, writes
`fingerprint.json`, then answers requests until the host writes the `stop` file: for each
`request-<n>.npz` (n = 1, 2, ...) that appears whole in the `requests` folder it writes

    response-<n>.npz   the outputs for that request's batch, as outputs.npz holds them
    error-<n>.json     instead, when the model raised on it (the worker serves on)

and `warnings.json`, rewritten after loading and after each request that warned.

It exits 0 on `stop` (at once, even inside a prediction), 2 when no request comes for
`inputs_wait` seconds.

Exit status: 0 done, 1 the model raised, 2 the job itself is unusable.

With `host_pid` in the job (the host's process, when the worker can see it: not in a
container) and the worker leading a process group of its own (as the host starts it), the
worker forks a watchdog before the model loads: when the host or the worker is gone, killed
by -9 too, it kills the whole group, so nothing the model started outlives the host.
"""

from __future__ import annotations

import os
import sys

# Run by path, Python puts this file's folder first on sys.path: the parity package's own
# modules (config, inputs, html, ...) would then shadow the model's imports of the same
# names (stdlib `html` included). The model must see its environment, not this folder.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import contextlib
import importlib
import importlib.util
import json
import time
import traceback
from typing import Any

JOB_SCHEMA = 1
ALLOWED_KINDS = "biufc"  # bool, signed/unsigned int, float, complex: nothing that pickles


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


class ModelInputError(ValueError):
    """The batch cannot be given to the model in the form its flavor and signature take."""


def _fail(outdir: str, stage: str, exc: BaseException, name: str = "error.json") -> None:
    _write_json(
        os.path.join(outdir, name),
        {
            "stage": stage,
            "type": type(exc).__name__,
            "message": str(exc),
            # The input not fitting the model is said in full by the message.
            "traceback": "" if isinstance(exc, ModelInputError) else traceback.format_exc(),
        },
    )


WARNINGS_FILE = "warnings.json"
WARNING_ENTRIES = 200  # distinct warnings kept; more are counted in `dropped`
WARNING_MESSAGE = 2000  # characters of a message kept


class _Caught:
    """Every Python warning and every log record of level WARNING or above while it is
    active (`with caught:`; it can be entered again), counted per distinct (category or
    logger, message), and written to `warnings.json` (`write`).

    Warnings are all shown (`simplefilter("always")`), so one that repeats per batch is
    counted each time, not lost to the default once-per-place filter; each distinct one
    still goes to stderr, once, as Python would print it (a warning per sample must not
    flood the worker's log). Log records are caught where every logger hands
    them to its handlers (`Logger.callHandlers`), not by a handler on the root logger: a
    logger that does not propagate (MLflow's own) would never reach one. Its handlers,
    and Python's last-resort printing to stderr, run as before."""

    def __init__(self, path: str, limit: int = WARNING_ENTRIES) -> None:
        self.path = path
        self.limit = limit
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}
        self.dropped = 0  # occurrences of distinct warnings past the limit
        self._written = -1
        self._seen = 0
        self._saved: list[Any] = []
        self._filters: list[Any] | None = None  # the filters as the last exit left them

    def __enter__(self) -> _Caught:
        import logging
        import warnings

        manager = warnings.catch_warnings()
        manager.__enter__()
        if self._filters is None:
            warnings.simplefilter("always")
        else:
            # Entered again (loading, then predicting): the filters a library set while
            # the model loaded (an "ignore" of its own) still hold, as they would unwatched.
            warnings.filters = list(self._filters)
            getattr(warnings, "_filters_mutated", lambda: None)()  # as catch_warnings does
        shown = warnings.showwarning

        def showwarning(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: Any = None,
            line: str | None = None,
        ) -> None:
            if self._warning(message, category, filename, lineno):
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        handlers = logging.Logger.callHandlers
        caught = self

        def call_handlers(logger: logging.Logger, record: logging.LogRecord) -> None:
            # py.warnings: a warning that logging.captureWarnings routes here, counted already
            if record.levelno >= logging.WARNING and record.name != "py.warnings":
                caught._record(record)
            handlers(logger, record)

        logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign,assignment]
        self._saved = [manager, handlers]
        return self

    def __exit__(self, *exc: object) -> None:
        import logging
        import warnings

        manager, handlers = self._saved
        logging.Logger.callHandlers = handlers  # type: ignore[method-assign]
        self._filters = list(warnings.filters)
        manager.__exit__(*exc)

    def _warning(self, message: Any, category: Any, filename: str, lineno: int) -> bool:
        """Count one warning; whether it is the first of its kind (to print)."""
        cls = category if isinstance(category, type) else type(message)
        try:
            text = str(message)
        except Exception:  # a warning whose str() fails: that it came is still evidence
            text = f"(a {cls.__name__} whose message could not be read)"
        bases = [_qualified(c) for c in cls.__mro__[1:] if issubclass(c, Warning)]
        return self._add(_qualified(cls), text, f"{filename}:{lineno}", None, bases)

    def _record(self, record: Any) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a record with bad arguments: its format string as it is
            text = str(record.msg)
        self._add(
            f"log:{record.name}",
            text,
            f"{record.pathname}:{record.lineno}",
            record.levelname,
            [],
        )

    def _add(self, category: str, message: str, first: str, level: Any, bases: list[str]) -> bool:
        """Count one occurrence; whether it is the first of a listed distinct warning."""
        self._seen += 1
        message = message[:WARNING_MESSAGE]
        key = (category, message)
        entry = self.entries.get(key)
        if entry is not None:
            entry["count"] += 1
            return False
        if len(self.entries) >= self.limit:
            if not self.dropped:
                sys.stderr.write(
                    f"parity-worker: more than {self.limit} distinct warnings; the rest are "
                    "counted, not listed or printed\n"
                )
            self.dropped += 1
            return False
        self.entries[key] = {
            "category": category,
            "bases": bases,
            "level": level,
            "message": message,
            "count": 1,
            "first": first[:WARNING_MESSAGE],
        }
        return True

    def write(self) -> None:
        """Write what was caught so far into `warnings.json` (atomically), unless nothing
        was caught since the last write."""
        if self._seen == self._written:
            return
        self._written = self._seen
        _write_json(
            self.path,
            {
                "entries": list(self.entries.values()),
                "dropped": self.dropped,
                "limit": self.limit,
            },
        )


def _qualified(cls: type) -> str:
    """A class's full name: `sklearn.exceptions.InconsistentVersionWarning`, but a built-in
    one's bare (`UserWarning`)."""
    module = getattr(cls, "__module__", "") or ""
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module == "builtins" else f"{module}.{name}"


MLFLOW_PREFIX = "mlflow:"
# The pyfunc loaders of models written as a PythonModel (an object, or a file of code)
PYTHON_MODEL_LOADERS = ("mlflow.pyfunc.model", "mlflow.pyfunc.loaders.code_model")


def _load_callable(spec: str) -> Any:
    if spec.startswith(MLFLOW_PREFIX):
        return _mlflow_predict(spec.removeprefix(MLFLOW_PREFIX))
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"module {module_name!r} has no attribute {attr!r}") from None


def _mlflow_predict(uri: str) -> Any:
    """A predict function over an MLflow model, loaded as pyfunc (MLflow must be installed
    in this environment: it is the model's own dependency). The model gets the batch in the
    form its signature takes (`_mlflow_input`) and its result becomes named numeric outputs
    (`_mlflow_outputs`)."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(uri)
    schema = model.metadata.get_input_schema()
    pyfunc = model.metadata.flavors.get("python_function", {})
    custom = pyfunc.get("loader_module") in PYTHON_MODEL_LOADERS

    def predict(batch: dict[str, Any]) -> dict[str, Any]:
        data = _mlflow_input(uri, schema, batch, custom=custom)
        try:
            result = model.predict(data)
        except MlflowException as e:
            # MLflow raises its schema error while handling the real one, so the traceback
            # would hold both, and its message the whole batch: say the real one, once.
            inner = e.__context__
            if getattr(e, "error_class", None) != "SCHEMA_ENFORCEMENT_FAILED" or inner is None:
                raise
            raise ModelInputError(
                f"the MLflow model {uri} refused its input: {inner} (its input schema: "
                f"{_schema_text(schema)}; the batch given: {_shapes(data)})"
            ) from None
        return _mlflow_outputs(result)

    return predict


def _mlflow_input(uri: str, schema: Any, batch: dict[str, Any], *, custom: bool = False) -> Any:
    """The batch as the model's signature takes it: one array for a single tensor (or no
    signature and one input), a dict of arrays for named tensors, a pandas DataFrame for
    columns. A `custom` PythonModel without a signature gets the dict of arrays, as it
    always has. Raise ModelInputError when the inputs do not fit."""
    inputs = _shapes(batch)
    if schema is None or not schema.inputs:
        if custom:
            return batch
        if len(batch) == 1:
            return next(iter(batch.values()))
        raise ModelInputError(
            f"the MLflow model {uri} has no signature, so parity cannot tell which of the "
            f"inputs it takes ({inputs}): give the config one input array, or log the model "
            "with a signature (an input_example) whose names match the inputs"
        )
    if schema.is_tensor_spec():
        specs = schema.inputs
        if len(specs) == 1 and (len(batch) == 1 or specs[0].name is None):
            if len(batch) != 1:
                raise ModelInputError(
                    f"the MLflow model {uri} takes one tensor ({_schema_text(schema)}), the "
                    f"config gives {len(batch)} inputs ({inputs}): give it one input array"
                )
            name, arr = next(iter(batch.items()))
            return _as_tensor(uri, schema, specs[0], name, arr)
        names = {s.name: s for s in specs}
        extra = [n for n in batch if n not in names]
        missing = [s.name for s in specs if s.required and s.name not in batch]
        if extra or missing:
            raise ModelInputError(
                f"the MLflow model {uri} takes the tensors {_schema_text(schema)}; the inputs "
                f"are {inputs}: name the config's inputs like the tensors"
                + (f" (missing: {', '.join(map(str, missing))})" if missing else "")
                + (f" (not in the signature: {', '.join(extra)})" if extra else "")
            )
        return {n: _as_tensor(uri, schema, names[n], n, a) for n, a in batch.items()}
    return _as_frame(uri, schema, batch)


def _as_tensor(uri: str, schema: Any, spec: Any, name: str, arr: Any) -> Any:
    """`arr` checked against a TensorSpec's shape and cast to its dtype where that is safe."""
    shape = tuple(spec.shape)
    if len(shape) != arr.ndim or any(
        d not in (-1, a) for d, a in zip(shape, arr.shape, strict=True)
    ):
        raise ModelInputError(
            f"the MLflow model {uri} takes tensors {_schema_text(schema)}; input {name!r} has "
            f"shape {tuple(arr.shape)} (-1 in the signature is any size)"
        )
    return _cast(arr, spec.type)


def _as_frame(uri: str, schema: Any, batch: dict[str, Any]) -> Any:
    """A pandas DataFrame of the schema's columns: the inputs named like columns, or one
    2-D input split into the columns in order; each cast to its column's type where safe."""
    import pandas as pd

    specs = schema.inputs
    names = schema.input_names()
    width = len(specs)
    types = {s.name if s.name is not None else i: s.type for i, s in enumerate(specs)}
    for name in batch:
        if name in types and _nested(types[name])[1] in ("Object", "Map"):
            raise ModelInputError(
                f"the MLflow model {uri} takes column {name!r} as {types[name]} (a dict per "
                f"row): parity's inputs are arrays, and no array is one; wrap the model in a "
                f"PythonModel that builds that column from arrays"
            )
    depth = {n: _nested(kind)[0] for n, kind in types.items()}
    columns: dict[Any, Any] = {}
    if schema.has_input_names() and set(batch) <= set(names):
        missing = [s.name for s in specs if s.required and s.name not in batch]
        # A scalar column takes one value per sample; an Array column (of Arrays...) one
        # array per sample, of as many dimensions as the Arrays are nested.
        wrong = [
            n
            for n, a in batch.items()
            if not (a.ndim == depth[n] + 1 or (depth[n] == 0 and a.shape[1:] == (1,)))
        ]
        if not missing and not wrong:
            columns = {
                n: _cast(batch[n].reshape(len(batch[n])), types[n])
                if depth[n] == 0
                else list(_cast(batch[n], _nested(types[n])[2]))
                for n in names
                if n in batch
            }
    if not columns and len(batch) == 1 and not any(depth.values()):
        arr = next(iter(batch.values()))
        if arr.ndim == 2 and arr.shape[1] == width:
            columns = {n: _cast(arr[:, i], types[n]) for i, n in enumerate(names)}
        elif width == 1 and arr.ndim == 1:
            columns = {names[0]: _cast(arr, types[names[0]])}
    if not columns:
        arrays = [n for n, d in depth.items() if d]
        how = (
            f"name each input like a column: one value per sample, or for the Array "
            f"column(s) {', '.join(map(repr, arrays))} one array per sample"
            if arrays
            else f"name each input like a column (one value per sample), or give one 2-D "
            f"input of width {width} (its columns in that order)"
        )
        raise ModelInputError(
            f"the MLflow model {uri} takes a table with the columns {_schema_text(schema)}; "
            f"the inputs are {_shapes(batch)}: {how}"
        )
    frame = pd.DataFrame(columns)
    if not schema.has_input_names():
        frame.columns = pd.RangeIndex(len(frame.columns))
    return frame


def _nested(kind: Any) -> tuple[int, str, Any]:
    """An MLflow column type as (how many Arrays are nested, the innermost type's class
    name, the innermost type): `Array(Array(float))` is (2, "DataType", float)."""
    depth = 0
    while type(kind).__name__ == "Array" and hasattr(kind, "dtype"):
        depth, kind = depth + 1, kind.dtype
    return depth, type(kind).__name__, kind


def _cast(arr: Any, kind: Any) -> Any:
    """`arr` as the numpy dtype of a schema type (an MLflow DataType or a numpy dtype) when
    no value changes meaning (a float's width may narrow, as the model was trained on);
    otherwise as it is, for MLflow to judge."""
    import numpy as np

    try:
        target = np.dtype(kind.to_numpy() if hasattr(kind, "to_numpy") else kind)
    except (TypeError, ValueError):  # an Array, Object or Map column: MLflow's to judge
        return arr
    if arr.dtype == target or target.kind not in ALLOWED_KINDS:
        return arr
    if np.can_cast(arr.dtype, target, "safe") or (arr.dtype.kind == target.kind == "f"):
        return arr.astype(target)
    return arr


def _schema_text(schema: Any) -> str:
    """A signature's inputs as people read them: `a (double), b (double)`."""
    parts = []
    for i, spec in enumerate(schema.inputs):
        name = spec.name if spec.name is not None else f"#{i}"
        shape = getattr(spec, "shape", None)
        kind = getattr(spec.type, "name", None)  # a DataType's or a numpy dtype's
        kind = kind if isinstance(kind, str) else str(spec.type)
        parts.append(f"{name} ({kind}{', shape ' + str(tuple(shape)) if shape else ''})")
    return ", ".join(parts)


def _shapes(data: Any) -> str:
    """What is being given to a model, as people read it: `x (12, 3, 4) float32, ...`."""
    if isinstance(data, dict):
        return ", ".join(f"{n} {tuple(a.shape)} {a.dtype}" for n, a in data.items()) or "none"
    if hasattr(data, "columns") and hasattr(data, "dtypes"):
        return "a table with columns " + ", ".join(
            f"{c} ({t})" for c, t in zip(data.columns, data.dtypes, strict=True)
        )
    return f"one array {tuple(data.shape)} {data.dtype}"


def _mlflow_outputs(result: Any) -> dict[str, Any]:
    """An MLflow model's result as named outputs: a dict keeps its names, a DataFrame gives
    one output per column, a Series its name (or `output`), an array or a list `output`.
    Raise TypeError for anything else."""
    if isinstance(result, dict):
        return {str(k): _output_array(str(k), v) for k, v in result.items()}
    if hasattr(result, "columns") and hasattr(result, "to_numpy"):  # a DataFrame
        names = [str(c) for c in result.columns]
        if len(set(names)) != len(names):
            raise TypeError(f"the model returned a DataFrame with repeated columns: {names}")
        return {n: _output_array(n, result.iloc[:, i]) for i, n in enumerate(names)}
    if hasattr(result, "name") and hasattr(result, "to_numpy"):  # a Series
        name = "output" if result.name is None else str(result.name)
        return {name: _output_array(name, result)}
    if isinstance(result, list | tuple) or hasattr(result, "__array__"):
        return {"output": _output_array("output", result)}
    raise TypeError(
        f"the MLflow model returned {type(result).__name__}; parity compares numeric arrays: "
        "return an array, a list, a dict of arrays, a pandas DataFrame or Series"
    )


def _output_array(name: str, value: Any) -> Any:
    """One output as a numpy array: pandas values as numpy, a column whose cells are arrays
    (or lists) stacked into one array."""
    import numpy as np

    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    arr = _as_array(value) if not isinstance(value, list | tuple) else np.asarray(value)
    if arr.dtype == object and arr.ndim == 1 and len(arr):
        try:
            arr = np.stack([np.asarray(cell) for cell in arr])
        except ValueError as e:
            raise TypeError(f"output {name!r} holds cells of different shapes: {e}") from None
    return arr


def _load_probe(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("_envlock_probe", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load fingerprint probe from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# sys.path as the interpreter set it up, before the job's paths (or the model) changed it.
_BASE_PATH = list(sys.path)
_DISTRIBUTIONS = (".dist-info", ".egg-info", ".egg-link")


def _fingerprint(job: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint this worker writes, taken after the model ran. With `static_paths`
    in the job, the host took what the environment holds (`envlock.fingerprints`) from
    those folders on sys.path: only the sections about this process are taken here, unless
    this process's sys.path did not start as those folders or now holds another folder with
    installed distributions in it (a model's folder), which only the full probe sees."""
    probe = _load_probe(job["probe"])
    static_paths = job.get("static_paths") or []
    whole = not isinstance(static_paths, list) or not static_paths or static_paths != _BASE_PATH
    for folder in sys.path if not whole else []:
        if folder in static_paths or not os.path.isdir(folder or "."):
            continue
        with contextlib.suppress(OSError):
            whole = whole or any(n.endswith(_DISTRIBUTIONS) for n in os.listdir(folder or "."))
    fingerprint: dict[str, Any] = probe.collect() if whole else probe.runtime_sections()
    return fingerprint


# How often a worker looks for its inputs: every few milliseconds at first (they come
# while the worker starts, and every step of a longer wait would be the check's time), then
# every tenth of a second once the wait is long (the host building another environment).
WAIT_STEP = 0.002
WAIT_STEP_LONG = 0.1
WAIT_SHORT = 2.0


def _wait_for(path: str, abort: Any, limit: float) -> bool:
    """Wait until `path` exists; False if `abort` appears or `limit` seconds pass first."""
    started = time.monotonic()
    while not os.path.exists(path):
        now = time.monotonic()
        if (abort and os.path.exists(abort)) or now > started + limit:
            return False
        time.sleep(WAIT_STEP if now - started < WAIT_SHORT else WAIT_STEP_LONG)
    return True


def _read_inputs(job: dict[str, Any]) -> dict[str, Any] | None:
    """The job's inputs once the host has written them (never unpickled); None when the
    host gave up first or the wait ran out."""
    import numpy as np

    if not _wait_for(job["inputs"], job.get("inputs_abort"), float(job.get("inputs_wait", 600))):
        sys.stderr.write("parity-worker: the host gave up before writing the inputs\n")
        return None
    with np.load(job["inputs"], allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def run(job: dict[str, Any]) -> int:
    """Run one job (`mode`: predict, stages or serve); return the process exit status.

    The job's `paths` go first on sys.path, and every warning the model raises is counted
    (`warnings.json`), written when the job ends however it ends: the warnings before a
    failure are evidence too."""
    mode = job.get("mode", "predict")
    work = {"predict": _predict, "stages": run_stages, "serve": serve}.get(mode)
    if work is None:
        sys.stderr.write(f"parity-worker: unknown mode {mode!r}\n")
        return 2
    outdir = job["outdir"]
    for p in reversed(job.get("paths", [])):
        sys.path.insert(0, p)
    caught = _Caught(os.path.join(outdir, WARNINGS_FILE))
    try:
        return work(job, outdir, caught)
    finally:
        caught.write()


def _predict(job: dict[str, Any], outdir: str, caught: _Caught) -> int:
    import numpy as np

    started = time.perf_counter()
    try:
        # The model loads while the host is still writing the inputs.
        with caught:
            predict = _load_callable(job["adapter"])
        loaded = time.perf_counter()
        inputs = _read_inputs(job)
        if inputs is None:
            return 2
    except Exception as exc:  # every failure goes to error.json for the host
        _fail(outdir, "load", exc)
        return 1
    ready = time.perf_counter()

    count = int(job["count"])
    batch_size = int(job.get("batch_size", 64))
    collected: dict[str, list[Any]] = {}
    try:
        with caught:
            for start in range(0, count, batch_size):
                batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
                n = min(batch_size, count - start)
                for name, arr in _checked_outputs(predict(batch), n).items():
                    collected.setdefault(name, []).append(arr)
                sys.stderr.write(f"parity-worker: {min(start + batch_size, count)}/{count}\n")
                sys.stderr.flush()
    except Exception as exc:
        _fail(outdir, "predict", exc)
        return 1
    ran = time.perf_counter()

    outputs = {name: np.concatenate(parts) for name, parts in collected.items()}
    tmp = os.path.join(outdir, "outputs.tmp.npz")
    np.savez(tmp, **outputs)  # type: ignore[arg-type]  # numpy stubs mistype **arrays
    os.replace(tmp, os.path.join(outdir, "outputs.npz"))
    try:
        fingerprint = _fingerprint(job)
    except Exception as exc:
        _fail(outdir, "fingerprint", exc)
        return 1
    _write_json(os.path.join(outdir, "fingerprint.json"), fingerprint)
    _write_json(
        os.path.join(outdir, "result.json"),
        {
            "status": "ok",
            "outputs": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in outputs.items()
            },
            "seconds": {
                "load": round(loaded - started, 4),
                "wait_inputs": round(ready - loaded, 4),
                "predict": round(ran - ready, 4),
                "total": round(time.perf_counter() - started, 4),
            },
        },
    )
    return 0


STAGE_ENTRIES = 1000  # captured arrays at most: the host reads at most 1024 from one .npz


def run_stages(job: dict[str, Any], outdir: str, caught: _Caught) -> int:
    """Run the job's one sample through the adapter's stages, recording each stage's result
    and each hooked module's or Pipeline step's output (`stages.npz`, `stages.json`); the
    exit status.

    The job's `stages` (module:function) gives an ordered list of `(name, fn)` or
    `(name, fn, model)`: the first fn takes the batch dict, each next fn the previous
    one's result, and the last returns the outputs dict, as predict does. The model, when
    there is one, is what the stage runs, of one of two kinds; neither library is ever
    imported here, both are duck-typed:

    - a torch module (`named_modules`, `register_forward_hook`): while the stage runs, a
      forward hook on each of its submodules records what it returns, in execution order
      (kind "module"); tensors are read with `.detach().cpu().numpy()`.
    - a scikit-learn Pipeline (`steps`, a list of (name, estimator)): while the stage
      runs, each step's inference methods are shadowed by instance attributes that call
      the original and record its result (kind "step"), in execution order: `transform`
      for the intermediate steps, `predict`, `predict_proba`, `predict_log_proba`,
      `decision_function`, `transform` and `score_samples` for the last one (the Pipeline
      calls its steps' methods on the instances). A step that is itself a Pipeline is
      recursed into; a FeatureUnion (`transformer_list`) or ColumnTransformer
      (`transformers_`) records each of its transformers and then its own, combined,
      output. Nested steps are named `outer/inner`. An estimator's calls to its own
      methods (predict_proba calling decision_function) are not recorded twice. Steps run
      in other processes (`n_jobs` > 1) are not seen.
    """
    import numpy as np

    started = time.perf_counter()
    try:
        if not job.get("stages"):
            raise ValueError("the job names no stages function (module:function)")
        with caught:
            stages = _stage_list(_load_callable(job["stages"])())
        loaded = time.perf_counter()
        value: Any = _read_inputs(job)
        if value is None:
            return 2
    except Exception as exc:  # every failure goes to error.json for the host
        _fail(outdir, "load", exc)
        return 1
    ready = time.perf_counter()
    recorder = _Recorder(int(job.get("max_entries", STAGE_ENTRIES)))
    try:
        for i, (name, fn, model) in enumerate(stages):
            handles = recorder.watch(name, model) if model is not None else []
            try:
                with caught:
                    value = fn(value)
            finally:
                for handle in reversed(handles):
                    handle.remove()
            if i == len(stages) - 1:
                recorder.outputs(name, value)
            else:
                recorder.add({"stage": name, "kind": "stage", "name": name}, value)
            sys.stderr.write(f"parity-worker: stage {name!r} done\n")
            sys.stderr.flush()
    except Exception as exc:
        _fail(outdir, "stages", exc)
        return 1
    ran = time.perf_counter()

    tmp = os.path.join(outdir, "stages.tmp.npz")
    np.savez(tmp, **recorder.arrays)
    os.replace(tmp, os.path.join(outdir, "stages.npz"))
    _write_json(
        os.path.join(outdir, "stages.json"),
        {
            "status": "ok",
            "stages": [name for name, _fn, _module in stages],
            "entries": recorder.entries,
            "dropped": recorder.dropped,
            "seconds": {
                "load": round(loaded - started, 4),
                "stages": round(ran - ready, 4),
                "total": round(time.perf_counter() - started, 4),
            },
        },
    )
    return 0


def _is_torch_module(model: Any) -> bool:
    return hasattr(model, "named_modules") and hasattr(model, "register_forward_hook")


def _is_pipeline(model: Any) -> bool:
    """A scikit-learn Pipeline, duck-typed: `steps`, a list of (name, estimator) pairs."""
    steps = getattr(model, "steps", None)
    return isinstance(steps, list) and all(
        isinstance(step, tuple | list) and len(step) == 2 and isinstance(step[0], str)
        for step in steps
    )


def _stage_list(stages: Any) -> list[tuple[str, Any, Any]]:
    """The adapter's stages as (name, fn, model or None); raise on anything else."""
    if not isinstance(stages, list | tuple) or not stages:
        raise TypeError(
            f"stages() must return a non-empty list of (name, fn) or (name, fn, module) "
            f"tuples, got {type(stages).__name__}"
        )
    checked: list[tuple[str, Any, Any]] = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, list | tuple) or len(stage) not in (2, 3):
            raise TypeError(f"stage {i} must be (name, fn) or (name, fn, module), got {stage!r}")
        name, fn = stage[0], stage[1]
        module = stage[2] if len(stage) == 3 else None
        if not isinstance(name, str) or not name:
            raise TypeError(f"stage {i}: its name must be a non-empty string, got {name!r}")
        if name in (s[0] for s in checked):
            raise ValueError(f"stage {i}: the name {name!r} is used twice")
        if not callable(fn):
            raise TypeError(f"stage {name!r}: {fn!r} is not callable")
        if module is not None and not (_is_torch_module(module) or _is_pipeline(module)):
            raise TypeError(
                f"stage {name!r}: its third element must be a torch module (with "
                "named_modules and register_forward_hook) or a scikit-learn Pipeline (with "
                f"steps, a list of (name, estimator) pairs), got {type(module).__name__}"
            )
        checked.append((name, fn, module))
    return checked


class _Recorder:
    """The arrays captured so far (`e0000`, `e0001`, ...) and what each one is."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.arrays: dict[str, Any] = {}
        self.entries: list[dict[str, Any]] = []
        self.dropped = 0  # values past the limit, not recorded

    def add(self, entry: dict[str, Any], value: Any) -> None:
        """Record each numeric array in `value` (nested tuples, lists and dicts are
        flattened into `name[i]`, `name[key]`); other values are skipped."""
        for suffix, leaf in _leaves(value):
            try:
                arr = _as_array(leaf)
            except Exception:  # a value numpy cannot hold says nothing comparable
                continue
            if arr.dtype.kind not in ALLOWED_KINDS:
                continue
            self._keep({**entry, "name": entry["name"] + suffix}, arr)

    def outputs(self, stage: str, value: Any) -> None:
        """Record the last stage's outputs dict, checked as predict's outputs are."""
        if not isinstance(value, dict) or not value:
            raise TypeError(
                f"the last stage ({stage!r}) must return a non-empty dict of arrays, got "
                f"{type(value).__name__}"
            )
        for name, leaf in value.items():
            arr = _as_array(leaf)
            if arr.dtype.kind not in ALLOWED_KINDS:
                raise TypeError(
                    f"output {name!r} has dtype {arr.dtype}; outputs must be numeric arrays"
                )
            if arr.ndim == 0 or arr.shape[0] != 1:
                raise ValueError(
                    f"output {name!r} has shape {arr.shape}; its first axis must be the batch "
                    "(1 sample)"
                )
            self._keep(
                {"stage": stage, "kind": "stage", "name": f"{stage}[{name}]", "output": name}, arr
            )

    def watch(self, stage: str, model: Any) -> list[Any]:
        """Start recording inside the stage's model (a torch module or a Pipeline); the
        handles, each with `remove()`, to call once the stage has run."""
        if _is_torch_module(model):
            return self.hook(stage, model)
        handles: list[Any] = []
        try:
            self._wrap_steps(stage, model, "", handles, set(), {})
        except BaseException:
            for handle in reversed(handles):
                handle.remove()
            raise
        return handles

    def _wrap_steps(
        self,
        stage: str,
        pipeline: Any,
        prefix: str,
        handles: list[Any],
        busy: set[int],
        calls: dict[str, int],
    ) -> None:
        """Shadow the inference methods of each step of `pipeline` (nested ones included)."""
        steps = [(n, e) for n, e in pipeline.steps if e is not None and not isinstance(e, str)]
        for i, (name, est) in enumerate(steps):
            methods = FINAL_METHODS if i == len(steps) - 1 else ("transform",)
            self._wrap_estimator(stage, est, prefix + name, methods, handles, busy, calls)

    def _wrap_estimator(
        self,
        stage: str,
        est: Any,
        qname: str,
        methods: tuple[str, ...],
        handles: list[Any],
        busy: set[int],
        calls: dict[str, int],
    ) -> None:
        if _is_pipeline(est):  # its output is its last step's: record its steps only
            self._wrap_steps(stage, est, qname + "/", handles, busy, calls)
            return
        parts = _transformers(est)
        for name, part in parts or ():
            if part is not None and not isinstance(part, str):  # "drop", "passthrough"
                self._wrap_estimator(
                    stage, part, f"{qname}/{name}", ("transform",), handles, busy, calls
                )
        for method in methods:
            if callable(getattr(est, method, None)):
                handles.append(self._shadow(stage, est, qname, method, busy, calls))

    def _shadow(
        self, stage: str, est: Any, qname: str, method: str, busy: set[int], calls: dict[str, int]
    ) -> Any:
        """Shadow `est.method` with an instance attribute that records its result; the
        handle that takes it away (restoring an instance attribute it had before)."""
        original = getattr(est, method)
        own = vars(est).get(method, _ABSENT) if hasattr(est, "__dict__") else _ABSENT
        cls = type(est).__name__
        recorder = self

        def recording(*args: Any, **kwargs: Any) -> Any:
            if id(est) in busy:  # the estimator calling its own methods: record it once
                return original(*args, **kwargs)
            busy.add(id(est))
            try:
                result = original(*args, **kwargs)
            finally:
                busy.discard(id(est))
            calls[qname] = calls.get(qname, 0) + 1
            call = calls[qname]
            entry = {
                "stage": stage,
                "kind": "step",
                "name": qname if call == 1 else f"{qname}#{call}",
                "module": qname,
                "class": cls,
                "call": call,
                "method": method,
            }
            recorder.add(entry, result)
            return result

        try:
            setattr(est, method, recording)
        except (AttributeError, TypeError) as e:
            raise TypeError(
                f"stage {stage!r}: cannot record step {qname!r} ({cls}): its {method} "
                f"cannot be shadowed ({e})"
            ) from None
        return _Unshadow(est, method, own)

    def hook(self, stage: str, module: Any) -> list[Any]:
        """Forward hooks on each submodule of `module` (on itself, when it has none) that
        record their outputs; the handles, to remove once the stage has run."""
        subs = [(q, m) for q, m in module.named_modules() if q] or [("", module)]
        calls: dict[str, int] = {}
        return [sub.register_forward_hook(self._recording(stage, q, sub, calls)) for q, sub in subs]

    def _recording(self, stage: str, qname: str, sub: Any, calls: dict[str, int]) -> Any:
        """The forward hook of one submodule; a module run twice records `name#2`."""
        cls = type(sub).__name__
        shown = qname or cls

        def record(_module: Any, _args: Any, output: Any) -> None:
            calls[shown] = calls.get(shown, 0) + 1
            call = calls[shown]
            entry = {
                "stage": stage,
                "kind": "module",
                "name": shown if call == 1 else f"{shown}#{call}",
                "module": shown,
                "class": cls,
                "call": call,
            }
            self.add(entry, output)

        return record

    def _keep(self, entry: dict[str, Any], arr: Any) -> None:
        if len(self.arrays) >= self.limit:
            self.dropped += 1
            return
        key = f"e{len(self.arrays):04d}"
        self.arrays[key] = arr
        self.entries.append(
            {"key": key, **entry, "shape": list(arr.shape), "dtype": str(arr.dtype)}
        )


FINAL_METHODS = (
    "predict",
    "predict_proba",
    "predict_log_proba",
    "decision_function",
    "transform",
    "score_samples",
)
_ABSENT = object()


def _transformers(est: Any) -> list[tuple[str, Any]] | None:
    """The (name, transformer) parts of a FeatureUnion (`transformer_list`) or a fitted
    ColumnTransformer (`transformers_`: the fitted ones it runs); None for anything else."""
    for attr in ("transformers_", "transformer_list"):
        parts = vars(est).get(attr) if hasattr(est, "__dict__") else None
        if isinstance(parts, list) and all(
            isinstance(p, tuple | list) and len(p) >= 2 and isinstance(p[0], str) for p in parts
        ):
            return [(p[0], p[1]) for p in parts]
    return None


class _Unshadow:
    """Takes a recording method off an estimator, as it was before."""

    def __init__(self, est: Any, method: str, own: Any) -> None:
        self.est, self.method, self.own = est, method, own

    def remove(self) -> None:
        if self.own is _ABSENT:
            with contextlib.suppress(AttributeError):  # someone took it off already
                delattr(self.est, self.method)
        else:
            setattr(self.est, self.method, self.own)


def _leaves(value: Any, suffix: str = "") -> Any:
    """(suffix, value) for each tensor or array in `value`, tuples, lists and dicts
    flattened: `[0]`, `[key]`."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        yield suffix, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{suffix}[{k}]")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{suffix}[{i}]")
    elif value is not None:
        yield suffix, value


def _as_array(value: Any) -> Any:
    """A tensor or array-like as a numpy array (bfloat16 and other dtypes numpy lacks are
    widened to float32 first; a scipy sparse matrix is made dense)."""
    import numpy as np

    if hasattr(value, "toarray") and hasattr(value, "nnz"):  # scipy.sparse
        return np.asarray(value.toarray())
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        tensor = value.detach().cpu()
        try:
            return tensor.numpy()
        except TypeError:
            return tensor.float().numpy()
    return np.asarray(value)


def serve(job: dict[str, Any], outdir: str, caught: _Caught) -> int:
    """Load the model once and answer the host's requests until it says stop; the exit
    status (see the module docstring). The warnings are written after loading and after
    each request (the host may stop this process at any moment, so the file is always
    whole and up to date)."""
    import numpy as np

    requests = job["requests"]
    stop = job["stop"]
    _exit_on(stop)
    try:
        with caught:
            predict = _load_callable(job["adapter"])
        fingerprint = _load_probe(job["probe"]).collect()
    except Exception as exc:
        _fail(outdir, "load", exc)
        return 1  # run() writes the warnings seen while loading
    caught.write()
    _write_json(os.path.join(outdir, "fingerprint.json"), fingerprint)
    wait = float(job.get("inputs_wait", 600))
    n = 1
    while _wait_for(os.path.join(requests, f"request-{n}.npz"), stop, wait):
        try:
            with np.load(os.path.join(requests, f"request-{n}.npz"), allow_pickle=False) as data:
                batch = {name: data[name] for name in data.files}
            count = min((len(v) for v in batch.values()), default=0)
            try:
                with caught:
                    result = predict(batch)
            finally:
                caught.write()
            outputs = _checked_outputs(result, count)
            tmp = os.path.join(outdir, f"response-{n}.tmp.npz")
            np.savez(tmp, **outputs)
            os.replace(tmp, os.path.join(outdir, f"response-{n}.npz"))
        except Exception as exc:  # the host decides what a failing request means
            _fail(outdir, "predict", exc, f"error-{n}.json")
        n += 1
    if os.path.exists(stop):
        return 0
    sys.stderr.write(f"parity-worker: no request for {wait:g}s; the host is gone\n")
    return 2


def _exit_on(stop: str) -> None:
    """Exit the process as soon as `stop` appears, even while the model is predicting: the
    host that wrote it wants nothing more, and must not wait on a slow or hung model."""
    import threading

    def watch() -> None:
        while not os.path.exists(stop):
            time.sleep(0.05)
        sys.stderr.flush()
        os._exit(0)

    threading.Thread(target=watch, name="parity-stop", daemon=True).start()


def _checked_outputs(result: Any, count: int) -> dict[str, Any]:
    """The adapter's result as named numeric arrays of `count` samples each; raise
    TypeError or ValueError naming the output that is not."""
    import numpy as np

    if not isinstance(result, dict) or not result:
        raise TypeError(
            f"adapter must return a non-empty dict of arrays, got {type(result).__name__}"
        )
    outputs = {}
    for name, value in result.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(
                f"output {name!r} has dtype {arr.dtype}; outputs must be numeric arrays"
            )
        if arr.ndim == 0 or arr.shape[0] != count:
            raise ValueError(
                f"output {name!r} has shape {arr.shape}; its first axis must be the batch "
                f"({count} samples)"
            )
        key = str(name)
        if key in outputs:
            # `{1: a, "1": b}`: one name for two outputs would lose one of them unseen.
            first = next(n for n in result if str(n) == key)
            raise ValueError(
                f"outputs {first!r} and {name!r} have the same name {key!r} as text; "
                f"output names must be distinct strings"
            )
        # C order always (one batch copied at most): a Fortran-ordered output is
        # written, and read back, in C order.
        outputs[key] = np.ascontiguousarray(arr)
    return outputs


def _watch_host(host: Any) -> None:
    """Fork a watchdog that kills this process group (the worker, what the model starts,
    and itself) as soon as the `host` process or the worker is gone. Only in a group the
    worker leads: any other group could hold the host or unrelated processes."""
    if not isinstance(host, int) or isinstance(host, bool) or host <= 1:
        return
    if not hasattr(os, "fork") or os.getpgrp() != os.getpid():
        return
    worker = os.getpid()
    try:
        if os.fork() != 0:
            return
    except OSError:
        return
    try:  # the watchdog: nothing here may return into the worker's code
        import signal

        _wait_gone(host, worker)
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(0)


def _wait_gone(host: int, worker: int) -> None:
    """Return when process `host`, or the watchdog's parent `worker`, is gone."""
    import select

    fds = []
    try:
        for pid in (host, worker):
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                return
        if os.getppid() != worker:  # the worker was gone before it was watched
            return
        poll = select.poll()
        for fd in fds:
            poll.register(fd, select.POLLIN)
        poll.poll()
    except (AttributeError, OSError):  # no pidfd (not Linux 5.3+): ask every 0.2 s
        while os.getppid() == worker:
            try:
                os.kill(host, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass
            time.sleep(0.2)
    finally:
        for fd in fds:
            os.close(fd)


def main(argv: list[str]) -> int:
    """Read the job file named on the command line and run it."""
    if len(argv) != 2:
        sys.stderr.write("usage: worker.py JOB.json\n")
        return 2
    try:
        with open(argv[1], encoding="utf-8") as f:
            job = json.load(f)
        if job.get("schema") != JOB_SCHEMA:
            raise ValueError(f"job schema {job.get('schema')!r}, this worker reads {JOB_SCHEMA}")
        os.makedirs(job["outdir"], exist_ok=True)
    except Exception as exc:
        sys.stderr.write(f"parity-worker: unusable job {argv[1]}: {exc}\n")
        return 2
    _watch_host(job.get("host_pid"))
    return run(job)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
