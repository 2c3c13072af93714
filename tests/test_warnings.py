"""Warnings as findings: what each environment's worker caught while the model loaded and
predicted (Python warnings, every one counted; log records of level WARNING and above),
in every report format, and `[policy] fail_on_warnings` deciding which fail the check.

The fast tests use the `local` backend (this interpreter, which has scikit-learn: its
real `InconsistentVersionWarning`) with an environment variable that makes the candidate
warn; the slow one trains the sklearn-drift example under scikit-learn 1.3.2 and checks it
against 1.6.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from conftest import LOCAL_CONFIG, ROOT, assert_valid_report, run_cli, sklearn_drift_config
from sklearn.exceptions import InconsistentVersionWarning

import envlock.probe
from parity.check import run_check
from parity.config import load_config
from parity.errors import ConfigError
from parity.runs import worker

# scikit-learn's own words (they end with a second line, a link to its documentation)
VERSION_MESSAGE = str(
    InconsistentVersionWarning(
        estimator_name="StandardScaler",
        current_sklearn_version="1.6.1",
        original_sklearn_version="1.3.2",
    )
)
VERSION_LINE = VERSION_MESSAGE.splitlines()[0]
MISMATCH = "Detected one or more mismatches between the model's dependencies and the current"

# Like a model pickled under an older scikit-learn, in the environment that sets OLD: the
# real InconsistentVersionWarning once per batch (the inputs come in 3 batches), and a
# dependency-mismatch record from a logger that does not propagate, as MLflow's do. Both
# environments warn once while loading and once per batch with a UserWarning of their own.
ADAPTER = f"""\
import logging
import os
import warnings

from sklearn.exceptions import InconsistentVersionWarning

warnings.warn("loading the segmentation weights", DeprecationWarning)
logging.getLogger("mlflow").propagate = False
logging.getLogger("mlflow").addHandler(logging.NullHandler())
log = logging.getLogger("mlflow.utils.requirements_utils")


def predict(inputs):
    warnings.warn("the batch is not contiguous")
    if os.environ.get("OLD"):
        warnings.warn(
            InconsistentVersionWarning(
                estimator_name="StandardScaler",
                current_sklearn_version="1.6.1",
                original_sklearn_version="1.3.2",
            )
        )
        log.warning("{MISMATCH} Python environment: scikit-learn==1.3.2 (current: 1.6.1)")
    log.info("an info record is not a warning")
    return {{"y": inputs["x"] * 2}}
"""

WARNING_CONFIG = LOCAL_CONFIG.format(timeout=120) + '\n[environments.infer.env]\nOLD = "1"\n'


def by_env(report: dict[str, object], env: str) -> dict[str, dict[str, object]]:
    """The report's warnings caught in `env`, by category."""
    warnings = report.get("warnings", [])
    assert isinstance(warnings, list)
    return {w["category"]: w for w in warnings if w["environment"] == env}


def test_a_version_warning_only_in_infer_fails_the_check_in_every_format(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(ADAPTER, WARNING_CONFIG)
    out = tmp_path / "out"
    result = run_cli(
        "parity",
        "check",
        "--config",
        str(cfg),
        "--json",
        str(out / "r.json"),
        "--junit",
        str(out / "r.xml"),
        "--markdown",
        str(out / "r.md"),
        "--html",
        str(out / "r.html"),
        "--mlflow-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((out / "r.json").read_text())
    assert_valid_report(report)
    assert all(o["passed"] for o in report["outputs"]) and report["version_diffs"] == []
    category = "sklearn.exceptions.InconsistentVersionWarning"
    one_line = " ".join(VERSION_MESSAGE.split())
    assert report["reasons"] == [f"warning in infer only: {category}: {one_line} (3 times)"]

    infer, train = by_env(report, "infer"), by_env(report, "train")
    version = infer[category]
    assert (version["count"], version["only_here"], version["fails"]) == (3, True, True)
    assert version["message"] == VERSION_MESSAGE and version["level"] is None
    assert version["bases"] == ["UserWarning", "Warning"] and version["rule"] == category
    assert version["first"].endswith("src/adapter.py:16")  # its warnings.warn
    logged = infer["log:mlflow.utils.requirements_utils"]  # the logger did not propagate
    assert (logged["count"], logged["level"], logged["only_here"], logged["fails"]) == (
        3,
        "WARNING",
        True,
        False,
    )
    assert logged["message"].startswith(MISMATCH)
    # Every warning counted, per environment, not once per place: 3 batches, 1 load.
    for env in (infer, train):
        assert env["UserWarning"]["count"] == 3 and not env["UserWarning"]["only_here"]
        assert env["DeprecationWarning"]["count"] == 1
    assert set(train) == {"UserWarning", "DeprecationWarning"}
    assert "warnings_dropped" not in report
    # The version warning first: failing ones lead each environment's list.
    assert [w["category"] for w in report["warnings"]][:3] == [
        "DeprecationWarning",
        "UserWarning",
        category,
    ]

    text = result.stdout
    assert f"only in infer: {category}, log:mlflow.utils.requirements_utils" in text
    assert f"[infer] {category} (3 times, only here, fails)" in text
    assert VERSION_LINE in text and "[train] UserWarning (3 times)" in text

    junit = ElementTree.parse(out / "r.xml").getroot()
    import xmlschema

    xmlschema.XMLSchema(ROOT / "tests" / "data" / "junit" / "junit-10.xsd").validate(
        str(out / "r.xml")
    )
    failing = junit.findall(".//testcase[@classname='parity.warnings']/failure/..")
    assert [c.get("name") for c in failing] == [f"infer: {category}"]
    assert VERSION_MESSAGE in (failing[0].find("failure").text or "")  # type: ignore[union-attr]
    # The others, failing nothing, are in the suite's output: the counts stay the outputs'.
    listed = {c.get("name") for c in junit.findall(".//testcase[@classname='parity.warnings']")}
    assert listed == {f"infer: {category}"}
    assert (junit.get("tests"), junit.get("failures")) == ("2", "1")
    others = junit.findtext("testsuite/system-out") or ""
    assert "[train] UserWarning: the batch is not contiguous\n(3 times, first at" in others
    assert "[infer] log:mlflow.utils.requirements_utils [WARNING]: Detected" in others

    markdown = (out / "r.md").read_text()
    assert "### Warnings" in markdown and f"**only in infer**: `{category}`" in markdown
    cell = VERSION_MESSAGE.replace("\n", " ")
    assert f"| infer | `{category}` | 3 | **fails** | {cell} |" in markdown
    html = (out / "r.html").read_text()
    assert "<h2>Warnings</h2>" in html and f"<code>{category}</code>" in html
    assert "Trying to unpickle estimator StandardScaler" in html

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("parity").experiment_id])[0]
    tag = run.data.tags["parity.warnings"]
    assert tag.splitlines()[0] == f"[infer] {category} x3 (fails, only here): {VERSION_LINE}"
    assert run.data.metrics["warnings.infer"] == 3 + 3 + 3 + 1
    assert run.data.metrics["warnings.train"] == 3 + 1


def test_the_policy_decides_which_warnings_fail(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(
        ADAPTER, WARNING_CONFIG + "\n[policy]\nfail_on_warnings = []\n"
    )  # off: reported, never failing
    report = run_check(load_config(cfg))
    assert report.verdict == "pass" and report.reasons == []
    assert_valid_report(json.loads(report.to_json()))
    assert {(w.environment, w.category, w.only_here, w.fails) for w in report.warnings} >= {
        ("infer", "sklearn.exceptions.InconsistentVersionWarning", True, False)
    }

    # A log record by logger and message text; a warning class by a base class and text.
    cfg.write_text(
        WARNING_CONFIG
        + "\n[policy]\nfail_on_warnings = [\n"
        + '  "log:mlflow: mismatches between the model\'s dependencies",\n'
        + '  "UserWarning: not contiguous",\n'
        + "]\n"
    )
    report = run_check(load_config(cfg))
    assert report.verdict == "fail"
    failing = sorted((w.environment, w.category, w.rule) for w in report.warnings if w.fails)
    assert failing == [
        ("infer", "UserWarning", "UserWarning: not contiguous"),
        (
            "infer",
            "log:mlflow.utils.requirements_utils",
            "log:mlflow: mismatches between the model's dependencies",
        ),
        ("train", "UserWarning", "UserWarning: not contiguous"),
    ]
    assert any(r.startswith("warning in infer only: log:mlflow.utils") for r in report.reasons)
    # By a base class: the version warning is a UserWarning whose text is not that one.
    assert not by_env(json.loads(report.to_json()), "infer")[
        "sklearn.exceptions.InconsistentVersionWarning"
    ]["fails"]


def test_a_model_that_fails_leaves_its_warnings_and_the_bound_holds(
    write_project: Callable[..., Path],
) -> None:
    cfg = write_project(
        """\
        import os
        import time
        import warnings

        def predict(inputs):
            if os.environ.get("OLD"):
                warnings.warn("the weights were saved by another version", FutureWarning)
            for i in range(250):
                warnings.warn(f"feature {i} is constant", RuntimeWarning)
            if os.environ.get("OLD"):
                time.sleep(5)  # train has finished: the failure does not stop it mid-run
                raise ValueError("weights file is corrupt")
            return {"y": inputs["x"]}
        """,
        WARNING_CONFIG,
    )
    report = run_check(load_config(cfg))
    assert report.verdict == "error" and report.reasons == []
    data = json.loads(report.to_json())
    assert_valid_report(data)
    # The warnings before the failure are evidence: the one batch that ran, 250 + 1 warned.
    infer = by_env(data, "infer")
    assert infer["FutureWarning"]["message"] == "the weights were saved by another version"
    warnings = [w for w in data["warnings"] if w["environment"] == "infer"]
    assert len(warnings) == worker.WARNING_ENTRIES  # at most 200 distinct
    # train ran 3 batches of 250 distinct warnings: 200 listed (3 times each), the other
    # 50 counted each time; infer's one batch: its FutureWarning and 199 listed, 51 counted.
    assert data["warnings_dropped"] == {"train": 150, "infer": 51}
    train = [w for w in data["warnings"] if w["environment"] == "train"]
    assert len(train) == 200 and {w["count"] for w in train} == {3}
    from parity.render.terminal import render_text

    text = render_text(report)
    assert "150 more warnings in train, past the worker's limit" in text
    assert "ValueError: weights file is corrupt" in text


def test_each_worker_mode_writes_its_warnings(tmp_path: Path) -> None:
    """stages (localization) and serve (search) catch warnings as predict does."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "staged.py").write_text(
        "import logging, warnings\n"
        "warnings.warn('old weights', FutureWarning)\n"
        "warnings.filterwarnings('ignore', message='silenced')\n"
        "def predict(batch):\n"
        "    warnings.warn('per call')\n"
        "    warnings.warn('silenced by the model itself while loading')\n"
        "    logging.getLogger('model').error('saturated')\n"
        "    return {'y': batch['x']}\n"
        "def stages():\n"
        "    return [('scale', lambda b: b['x'] * 2), ('out', lambda x: {'y': x})]\n"
    )
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, x=np.ones((1, 3), dtype=np.float32))
    base = {
        "schema": worker.JOB_SCHEMA,
        "adapter": "staged:predict",
        "paths": [str(src)],
        "probe": envlock.probe.__file__,
        "inputs": str(inputs),
        "count": 1,
        "batch_size": 1,
    }

    def job(name: str, **fields: object) -> tuple[Path, Path]:
        out = tmp_path / name
        out.mkdir()
        (out / "job.json").write_text(json.dumps({**base, "outdir": str(out), **fields}))
        return out, out / "job.json"

    out, path = job("stages", mode="stages", stages="staged:stages")
    done = subprocess.run([sys.executable, worker.__file__, str(path)], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert b"FutureWarning: old weights" in done.stderr  # still printed, as Python does
    caught = json.loads((out / "warnings.json").read_text())
    assert [(e["category"], e["count"]) for e in caught["entries"]] == [("FutureWarning", 1)]

    out, path = job(
        "serve", mode="serve", requests=str(tmp_path / "requests"), stop=str(tmp_path / "stop")
    )
    (tmp_path / "requests").mkdir()
    served = subprocess.Popen([sys.executable, worker.__file__, str(path)])
    try:
        for n in (1, 2):
            np.savez(tmp_path / "requests" / "r.npz", x=np.ones((2, 3), dtype=np.float32))
            os.replace(tmp_path / "requests" / "r.npz", tmp_path / "requests" / f"request-{n}.npz")
            deadline = time.monotonic() + 60
            while not (out / f"response-{n}.npz").exists():
                assert time.monotonic() < deadline and served.poll() is None
                time.sleep(0.05)
        caught = json.loads((out / "warnings.json").read_text())
    finally:
        (tmp_path / "stop").touch()
        served.wait(30)
    assert {(e["category"], e["count"], e["level"]) for e in caught["entries"]} == {
        ("FutureWarning", 1, None),
        ("UserWarning", 2, None),
        ("log:model", 2, "ERROR"),
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("not a class", "must be a warning class's full name"),
        ("log:", "must name a logger after 'log:'"),
        ("UserWarning:", "nothing after ':'"),
        ("log:mlflow:  ", "nothing after ':'"),
    ],
)
def test_a_bad_fail_on_warnings_entry_names_its_key(
    write_project: Callable[..., Path], entry: str, message: str
) -> None:
    cfg = write_project(
        ADAPTER,
        WARNING_CONFIG + f"\n[policy]\nfail_on_warnings = [{json.dumps(entry)}]\n",
    )
    with pytest.raises(ConfigError, match=r"policy\.fail_on_warnings\[0\]") as raised:
        load_config(cfg)
    assert message in str(raised.value)


def test_the_default_fails_on_scikit_learns_version_warning_only(
    write_project: Callable[..., Path],
) -> None:
    config = load_config(write_project(ADAPTER, WARNING_CONFIG))
    assert [r.entry for r in config.fail_on_warnings] == [
        "sklearn.exceptions.InconsistentVersionWarning"
    ]


@pytest.mark.slow
def test_the_sklearn_drift_example_fails_only_for_its_version_warning(
    sklearn_drift: Path, shared_cache: Path, tmp_path: Path
) -> None:
    """Pickled under scikit-learn 1.3.2, loaded under 1.6.1: the outputs agree exactly,
    and the check fails because of the InconsistentVersionWarning in infer alone."""
    project = sklearn_drift
    cfg = sklearn_drift_config(project, "warnings.toml", policy={"fail_on_version_diffs": []})
    cache = ("--cache-dir", str(shared_cache))

    result = run_cli(
        "parity", "check", "--config", str(cfg), *cache, "--json", str(tmp_path / "r.json")
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert_valid_report(report)
    assert [(o["name"], o["max_abs_diff"]) for o in report["outputs"]] == [
        ("label", 0),
        ("proba", 0),
        ("segment", 0),
    ]
    category = "sklearn.exceptions.InconsistentVersionWarning"
    failing = [w for w in report["warnings"] if w["fails"]]
    assert {(w["environment"], w["category"], w["only_here"]) for w in failing} == {
        ("infer", category, True)
    }
    assert category not in by_env(report, "train")
    estimators = sorted(w["message"].split()[4] for w in failing)
    assert "StandardScaler" in estimators and "KMeans" in estimators
    for w in failing:
        assert "from version 1.3.2 when using version 1.6.1" in w["message"]
    assert len(report["reasons"]) == len(failing)
    assert all(r.startswith(f"warning in infer only: {category}: ") for r in report["reasons"])
    assert "Trying to unpickle estimator StandardScaler from version 1.3.2" in result.stdout
    assert f"only in infer: {category}" in result.stdout

    cfg = sklearn_drift_config(
        project, "warnings.toml", policy={"fail_on_version_diffs": [], "fail_on_warnings": []}
    )
    passed = run_cli(
        "parity", "check", "--config", str(cfg), *cache, "--json", str(tmp_path / "r.json")
    )
    assert passed.returncode == 0, passed.stdout + passed.stderr
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["verdict"] == "pass" and again["reasons"] == []
    assert {w["category"] for w in again["warnings"] if w["environment"] == "infer"} >= {category}
