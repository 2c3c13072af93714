"""The program parity runs inside each environment: job file in, outputs and fingerprint out.

    python worker.py JOB.json

It needs only the standard library and numpy, and it is run by path (never imported from
the parity package), so the environment under test is exactly what its lock installed.
It writes into the job's output folder:

    outputs.npz        one array per model output, (count, ...) each; plain numeric dtypes
    fingerprint.json   the environment's fingerprint (envlock's probe), taken after the run
    result.json        status, timings and the outputs' shapes and dtypes
    error.json         instead of outputs, when the model or the job failed

Exit status: 0 done, 1 the model raised, 2 the job itself is unusable.
"""

from __future__ import annotations

import os
import sys

# Run by path, Python puts this file's folder first on sys.path: the parity package's own
# modules (config, inputs, html, ...) would then shadow the model's imports of the same
# names (stdlib `html` included). The model must see its environment, not this folder.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

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


def _fail(outdir: str, stage: str, exc: BaseException) -> None:
    _write_json(
        os.path.join(outdir, "error.json"),
        {
            "stage": stage,
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        },
    )


MLFLOW_PREFIX = "mlflow:"


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
    """A predict function over an MLflow pyfunc model (MLflow must be installed in this
    environment: it is the model's own dependency). The model gets the batch as a dict
    of arrays; an array it returns becomes the output `output`, a dict keeps its names,
    a DataFrame gives one output per column."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(uri)

    def predict(batch: dict[str, Any]) -> dict[str, Any]:
        result = model.predict(batch)
        if isinstance(result, dict):
            return result
        if hasattr(result, "columns") and hasattr(result, "to_numpy"):
            return {str(c): result[c].to_numpy() for c in result.columns}
        return {"output": result}

    return predict


def _load_probe(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("_envlock_probe", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load fingerprint probe from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait_for(path: str, abort: Any, limit: float) -> bool:
    """Wait until `path` exists; False if `abort` appears or `limit` seconds pass first."""
    deadline = time.monotonic() + limit
    delay = 0.005
    while not os.path.exists(path):
        if (abort and os.path.exists(abort)) or time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


def run(job: dict[str, Any]) -> int:
    """Run one job; return the process exit status."""
    import numpy as np

    outdir = job["outdir"]
    for p in reversed(job.get("paths", [])):
        sys.path.insert(0, p)
    started = time.perf_counter()
    try:
        # The model loads while the host is still writing the inputs.
        predict = _load_callable(job["adapter"])
        loaded = time.perf_counter()
        wait = float(job.get("inputs_wait", 600))
        if not _wait_for(job["inputs"], job.get("inputs_abort"), wait):
            sys.stderr.write("parity-worker: the host gave up before writing the inputs\n")
            return 2
        with np.load(job["inputs"], allow_pickle=False) as data:
            inputs = {name: data[name] for name in data.files}
    except Exception as exc:  # every failure goes to error.json for the host
        _fail(outdir, "load", exc)
        return 1
    ready = time.perf_counter()

    count = int(job["count"])
    batch_size = int(job.get("batch_size", 64))
    collected: dict[str, list[Any]] = {}
    try:
        for start in range(0, count, batch_size):
            batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
            n = min(batch_size, count - start)
            result = predict(batch)
            if not isinstance(result, dict) or not result:
                raise TypeError(
                    f"adapter must return a non-empty dict of arrays, got {type(result).__name__}"
                )
            for name, value in result.items():
                arr = np.asarray(value)
                if arr.dtype.kind not in ALLOWED_KINDS:
                    raise TypeError(
                        f"output {name!r} has dtype {arr.dtype}; outputs must be numeric arrays"
                    )
                if arr.ndim == 0 or arr.shape[0] != n:
                    raise ValueError(
                        f"output {name!r} has shape {arr.shape}; its first axis must be the "
                        f"batch ({n} samples)"
                    )
                collected.setdefault(str(name), []).append(arr)
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
        fingerprint = _load_probe(job["probe"]).collect()
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
    return run(job)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
