"""Checks logged to real MLflow (a SQLite store and a server on 127.0.0.1): the run, its
metrics and artifacts, and the registry tag (and alias) on the model version."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, LOCAL_CONFIG, checked, run_cli

from parity.integrations.mlflow import (
    MlflowTarget,
    TrackingError,
    UnknownModelVersionError,
    check_model_version,
    default_tracking_uri,
    log_check,
    redacted,
)


def registered(uri: str, tmp_path: Path) -> tuple[str, str]:
    """A registered model with one version, as training would have left it."""
    name, version, _ = trained(uri, tmp_path)
    return name, version


def trained(uri: str, tmp_path: Path) -> tuple[str, str, str]:
    """A training run that logged a model, registered as a version: name, version, run id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    location = (tmp_path / "training-artifacts").as_uri()
    training = client.create_run(client.create_experiment("training", location))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"\0" * 16)
    client.log_artifacts(training.info.run_id, str(model_dir), "model")
    client.create_registered_model("espcn")
    version = client.create_model_version(
        "espcn", f"{training.info.artifact_uri}/model", run_id=training.info.run_id
    )
    return "espcn", str(version.version), training.info.run_id


def exercise(uri: str, tmp_path: Path) -> None:
    """The whole loop against one store: a pass tags and aliases, a fail tags and takes the
    alias back."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name, version = registered(uri, tmp_path)
    target = MlflowTarget(uri, model_name=name, model_version=version, alias="validated")
    (tmp_path / "report.json").write_text(checked(0.0).to_json())

    run_id = log_check(checked(0.0), target, [tmp_path / "report.json"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["parity.verdict"] == "pass"
    assert run.data.params["input_digest"] == "sha256:" + "ab" * 32
    assert run.data.params["policy.sr"] == "allclose(atol=0.001, rtol=0)"
    assert run.data.params["model"] == f"{name}/{version}"
    assert run.data.metrics["passed"] == 1.0
    assert run.data.metrics["sr.max_abs_diff"] == 0.0
    assert [a.path for a in client.list_artifacts(run_id, "parity")] == ["parity/report.json"]
    mv = client.get_model_version(name, version)
    assert mv.tags["parity"] == "passed" and mv.tags["parity_run_id"] == run_id
    assert str(client.get_model_version_by_alias(name, "validated").version) == version

    failed = checked(0.01)
    fail_id = log_check(failed, target)
    run = client.get_run(fail_id)
    assert run.data.tags["parity.verdict"] == "fail"
    assert run.data.metrics["passed"] == 0.0
    assert run.data.metrics["sr.mismatched"] == 200
    assert run.data.metrics["sr.max_abs_diff"] == pytest.approx(0.01, rel=1e-5)
    assert run.data.tags["parity.reasons"].startswith("output 'sr': 200 of 200 elements")
    mv = client.get_model_version(name, version)
    assert mv.tags["parity"] == "failed" and mv.tags["parity_run_id"] == fail_id
    # A failure of the version the alias points at takes the alias off it (issue 14).
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="alias validated not found"):
        client.get_model_version_by_alias(name, "validated")


@pytest.mark.slow
def test_a_check_is_logged_to_the_projects_sqlite_store(tmp_path: Path) -> None:
    uri = default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    exercise(uri, tmp_path)
    assert (tmp_path / "mlflow.db").is_file()
    # Artifacts live next to the database, not in the folder the check ran from.
    assert list((tmp_path / "mlartifacts").rglob("report.json"))


def test_an_unknown_model_version_is_refused_before_anything_is_logged(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = default_tracking_uri(tmp_path)
    target = MlflowTarget(uri, model_name="nope", model_version="1")
    with pytest.raises(UnknownModelVersionError, match=r"no registered model 'nope'") as e:
        log_check(checked(0.0), target)
    assert e.value.exit_code == 2  # the user's mistake, not the registry's
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("parity")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []


def test_an_unreachable_registry_is_still_an_infrastructure_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow's own retries (7, backoff factor 2 by default: about four minutes against a
    # closed port) are the user's to set; one retry shows the same outcome.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = MlflowTarget(f"http://127.0.0.1:{port}", model_name="segclf", model_version="1")
    with pytest.raises(TrackingError) as e:
        check_model_version(target)
    assert e.value.exit_code == 3


def test_credentials_in_a_tracking_uri_are_never_shown() -> None:
    assert redacted("https://bot:s3cret@mlflow.example:8443/x") == (
        "https://bot:***@mlflow.example:8443/x"
    )
    assert redacted("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store and artifact folder."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_a_check_is_logged_to_an_mlflow_server(mlflow_server: str, tmp_path: Path) -> None:
    exercise(mlflow_server, tmp_path)
    assert list((tmp_path / "server-artifacts").rglob("report.json"))


CLI_ADAPTER = """\
import os
import numpy as np

def predict(inputs):
    y = inputs["x"] * np.float32(2)
    if os.environ.get("DRIFT"):
        y = y + np.float32(1e-3)
    return {"y": y}
"""


@pytest.mark.slow
def test_parity_check_tags_the_model_version_it_vouches_for(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    cfg = write_project(CLI_ADAPTER, LOCAL_CONFIG.format(timeout=120))
    uri = default_tracking_uri(tmp_path)  # the default: next to the config
    name, version = registered(uri, tmp_path)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    args = ["check", "--config", str(cfg), "--model", f"models:/{name}/{version}"]

    passed = run_cli("parity", *args, "--alias", "validated", "--markdown", str(tmp_path / "r.md"))
    assert passed.returncode == 0, passed.stderr
    run_id = client.get_model_version(name, version).tags["parity_run_id"]
    assert f"logged to MLflow at {uri}: run {run_id}; {name}/{version} tagged" in passed.stderr
    assert client.get_model_version(name, version).tags["parity"] == "passed"
    assert str(client.get_model_version_by_alias(name, "validated").version) == version
    logged = {a.path for a in client.list_artifacts(run_id, "parity")}
    assert logged == {"parity/r.md", "parity/report.json"}

    drifted = cfg.read_text() + '\n[environments.infer.env]\nDRIFT = "1"\n'
    cfg.write_text(drifted)
    failed = run_cli("parity", *args)
    assert failed.returncode == 1, failed.stderr
    tags = client.get_model_version(name, version).tags
    assert tags["parity"] == "failed" and tags["parity_run_id"] != run_id
    assert client.get_run(tags["parity_run_id"]).data.tags["parity.verdict"] == "fail"

    bad = run_cli("parity", "check", "--config", str(cfg), "--alias", "validated")
    assert bad.returncode == 2
    assert "--alias moves an alias to --model's version: add --model" in bad.stderr


@pytest.mark.slow
def test_a_bundle_recorded_into_the_training_run_is_checked_from_the_registry(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    cfg = write_project(CLI_ADAPTER, LOCAL_CONFIG.format(timeout=120))
    uri = default_tracking_uri(tmp_path)
    name, version, run_id = trained(uri, tmp_path)
    recorded = run_cli(
        "parity", "record", "--config", str(cfg), "--out", str(tmp_path / "golden"),
        "--mlflow-run", run_id,
    )  # fmt: skip
    assert recorded.returncode == 0, recorded.stderr
    assert f"logged to MLflow at {uri}: runs:/{run_id}/parity-bundle" in recorded.stdout
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(run_id)
    assert run.data.params["parity.input_digest"].startswith("sha256:")
    logged = {a.path for a in client.list_artifacts(run_id, "parity-bundle")}
    assert {"parity-bundle/fingerprint.json", "parity-bundle/manifest.json"} <= logged

    checked = run_cli(
        "parity", "check", "--config", str(cfg), "--against", f"models:/{name}/{version}",
        "--model", f"{name}/{version}", "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert client.get_model_version(name, version).tags["parity"] == "passed"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["against"]["environment"] == "train"


MODEL_FROM_CODE = """\
import mlflow
import numpy as np


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return {"y": np.asarray(model_input["x"]) * np.float32(2)}


mlflow.models.set_model(Doubler())
"""


@pytest.mark.slow
def test_an_mlflow_pyfunc_model_is_the_adapter(
    write_project: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    uri = default_tracking_uri(tmp_path)
    code = tmp_path / "doubler.py"
    code.write_text(MODEL_FROM_CODE)
    # set_tracking_uri also exports MLFLOW_TRACKING_URI; set through monkeypatch, it is undone
    # after the test, else the `parity` processes of later tests would log to this store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("models", (tmp_path / "models").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.pyfunc.log_model(name="model", python_model=str(code))
    config = (
        LOCAL_CONFIG.format(timeout=300).replace(
            'adapter = "adapter:predict"', f'adapter = "mlflow:runs:/{run.info.run_id}/model"'
        )
        + f'\n[run.env]\nMLFLOW_TRACKING_URI = "{uri}"\n'
    )
    cfg = write_project("", config)
    out = tmp_path / "r.json"
    result = run_cli("parity", "check", "--config", str(cfg), "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert [(o["name"], o["candidate_shape"]) for o in report["outputs"]] == [("y", [12, 3, 4])]


GATE_ADAPTER = """\
import os
import numpy as np

def predict(inputs):
    if os.environ.get("BOOM"):
        raise RuntimeError("no weights")
    y = inputs["x"] * np.float32(2)
    if os.environ.get("DRIFT"):
        y = y + np.float32(1e-3)
    return {"y": y}
"""


def two_versions(uri: str) -> Any:
    """A registered model `segclf` with versions 1 and 2, as two trainings would leave it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("segclf")
    for _ in range(2):
        client.create_model_version("segclf", "file:///nowhere/model")
    return client


@pytest.mark.slow
def test_the_alias_is_the_gate_a_failing_or_erroring_check_closes(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(GATE_ADAPTER, LOCAL_CONFIG.format(timeout=120))
    good = cfg.read_text()
    drifted = good + '\n[environments.infer.env]\nDRIFT = "1"\n'
    erroring = good + '\n[environments.infer.env]\nBOOM = "1"\n'
    client = two_versions(default_tracking_uri(tmp_path))

    def check(config: str, version: str) -> subprocess.CompletedProcess[str]:
        cfg.write_text(config)
        args = ["--config", str(cfg), "--model", f"segclf/{version}", "--alias", "validated"]
        return run_cli("parity", "check", *args)

    def alias() -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(client.get_model_version_by_alias("segclf", "validated").version)
        except MlflowException:
            return None

    assert check(good, "1").returncode == 0
    assert alias() == "1"

    # A failing check of another version says nothing about version 1: the alias stays.
    other = check(drifted, "2")
    assert other.returncode == 1, other.stderr
    assert client.get_model_version("segclf", "2").tags["parity"] == "failed"
    assert alias() == "1"
    assert "removed alias" not in other.stderr

    failed = check(drifted, "1")
    assert failed.returncode == 1, failed.stderr
    assert alias() is None
    assert "removed alias 'validated' from segclf/1: the check failed" in failed.stderr

    assert check(good, "1").returncode == 0
    assert alias() == "1"
    errored = check(erroring, "1")
    assert errored.returncode == 3, errored.stderr
    assert client.get_model_version("segclf", "1").tags["parity"] == "error"
    assert alias() is None
    assert "removed alias 'validated' from segclf/1: the check ended in an error" in (
        errored.stderr
    )


@pytest.mark.slow
def test_an_unknown_model_or_version_is_a_usage_error_before_the_check_runs(
    write_project: Callable[..., Path], tmp_path: Path
) -> None:
    cfg = write_project(GATE_ADAPTER, LOCAL_CONFIG.format(timeout=120))
    uri = default_tracking_uri(tmp_path)
    client = two_versions(uri)
    workdir = tmp_path / "work"
    for ref, message in [
        ("segclf/9", f"--model segclf/9: registered model 'segclf' has no version 9 "
         f"in MLflow at {uri}"),
        ("nope/1", f"--model nope/1: no registered model 'nope' in MLflow at {uri}"),
    ]:  # fmt: skip
        result = run_cli(
            "parity", "check", "--config", str(cfg), "--model", ref, "--workdir", str(workdir)
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"Error: {message}\n"
        assert not workdir.exists()  # nothing ran
    experiment = client.get_experiment_by_name("parity")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []
