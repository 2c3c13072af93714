"""Log a parity check to Weights & Biases as a run.

One W&B run per check (job type `parity-check`, named `parity <candidate> vs <reference>`,
tagged with the verdict): its config is the check's params (environments, input digest,
lock digests, each output's policy: `parity.integrations.fields`, as MLflow gets them),
its summary the verdict, the reasons and a metric per output and statistic
(`y.max_abs_diff`, `passed`, ...), and the rendered reports are one artifact
(`parity-reports`, type `parity-report`). The project and entity are the caller's, else
W&B's own `WANDB_PROJECT` and `WANDB_ENTITY`, else the project `parity`; `WANDB_MODE`,
`WANDB_DIR`, `WANDB_API_KEY` are W&B's as ever (`WANDB_MODE=offline` writes the run under
`WANDB_DIR` for `wandb sync`).

wandb is imported only here, and only when logging is asked for (`parity check
--wandb`, the `wandb` extra). Nothing W&B would gather on its own is sent: no command line,
git state, code, console output or system metrics (only what this module logs), and every
string logged has the values of our secret-looking variables redacted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envlock.envvars import redactor
from envlock.progress import Progress
from parity.errors import ParityError
from parity.integrations.fields import check_metrics, check_params

if TYPE_CHECKING:
    from parity.report import ParityReport

PROJECT = "parity"
JOB_TYPE = "parity-check"
ARTIFACT = "parity-reports"


class WandbMissingError(ParityError):
    """`--wandb` without wandb installed: the user's setup, not W&B's failure."""

    exit_code = 2


class WandbError(ParityError):
    """W&B refused or could not take what was logged (no API key, no network, ...)."""

    exit_code = 3


@dataclass(frozen=True)
class WandbTarget:
    """Where a check is logged: a W&B project (and entity); None for W&B's defaults."""

    project: str | None = None
    entity: str | None = None

    def resolved(self) -> WandbTarget:
        """The project and entity as W&B will use them: flags, else WANDB_*, else `parity`."""
        return WandbTarget(
            project=self.project or os.environ.get("WANDB_PROJECT") or PROJECT,
            entity=self.entity or os.environ.get("WANDB_ENTITY") or None,
        )


@dataclass(frozen=True)
class LoggedRun:
    """The W&B run a check was logged as: its id, path and where it is."""

    id: str
    path: str  # entity/project/id (project/id offline without an entity)
    url: str | None  # None offline
    folder: Path  # the run's local folder (offline: what `wandb sync` uploads)


def require_wandb() -> None:
    """Fail (exit 2) unless wandb can be imported: asked before the check runs."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise WandbMissingError(_MISSING)


_MISSING = "--wandb needs wandb: pip install 'envlock-parity[wandb]'"


def log_check(
    report: ParityReport, target: WandbTarget, artifacts: list[Path] | None = None
) -> LoggedRun:
    """Log `report` (already redacted) as a W&B run, with `artifacts` (the rendered
    reports) as one artifact; the run."""
    try:
        import wandb
    except ImportError:
        raise WandbMissingError(_MISSING) from None
    try:
        return _log_check(wandb, report, target.resolved(), artifacts or [])
    except ParityError:
        raise
    except Exception as e:  # wandb raises UsageError, CommError, AuthenticationError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WandbError(f"W&B: {type(e).__name__}: {redactor().redact(first)}") from None


def _log_check(
    wandb: Any, report: ParityReport, target: WandbTarget, artifacts: list[Path]
) -> LoggedRun:
    secrets = redactor()
    config = {k: secrets.redact(v) for k, v in check_params(report).items()}
    config["config"] = secrets.redact(report.config)
    summary: dict[str, Any] = dict(check_metrics(report))
    summary["verdict"] = report.verdict
    summary["reasons"] = secrets.redact("\n".join(report.reasons))
    if report.errors:
        summary["errors"] = secrets.redact("\n".join(report.errors))
    settings = wandb.Settings(
        console="off",  # our stdout is the report; nothing else of the process is sent
        disable_git=True,
        save_code=False,
        disable_job_creation=True,
        x_disable_meta=True,  # no command line, program, host details
        x_disable_stats=True,
        silent=True,
    )
    run = wandb.init(
        project=target.project,
        entity=target.entity,
        name=secrets.redact(f"parity {report.candidate} vs {report.reference}"),
        job_type=JOB_TYPE,
        tags=[report.verdict],
        config=config,
        settings=settings,
        reinit="create_new",
    )
    try:
        run.summary.update(summary)
        if artifacts:
            artifact = wandb.Artifact(ARTIFACT, type="parity-report")
            for path in artifacts:
                artifact.add_file(str(path), name=path.name)
            run.log_artifact(artifact)
        logged = LoggedRun(
            id=str(run.id), path=str(run.path), url=run.url, folder=Path(run.dir).parent
        )
    except BaseException:
        run.finish(exit_code=1)
        raise
    # As in MLflow: a check that ran is a finished run whatever its verdict; an error is not.
    run.finish(exit_code=1 if report.verdict == "error" else 0)
    return logged


def describe(logged: LoggedRun, say: Progress) -> None:
    """Say where the run went (offline: the folder `wandb sync` uploads)."""
    if logged.url:
        say(f"logged to W&B: {logged.url}")
    else:
        say(f"logged to W&B offline: run {logged.id} in {logged.folder} (wandb sync uploads it)")
