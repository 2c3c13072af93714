"""Log a parity check to MLflow, and mark the model version it was about.

One MLflow run per check: params (environments, input digest, lock digests, policies),
a metric per output and statistic, the verdict as a tag, the warnings each environment
caught as the tag `parity.warnings` and the metric `warnings.<environment>` (occurrences),
the rendered reports as artifacts. When the check names a registered model version, that
version gets the tag `parity` = `passed` / `failed` / `error` and `parity_run_id`; on a
pass an alias (for example `validated`) can be moved to it, so deployment can ask for
`models:/name@alias`. On a failure or an error that alias is taken off the version if it
points there: the alias is the gate deployment trusts, so it must never outlive a failed
check.

The default store is a SQLite database next to the parity config (`mlflow.db`, artifacts
in `mlartifacts/`); any tracking URI MLflow understands works the same, a server on
127.0.0.1 included. MLflow is imported only here, and only when logging is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from envlock.progress import Progress
from parity.errors import ParityError
from parity.integrations.fields import check_metrics, check_params

if TYPE_CHECKING:
    from parity.bundle import Bundle
    from parity.report import ParityReport

EXPERIMENT = "parity"


class TrackingError(ParityError):
    """MLflow could not be reached or refused what was logged."""

    exit_code = 3


class UnknownModelVersionError(ParityError):
    """`--model` names a registered model or version the registry does not have."""

    exit_code = 2


@dataclass(frozen=True)
class MlflowTarget:
    """Where a check is logged, and which registered model version it vouches for."""

    tracking_uri: str
    experiment: str = EXPERIMENT
    model_name: str | None = None
    model_version: str | None = None
    alias: str | None = None


def default_tracking_uri(project: Path) -> str:
    """The project's own store: `sqlite:///<project>/mlflow.db`."""
    return f"sqlite:///{(project / 'mlflow.db').resolve()}"


def redacted(uri: str) -> str:
    """`uri` without a password (tracking URIs may carry credentials)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else "***@"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))


def check_model_version(target: MlflowTarget) -> None:
    """Fail (exit 2, naming both) unless the registry has `target`'s model and version.

    A mistyped `--model` is the user's error, not the registry's: it is refused before the
    check runs, so nothing is replayed or logged for a version that does not exist."""
    if not (target.model_name and target.model_version):
        return
    try:
        _check_model_version(target)
    except ParityError:
        raise
    except Exception as e:
        raise _tracking_error(target.tracking_uri, e) from None


def _check_model_version(target: MlflowTarget) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    assert target.model_name and target.model_version  # check_model_version made sure
    client = MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
    where = f"in MLflow at {redacted(target.tracking_uri)}"
    ref = f"--model {target.model_name}/{target.model_version}"
    try:
        client.get_registered_model(target.model_name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise UnknownModelVersionError(
            f"{ref}: no registered model {target.model_name!r} {where}"
        ) from None
    try:
        client.get_model_version(target.model_name, target.model_version)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise UnknownModelVersionError(
            f"{ref}: registered model {target.model_name!r} has no version "
            f"{target.model_version} {where}"
        ) from None


def log_check(
    report: ParityReport,
    target: MlflowTarget,
    artifacts: list[Path] | None = None,
    say: Progress | None = None,
) -> str:
    """Log `report` as an MLflow run (and tag the model version, if named); its run id.
    `artifacts` (the rendered reports) go under `parity/` in the run; `say` hears when the
    alias is taken off the version."""
    check_model_version(target)
    try:
        return _log_check(report, target, artifacts or [], say or (lambda _: None))
    except ParityError:
        raise
    except Exception as e:  # MLflow raises MlflowException, requests and sqlalchemy errors
        raise _tracking_error(target.tracking_uri, e) from None


def _log_check(
    report: ParityReport, target: MlflowTarget, artifacts: list[Path], say: Progress
) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
    experiment_id = _experiment(client, target)
    run = client.create_run(
        experiment_id,
        run_name=f"parity {report.candidate} vs {report.reference}",
        tags={"parity.verdict": report.verdict, "parity.config": report.config},
    )
    run_id: str = run.info.run_id
    params = [Param(k, v) for k, v in _params(report, target).items()]
    tags = [RunTag("parity.reasons", "\n".join(report.reasons)[:5000])] if report.reasons else []
    if report.warnings:
        tags.append(RunTag("parity.warnings", _warnings_tag(report)))
    metrics = [
        Metric(key, value, int(run.info.start_time), 0)
        for key, value in check_metrics(report).items()
    ]
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path="parity")
    client.set_terminated(run_id, "FAILED" if report.verdict == "error" else "FINISHED")
    if target.model_name and target.model_version:
        word = {"pass": "passed", "fail": "failed", "error": "error"}[report.verdict]
        client.set_model_version_tag(target.model_name, target.model_version, "parity", word)
        client.set_model_version_tag(
            target.model_name, target.model_version, "parity_run_id", run_id
        )
        if report.verdict == "pass" and target.alias:
            client.set_registered_model_alias(target.model_name, target.alias, target.model_version)
        elif target.alias:
            _withdraw_alias(client, target, report.verdict, say)
    return run_id


def _withdraw_alias(client: Any, target: MlflowTarget, verdict: str, say: Progress) -> None:
    """Take `target.alias` off the checked version if it points there; an alias on another
    version says nothing about this check, so it stays where it is."""
    from mlflow.exceptions import MlflowException

    assert target.model_name and target.model_version and target.alias
    try:
        current = client.get_model_version_by_alias(target.model_name, target.alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return  # no such alias yet: nothing to take back
        raise
    if str(current.version) != str(target.model_version):
        return
    client.delete_registered_model_alias(target.model_name, target.alias)
    why = "the check failed" if verdict == "fail" else "the check ended in an error"
    say(f"removed alias {target.alias!r} from {target.model_name}/{target.model_version}: {why}")


def _experiment(client: Any, target: MlflowTarget) -> str:
    found = client.get_experiment_by_name(target.experiment)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if target.tracking_uri.startswith("sqlite:///"):
        # Keep artifacts next to the database, not in whatever folder the check ran from.
        db = Path(target.tracking_uri.removeprefix("sqlite:///"))
        location = (db.parent / "mlartifacts").resolve().as_uri()
    return str(client.create_experiment(target.experiment, artifact_location=location))


def _params(report: ParityReport, target: MlflowTarget) -> dict[str, str]:
    params = check_params(report)
    if target.model_name and target.model_version:
        params["model"] = f"{target.model_name}/{target.model_version}"
    return params


def _warnings_tag(report: ParityReport) -> str:
    """The warnings, one a line, those that fail and those only one environment caught
    first (the report artifacts, when logged, have every field)."""
    ordered = sorted(report.warnings, key=lambda w: (not w.fails, not w.only_here))
    lines = []
    for w in ordered:
        marks = ", ".join(m for m, on in (("fails", w.fails), ("only here", w.only_here)) if on)
        message = w.message.strip().splitlines()[0] if w.message.strip() else ""
        lines.append(
            f"[{w.environment}] {w.category} x{w.count}{f' ({marks})' if marks else ''}: "
            f"{message[:300]}"
        )
    return "\n".join(lines)[:5000]


BUNDLE_ARTIFACTS = "parity-bundle"  # where a bundle goes in its MLflow run


def log_bundle(bundle: Bundle, target: MlflowTarget, run_id: str | None = None) -> str:
    """Log a recorded bundle to MLflow, with its digests as params: into the training
    run `run_id` (next to the model it logged), else into a new run; the run id."""
    try:
        return _log_bundle(bundle, target, run_id)
    except ParityError:
        raise
    except Exception as e:
        raise _tracking_error(target.tracking_uri, e) from None


def _log_bundle(bundle: Bundle, target: MlflowTarget, run_id: str | None) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    client = MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
    new = run_id is None
    if run_id is None:
        run_id = str(
            client.create_run(
                _experiment(client, target), run_name=f"parity record {bundle.environment.name}"
            ).info.run_id
        )
    else:
        client.get_run(run_id)  # fail early, naming the run, if it does not exist
    params = {
        "parity.environment": bundle.environment.name,
        "parity.input_digest": bundle.input_digest,
        "parity.manifest_digest": bundle.manifest_digest,
    }
    if bundle.environment.lock_digest:
        params["parity.lock_digest"] = bundle.environment.lock_digest
    tags = [RunTag("parity.bundle", f"runs:/{run_id}/{BUNDLE_ARTIFACTS}")]
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()], tags=tags)
    # The whole bundle, fingerprint.json included, exactly as its manifest describes it.
    client.log_artifacts(run_id, str(bundle.root), artifact_path=BUNDLE_ARTIFACTS)
    if new:
        client.set_terminated(run_id, "FINISHED")
    return run_id


def is_mlflow_uri(value: str) -> bool:
    """Whether `value` names an MLflow location rather than a file."""
    return value.startswith(("runs:/", "models:/"))


def download_bundle(uri: str, tracking_uri: str, dest: Path) -> Path:
    """Fetch a bundle from MLflow into `dest`: `runs:/ID/PATH`, or `models:/NAME/VERSION`
    for the bundle logged to the run that produced that model version; its folder."""
    try:
        from mlflow import MlflowClient
        from mlflow.artifacts import download_artifacts

        if uri.startswith("models:/"):
            name, _, version = uri.removeprefix("models:/").rpartition("/")
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            mv = client.get_model_version(name, version)
            if not mv.run_id:
                raise TrackingError(f"{uri}: the model version names no run to find a bundle in")
            uri = f"runs:/{mv.run_id}/{BUNDLE_ARTIFACTS}"
        local = download_artifacts(artifact_uri=uri, dst_path=str(dest), tracking_uri=tracking_uri)
    except ParityError:
        raise
    except Exception as e:
        raise _tracking_error(tracking_uri, e) from None
    return Path(local)


def _tracking_error(uri: str, e: Exception) -> TrackingError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return TrackingError(f"MLflow at {redacted(uri)}: {type(e).__name__}: {first}")
