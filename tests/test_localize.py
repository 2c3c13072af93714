"""Localizing a failure: the first stage, and module, whose output is beyond tolerance.

The fast tests drive the worker's stages mode with a NumPy-only adapter whose "network"
is duck-typed like a torch module (named_modules, forward hooks), in local environments.
The slow ones use the real venvs and the reference model: the numpy-drift example must
point at preprocessing, and a perturbation inside the network at the module perturbed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest
from conftest import LOCAL_CONFIG, ROOT, assert_valid_report, run_cli, sklearn_drift_config

from parity.outputs import load_outputs
from parity.runs import worker as worker_module

STAGED_ADAPTER = '''\
import os
import numpy as np


class Handle:
    def __init__(self, hooks, key):
        self.hooks, self.key = hooks, key

    def remove(self):
        self.hooks.pop(self.key, None)


class Layer:
    """As much of torch.nn.Module as the worker uses: named_modules and forward hooks."""

    def __init__(self, scale, name=""):
        self.scale, self.name, self.hooks = scale, name, {}

    def named_modules(self):
        yield "", self

    def register_forward_hook(self, hook):
        key = object()
        self.hooks[key] = hook
        return Handle(self.hooks, key)

    def __call__(self, x):
        y = self.forward(x)
        for hook in list(self.hooks.values()):
            result = hook(self, (x,), y)
            y = y if result is None else result
        return y

    def forward(self, x):
        y = x * self.scale
        if os.environ.get("DRIFT_LAYER") == self.name:
            y = y + np.float32(1e-3)
        return y


class Split(Layer):
    def forward(self, x):
        return x[:, :2], {"rest": x[:, 2:], "label": None}


class Net(Layer):
    def __init__(self):
        super().__init__(1)
        self.first = Layer(np.float32(2), "first")
        self.second = Layer(np.float32(3), "second")
        self.split = Split(1, "split")

    def named_modules(self):
        yield "", self
        yield "first", self.first
        yield "second", self.second
        yield "split", self.split

    def forward(self, x):
        h = self.first(self.second(self.first(x)))  # first runs twice
        head, parts = self.split(h)
        return head + parts["rest"]


NET = Net()


def prepare(batch):
    x = batch["x"]
    if os.environ.get("DRIFT_PREPARE"):
        x = x.astype(np.float64)
    return x


def finish(y):
    assert not NET.first.hooks, "the worker left its hooks on"
    return {"y": y, "total": y.sum(axis=(1, 2))}


def stages():
    if os.environ.get("BROKEN_STAGES"):
        raise RuntimeError("no stages here")
    return [("prepare", prepare), ("model", NET, NET), ("finish", finish)]


def predict(batch):
    return finish(NET(prepare(batch)))
'''

ENTRIES = [
    ("prepare", "stage", "prepare", None),
    ("first", "module", "model", "Layer"),
    ("second", "module", "model", "Layer"),
    ("first#2", "module", "model", "Layer"),
    ("split[0]", "module", "model", "Split"),
    ("split[1][rest]", "module", "model", "Split"),
    ("model", "stage", "model", None),
    ("finish[y]", "stage", "finish", None),
    ("finish[total]", "stage", "finish", None),
]


def staged_config(infer_env: str = "", stages: bool = True, extra: str = "") -> str:
    config = LOCAL_CONFIG.format(timeout=120)
    if stages:
        config = config.replace('paths = ["src"]', 'paths = ["src"]\nstages = "adapter:stages"')
    if infer_env:
        config += f"\n[environments.infer.env]\n{infer_env}\n"
    return config + extra


def check(cfg: Path, *extra: str, folder: Path | None = None) -> tuple[int, dict[str, Any], str]:
    """Run `parity check` on `cfg`; its exit code, JSON report (schema-checked) and output."""
    out = (folder or cfg.parent) / "report.json"
    result = run_cli("parity", "check", "--config", str(cfg), "--json", str(out), *extra)
    assert out.exists(), result.stderr
    report = json.loads(out.read_text())
    assert_valid_report(report)
    return result.returncode, report, result.stdout + result.stderr


# --- the worker's stages mode ------------------------------------------------------------


def run_worker(tmp_path: Path, adapter: str, **job: Any) -> tuple[int, Path]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "adapter.py").write_text(adapter)
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4) / 7
    np.savez(tmp_path / "inputs.npz", x=x)
    out = tmp_path / "out"
    out.mkdir()
    full = {
        "schema": worker_module.JOB_SCHEMA,
        "mode": "stages",
        "adapter": "adapter:predict",
        "stages": "adapter:stages",
        "paths": [str(src)],
        "inputs": str(tmp_path / "inputs.npz"),
        "outdir": str(out),
        **job,
    }
    (tmp_path / "job.json").write_text(json.dumps(full))
    done = subprocess.run(
        [sys.executable, worker_module.__file__, str(tmp_path / "job.json")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, out


def test_the_worker_records_each_stage_and_each_module_in_execution_order(
    tmp_path: Path,
) -> None:
    status, out = run_worker(tmp_path, STAGED_ADAPTER)
    assert status == 0, (out / "error.json").read_text() if (out / "error.json").exists() else ""
    meta = json.loads((out / "stages.json").read_text())
    assert meta["stages"] == ["prepare", "model", "finish"]
    got = [(e["name"], e["kind"], e["stage"], e.get("class")) for e in meta["entries"]]
    assert got == ENTRIES
    assert [e.get("call") for e in meta["entries"][1:4]] == [1, 1, 2]
    assert [e.get("output") for e in meta["entries"][-2:]] == ["y", "total"]
    assert not (out / "outputs.npz").exists() and not (out / "fingerprint.json").exists()

    arrays = {k: v.load() for k, v in load_outputs(out / "stages.npz").items()}
    by_name = {e["name"]: arrays[e["key"]] for e in meta["entries"]}
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4) / 7
    np.testing.assert_array_equal(by_name["first"], x * np.float32(2))
    np.testing.assert_array_equal(by_name["second"], x * np.float32(2) * np.float32(3))
    np.testing.assert_array_equal(by_name["split[1][rest]"], by_name["first#2"][:, 2:])
    np.testing.assert_array_equal(by_name["finish[y]"], by_name["model"])
    assert by_name["finish[total]"].shape == (1,)
    assert {e["name"]: (e["shape"], e["dtype"]) for e in meta["entries"]}["split[0]"] == (
        [1, 2, 4],
        "float32",
    )


def test_the_worker_caps_what_it_records(tmp_path: Path) -> None:
    status, out = run_worker(tmp_path, STAGED_ADAPTER, max_entries=3)
    assert status == 0
    meta = json.loads((out / "stages.json").read_text())
    assert [e["name"] for e in meta["entries"]] == ["prepare", "first", "second"]
    assert meta["dropped"] == len(ENTRIES) - 3


@pytest.mark.parametrize(
    ("code", "where", "message"),
    [
        ("def stages():\n    return [('only a name',)]\n", "load", "must be (name, fn)"),
        ("def stages():\n    return 'prepare'\n", "load", "must return a non-empty list"),
        (
            "def stages():\n    return [('a', len, object())]\n",
            "load",
            "stage 'a': its third element must be a torch module (with named_modules and "
            "register_forward_hook) or a scikit-learn Pipeline (with steps, a list of (name, "
            "estimator) pairs), got object",
        ),
        (
            "def stages():\n    return [('a', lambda b: b['x']), ('a', lambda x: x)]\n",
            "load",
            "the name 'a' is used twice",
        ),
        (
            "def stages():\n    return [('raw', lambda b: b['x'])]\n",
            "stages",
            "the last stage ('raw') must return a non-empty dict of arrays, got ndarray",
        ),
        (
            "def stages():\n    return [('raw', lambda b: {'y': b['x'][0]})]\n",
            "stages",
            "first axis must be the batch (1 sample)",
        ),
    ],
    ids=["short-tuple", "not-a-list", "not-a-module", "twice", "no-dict", "no-batch-axis"],
)
def test_unusable_stages_go_to_error_json(
    tmp_path: Path, code: str, where: str, message: str
) -> None:
    status, out = run_worker(tmp_path, code)
    assert status == 1
    error = json.loads((out / "error.json").read_text())
    assert error["stage"] == where
    assert message in error["message"]


PIPELINE_ADAPTER = """\
import os

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler


SERVING = []  # the drift is in serving only: fitted with it, the scaler would absorb it


def shift(x):
    if os.environ.get("DRIFT_STEP") and SERVING:
        x = x + np.float32(1e-3)
    return x


rng = np.random.RandomState(0)
X = rng.normal(size=(80, 12)).astype(np.float32)
y = (X[:, 0] + X[:, 5] > 0).astype(int)
PIPE = Pipeline(
    [
        (
            "cols",
            ColumnTransformer(
                [
                    ("head", StandardScaler(), [0, 1, 2, 3]),
                    ("tail", FunctionTransformer(), list(range(4, 12))),
                ]
            ),
        ),
        (
            "union",
            FeatureUnion(
                [
                    ("pca", PCA(n_components=2, random_state=0)),
                    (
                        "inner",
                        Pipeline(
                            [("shift", FunctionTransformer(shift)), ("scale", StandardScaler())]
                        ),
                    ),
                ]
            ),
        ),
        ("skip", "passthrough"),
        ("clf", LogisticRegression()),
    ]
).fit(X, y)
SERVING.append(True)


def prepare(batch):
    return batch["x"].reshape(len(batch["x"]), -1)


def model(x):
    return {"proba": PIPE.predict_proba(x), "label": PIPE.predict(x)}


def estimators(est):
    yield est
    for attr in ("steps", "transformer_list", "transformers_"):
        for part in getattr(est, attr, ()):
            if not isinstance(part[1], str):
                yield from estimators(part[1])


def finish(outputs):
    for est in estimators(PIPE):
        left = set(vars(est)) & {"transform", "predict", "predict_proba", "decision_function"}
        assert not left, f"the worker left {left} on {type(est).__name__}"
    return outputs


def stages():
    return [("prepare", prepare), ("model", model, PIPE), ("finish", finish)]


def predict(batch):
    return finish(model(prepare(batch)))
"""

PIPELINE_STEPS = [
    ("cols/head", "StandardScaler"),
    ("cols/tail", "FunctionTransformer"),
    ("cols", "ColumnTransformer"),
    ("union/pca", "PCA"),
    ("union/inner/shift", "FunctionTransformer"),
    ("union/inner/scale", "StandardScaler"),
    ("union", "FeatureUnion"),
]


def test_the_worker_records_each_pipeline_step_in_execution_order(tmp_path: Path) -> None:
    status, out = run_worker(tmp_path, PIPELINE_ADAPTER)
    assert status == 0, (out / "error.json").read_text() if (out / "error.json").exists() else ""
    meta = json.loads((out / "stages.json").read_text())
    assert meta["stages"] == ["prepare", "model", "finish"]
    got = [(e["name"], e["kind"], e["stage"], e.get("class")) for e in meta["entries"]]
    steps = [("step", "model", cls) for _, cls in PIPELINE_STEPS]
    assert got == [
        ("prepare", "stage", "prepare", None),
        # predict_proba: each step's transform, then the classifier's predict_proba
        *[(name, *rest) for (name, _), rest in zip(PIPELINE_STEPS, steps, strict=True)],
        ("clf", "step", "model", "LogisticRegression"),
        # predict: the same steps again, `#2`; predict's own decision_function is not recorded
        *[(f"{name}#2", *rest) for (name, _), rest in zip(PIPELINE_STEPS, steps, strict=True)],
        ("clf#2", "step", "model", "LogisticRegression"),
        ("model[proba]", "stage", "model", None),
        ("model[label]", "stage", "model", None),
        ("finish[proba]", "stage", "finish", None),
        ("finish[label]", "stage", "finish", None),
    ]
    steps_only = [e for e in meta["entries"] if e["kind"] == "step"]
    assert [e["module"] for e in steps_only[:8]] == [n for n, _ in PIPELINE_STEPS] + ["clf"]
    assert [e["method"] for e in steps_only] == ["transform"] * 7 + ["predict_proba"] + [
        "transform"
    ] * 7 + ["predict"]
    assert {e["call"] for e in steps_only[:8]} == {1} and {e["call"] for e in steps_only[8:]} == {2}

    arrays = {k: v.load() for k, v in load_outputs(out / "stages.npz").items()}
    by_name = {e["name"]: arrays[e["key"]] for e in meta["entries"]}
    x = (np.arange(12, dtype=np.float32) / 7).reshape(1, 12)
    np.testing.assert_array_equal(by_name["prepare"], x)
    np.testing.assert_array_equal(by_name["cols"], np.hstack([by_name["cols/head"], x[:, 4:]]))
    np.testing.assert_array_equal(
        by_name["union"], np.hstack([by_name["union/pca"], by_name["union/inner/scale"]])
    )
    np.testing.assert_array_equal(by_name["union/inner/shift"], by_name["cols"])
    np.testing.assert_array_equal(by_name["clf"], by_name["model[proba]"])
    np.testing.assert_array_equal(by_name["clf#2"], by_name["model[label]"])
    assert by_name["clf"].shape == (1, 2) and by_name["clf#2"].dtype.kind == "i"


def test_a_job_without_a_stages_function_is_an_error(tmp_path: Path) -> None:
    status, out = run_worker(tmp_path, STAGED_ADAPTER, stages=None)
    assert status == 1
    assert "names no stages function" in json.loads((out / "error.json").read_text())["message"]


# --- parity check --localize, local environments -------------------------------------------


def test_a_drift_in_preprocessing_is_localized_to_that_stage(
    write_project: Callable[..., Path],
) -> None:
    cfg = write_project(STAGED_ADAPTER, staged_config('DRIFT_PREPARE = "1"'))
    code, report, output = check(cfg, "--localize")
    assert code == 1, output
    assert report["verdict"] == "fail"
    loc = report["localization"]
    assert loc["error"] is None
    assert loc["stages"] == ["prepare", "model", "finish"]
    assert loc["first_stage"] == "prepare"
    assert (loc["first_module"], loc["first_module_class"]) == ("first", "Layer")
    first = loc["entries"][0]
    assert (first["name"], first["passed"], first["cause"]) == ("prepare", False, "dtype")
    assert (first["reference_dtype"], first["candidate_dtype"]) == ("float32", "float64")
    assert loc["summary"].startswith(
        "outputs first diverge in stage 'prepare' (dtype float32 in train vs float64 in infer)"
    )
    assert "within stage 'model', first at module 'first' (Layer: dtype" in loc["summary"]
    assert [e["name"] for e in loc["entries"]] == [name for name, *_ in ENTRIES]
    # the failing output is the first in report order; the sample is its worst element's
    failing = next(o for o in report["outputs"] if not o["passed"])
    assert loc["output"] == failing["name"]
    worst = failing["worst_index"]
    assert loc["sample"] == (worst[0] if worst else 0)
    assert "localization (sample" in output and loc["summary"] in output
    assert "parity: localize: outputs first diverge in stage 'prepare'" in output


def test_a_drift_inside_the_model_names_the_module(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(STAGED_ADAPTER, staged_config('DRIFT_LAYER = "second"'))
    markdown = tmp_path / "summary.md"
    html = tmp_path / "report.html"
    junit = tmp_path / "parity.xml"
    code, report, output = check(
        cfg, "--localize", "--markdown", str(markdown), "--html", str(html), "--junit", str(junit)
    )
    assert code == 1, output
    loc = report["localization"]
    assert loc["first_stage"] == "model"
    assert (loc["first_module"], loc["first_module_stage"]) == ("second", "model")
    passed = {e["name"]: e["passed"] for e in loc["entries"]}
    assert passed["prepare"] and passed["first"]
    assert not passed["second"] and not passed["first#2"] and not passed["model"]
    second = next(e for e in loc["entries"] if e["name"] == "second")
    assert second["cause"] == "tolerance"
    assert second["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert loc["summary"] == (
        "outputs first diverge in stage 'model' (max abs diff 0.004, beyond "
        "allclose(atol=0, rtol=0)); within stage 'model', first at module 'second' (Layer: "
        "max abs diff 0.001, beyond allclose(atol=0, rtol=0))"
    )
    md = markdown.read_text()
    assert "### Localization (sample" in md and loc["summary"] in md
    assert "| `second` | model | Layer | **beyond** (tolerance) | 0.001 |" in md
    page = html.read_text()
    assert "<h2>Localization (sample" in page and '<table class="localization">' in page
    # CI shows the JUnit failure: the output the sample came from carries where it diverged.
    cases = {c.get("name"): c for c in ElementTree.parse(junit).getroot().iter("testcase")}
    failure = cases[loc["output"]].find("failure")
    assert failure is not None and f"localized: {loc['summary']}" in (failure.text or "")


def test_the_last_stage_outputs_are_judged_by_their_own_tolerance(
    write_project: Callable[..., Path],
) -> None:
    config = staged_config(
        'DRIFT_LAYER = "second"', extra="\n[tolerance.outputs.total]\natol = 1\n"
    )
    cfg = write_project(STAGED_ADAPTER, config)
    code, report, output = check(cfg, "--localize")
    assert code == 1, output
    entries = {e["name"]: e for e in report["localization"]["entries"]}
    assert entries["finish[total]"]["policy"] == "allclose(atol=1, rtol=0)"
    assert entries["finish[total]"]["passed"] and entries["finish[total]"]["output"] == "total"
    assert entries["model"]["policy"] == "allclose(atol=0, rtol=0)"


def test_run_localize_in_the_config_and_no_localize_on_the_command_line(
    write_project: Callable[..., Path],
) -> None:
    cfg = write_project(STAGED_ADAPTER, staged_config('DRIFT_LAYER = "second"'))
    text = cfg.read_text().replace("[run]\ntimeout", "[run]\nlocalize = true\ntimeout")
    cfg.write_text(text)
    code, report, _ = check(cfg)
    assert code == 1 and report["localization"]["first_module"] == "second"
    code, report, _ = check(cfg, "--no-localize")
    assert code == 1 and "localization" not in report


def test_a_passing_check_is_not_localized(write_project: Callable[..., Path]) -> None:
    cfg = write_project(STAGED_ADAPTER, staged_config())
    code, report, output = check(cfg, "--localize")
    assert code == 0, output
    assert "localization" not in report
    assert "localize" not in output


def test_an_adapter_without_stages_says_so_and_the_check_result_stands(
    write_project: Callable[..., Path],
) -> None:
    cfg = write_project(STAGED_ADAPTER, staged_config('DRIFT_LAYER = "second"', stages=False))
    code, report, output = check(cfg, "--localize")
    assert code == 1, output
    assert report["verdict"] == "fail" and report["outputs"]
    loc = report["localization"]
    assert loc["error"].startswith("the adapter exposes no stages: set [model] stages")
    assert loc["summary"] == "not localized: " + loc["error"]
    assert loc["entries"] == [] and loc["first_stage"] is None
    assert "parity: localize: not localized: the adapter exposes no stages" in output


def test_stages_failing_in_one_environment_become_a_note_not_a_crash(
    write_project: Callable[..., Path],
) -> None:
    cfg = write_project(
        STAGED_ADAPTER, staged_config('DRIFT_LAYER = "second"\nBROKEN_STAGES = "1"')
    )
    code, report, output = check(cfg, "--localize")
    assert code == 1, output  # the check's own verdict, not an infrastructure error
    assert report["verdict"] == "fail" and report["errors"] == []
    loc = report["localization"]
    assert loc["error"].startswith(
        "environment 'infer': the model failed in the worker (load): RuntimeError: no stages here"
    )
    assert loc["sample"] is not None and loc["entries"] == []


def test_against_a_golden_bundle_there_is_nothing_to_run_the_reference_stages_in(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(STAGED_ADAPTER, staged_config('DRIFT_LAYER = "second"'))
    bundle = tmp_path / "golden"
    result = run_cli(
        "parity", "record", "--config", str(cfg), "--env", "train", "--out", str(bundle)
    )
    assert result.returncode == 0, result.stderr
    code, report, output = check(cfg, "--against", str(bundle), "--localize")
    assert code == 1, output
    loc = report["localization"]
    assert loc["error"] == (
        "'train' is not a live environment (a golden bundle?): localizing runs the stages in "
        "both environments"
    )
    assert loc["summary"] == "not localized: " + loc["error"]


def test_a_bad_stages_setting_exits_2(write_project: Callable[..., Path]) -> None:
    cfg = write_project(STAGED_ADAPTER, staged_config())
    cfg.write_text(cfg.read_text().replace('"adapter:stages"', '"adapter.stages"'))
    result = run_cli("parity", "check", "--config", str(cfg))
    assert result.returncode == 2
    assert result.stderr == (
        f"Error: {cfg}: model.stages: must look like 'package.module:function' (a function "
        "giving the adapter's stages), got 'adapter.stages'\n"
    )


def test_a_drift_inside_a_pipeline_names_the_step(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    config = staged_config('DRIFT_STEP = "1"')
    cfg = write_project(PIPELINE_ADAPTER, config)
    markdown = tmp_path / "summary.md"
    code, report, output = check(cfg, "--localize", "--markdown", str(markdown))
    assert code == 1, output
    loc = report["localization"]
    assert loc["error"] is None
    assert loc["first_stage"] == "model"
    assert (loc["first_step"], loc["first_step_class"], loc["first_step_stage"]) == (
        "union/inner/shift",
        "FunctionTransformer",
        "model",
    )
    assert loc["first_module"] is None
    passed = {e["name"]: e["passed"] for e in loc["entries"]}
    assert passed["prepare"] and passed["cols/head"] and passed["cols"] and passed["union/pca"]
    assert not passed["union/inner/shift"] and not passed["union"]
    shifted = next(e for e in loc["entries"] if e["name"] == "union/inner/shift")
    assert (shifted["kind"], shifted["module"], shifted["cause"]) == (
        "step",
        "union/inner/shift",
        "tolerance",
    )
    assert shifted["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)
    assert (
        "; within stage 'model', first at step 'union/inner/shift' (FunctionTransformer: "
        in (loc["summary"])
    )
    assert loc["summary"] in output and "union/inner/shift ◀ first" in output
    assert "| `union/inner/shift` | model | FunctionTransformer | **beyond** (tolerance) |" in (
        markdown.read_text()
    )


# --- the reference model in real venvs ------------------------------------------------------


@pytest.mark.slow
def test_numpy_drift_is_localized_to_preprocessing(shared_cache: Path, tmp_path: Path) -> None:
    markdown = tmp_path / "summary.md"
    code, report, output = check(
        ROOT / "examples" / "numpy-drift" / "parity.toml",
        "--localize",
        "--cache-dir",
        str(shared_cache),
        "--markdown",
        str(markdown),
        folder=tmp_path,
    )
    assert code == 1, output
    sr = next(o for o in report["outputs"] if o["name"] == "sr")
    assert not sr["passed"]  # the check itself is as without --localize
    loc = report["localization"]
    assert loc["error"] is None
    assert (loc["output"], loc["sample"]) == ("sr", sr["worst_index"][0])
    assert loc["stages"] == ["preprocess", "model", "postprocess"]
    assert loc["first_stage"] == "preprocess"
    assert (loc["first_module"], loc["first_module_class"]) == ("conv1", "Conv2d")
    assert loc["summary"].startswith(
        "outputs first diverge in stage 'preprocess' (dtype float64 in train vs float32 in "
        "infer, max abs diff "
    )
    assert "within stage 'model', first at module 'conv1' (Conv2d: max abs diff" in loc["summary"]
    names = [(e["name"], e["kind"]) for e in loc["entries"]]
    assert names == [
        ("preprocess", "stage"),
        ("conv1", "module"),
        ("conv2", "module"),
        ("conv3", "module"),
        ("shuffle", "module"),
        ("model", "stage"),
        ("postprocess[sr]", "stage"),
        ("postprocess[sr_float]", "stage"),
    ]
    first = loc["entries"][0]
    assert (first["cause"], first["reference_dtype"], first["candidate_dtype"]) == (
        "dtype",
        "float64",
        "float32",
    )
    assert first["reference_shape"] == first["candidate_shape"] == [1, 1, 48, 48]
    assert 0 < first["max_abs_diff"] < 1e-6
    assert loc["summary"] in output and loc["summary"] in markdown.read_text()


PERTURBED_ADAPTER = """\
import os

from model import adapter as reference


def _add_a_little(module, args, output):
    return output + 1e-3


def _network():
    network = reference.load_network()
    if os.environ.get("PERTURB_MODULE") and not getattr(network, "_perturbed", False):
        getattr(network, os.environ["PERTURB_MODULE"]).register_forward_hook(_add_a_little)
        network._perturbed = True
    return network


def predict(inputs):
    _network()
    return reference.predict(inputs)


def stages():
    _network()
    return reference.stages()
"""

PERTURBED_CONFIG = """\
[model]
adapter = "perturbed:predict"
stages = "perturbed:stages"
paths = ["{root}", "src"]

[inputs]
seed = 20261126
count = 6
batch_size = 6

[inputs.arrays.lr]
shape = [48, 48]
dtype = "uint8"
generator = "image"

[environments.train]
backend = "venv"
lock = "{root}/locks/pylock.toml"
group = "train"

[environments.infer]
backend = "venv"
lock = "{root}/locks/pylock.toml"
group = "main"

[environments.infer.env]
PERTURB_MODULE = "conv2"

[run]
threads = 1
timeout = 600

[tolerance.outputs.sr_float]
atol = 1e-6
"""


@pytest.mark.slow
def test_a_perturbation_inside_the_network_is_localized_to_its_module(
    write_project: Callable[..., Path], shared_cache: Path, tmp_path: Path
) -> None:
    cfg = write_project(
        PERTURBED_ADAPTER, PERTURBED_CONFIG.format(root=ROOT.as_posix()), module="perturbed"
    )
    code, report, output = check(cfg, "--localize", "--cache-dir", str(shared_cache))
    assert code == 1, output
    assert [d["name"] for d in report["version_diffs"]] == ["tqdm"]  # one lock: only the model
    loc = report["localization"]
    assert loc["error"] is None
    assert loc["first_stage"] == "model"
    assert (loc["first_module"], loc["first_module_class"]) == ("conv2", "Conv2d")
    passed = {e["name"]: e["passed"] for e in loc["entries"]}
    assert passed["preprocess"] and passed["conv1"]
    assert not passed["conv2"] and not passed["conv3"] and not passed["model"]
    conv2 = next(e for e in loc["entries"] if e["name"] == "conv2")
    assert conv2["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert "first diverge in stage 'model'" in loc["summary"]
    assert "first at module 'conv2' (Conv2d: max abs diff 0.001" in loc["summary"]


@pytest.mark.slow
def test_predict_is_the_composition_of_the_stages(shared_cache: Path) -> None:
    from envlock import read_lock
    from envlock.backends import VenvBackend

    lock = read_lock(ROOT / "locks" / "pylock.toml")
    python = VenvBackend(shared_cache).materialize(lock, "main").python
    code = textwrap.dedent(
        """\
        import numpy as np, torch
        from model import adapter
        from model.preprocess import postprocess, preprocess
        lr = np.random.default_rng(3).integers(0, 256, (4, 48, 48), dtype=np.uint8)
        got = adapter.predict({"lr": lr})
        value = {"lr": lr}
        for name, fn, *module in adapter.stages():
            value = fn(value)
        # predict as it was before the stages were split out of it
        x = preprocess(lr)
        y = adapter.load_network()(torch.from_numpy(x).to(dtype=torch.float32)).numpy()
        before = {"sr": postprocess(y), "sr_float": np.ascontiguousarray(y[:, 0], np.float32)}
        for name in ("sr", "sr_float"):
            assert got[name].dtype == value[name].dtype == before[name].dtype, name
            assert got[name].tobytes() == value[name].tobytes() == before[name].tobytes(), name
        print("same")
        """
    )
    done = subprocess.run(
        [python, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == "same", done.stderr


@pytest.mark.slow
def test_the_sklearn_drift_is_localized_to_the_pipelines_rescale_step(
    sklearn_drift: Path, shared_cache: Path, tmp_path: Path
) -> None:
    project = sklearn_drift
    cfg = sklearn_drift_config(
        project,
        "localize.toml",
        model={
            "adapter": "segclf.adapter:predict_scores",
            "stages": "segclf.adapter:stages_scores",
        },
        inputs={"count": 64, "batch_size": 32},
        run={"timeout": 600},
        tolerance={"atol": 0, "rtol": 0},
        policy={"fail_on_version_diffs": []},
    )

    code, report, output = check(cfg, "--localize", "--cache-dir", str(shared_cache))
    assert code == 1, output
    scores = next(o for o in report["outputs"] if o["name"] == "scores")
    assert not scores["passed"] and 0 < scores["max_abs_diff"] < 1e-5
    loc = report["localization"]
    assert loc["error"] is None
    assert (loc["output"], loc["sample"]) == ("scores", scores["worst_index"][0])
    assert loc["stages"] == ["model"]
    assert loc["first_stage"] == "model"
    assert (loc["first_step"], loc["first_step_class"], loc["first_step_stage"]) == (
        "rescale",
        "FunctionTransformer",
        "model",
    )
    assert loc["first_module"] is None
    names = [(e["name"], e["kind"], e["module_class"]) for e in loc["entries"]]
    assert names == [
        ("rescale", "step", "FunctionTransformer"),
        ("scale", "step", "StandardScaler"),
        ("logreg", "step", "LogisticRegression"),
        ("model[scores]", "stage", None),
    ]
    rescale = loc["entries"][0]
    # NumPy 1.26 keeps float32 * float64-scalar in float32; NumPy 2 (NEP 50) gives float64
    assert (rescale["passed"], rescale["cause"]) == (False, "dtype")
    assert (rescale["reference_dtype"], rescale["candidate_dtype"]) == ("float32", "float64")
    assert rescale["reference_shape"] == rescale["candidate_shape"] == [1, 8]
    assert 0 < rescale["max_abs_diff"] < 1e-6
    assert (
        "; within stage 'model', first at step 'rescale' (FunctionTransformer: dtype float32 "
        "in train vs float64 in infer, max abs diff "
    ) in loc["summary"]
    assert loc["summary"] in output
    assert "rescale ◀ first" in output
    assert "parity: localize: outputs first diverge in stage 'model'" in output
