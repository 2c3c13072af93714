"""`parity`: check that two environments give the same answers (thin layer over the API)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import click

from envlock.clikit import InterruptibleGroup, domain_errors
from envlock.envvars import redactor, scrub
from envlock.errors import EnvlockError
from envlock.progress import Progress
from parity.check import check_against, run_check
from parity.config import load_config
from parity.errors import ParityError
from parity.render.progress import progress_printer

if TYPE_CHECKING:
    # Imported where they are used: a plain `parity check` needs no bundle
    # (tarfile, zipfile), no MLflow integration and no renderer of a file not asked for.
    from rich.console import Console

    from parity.bundle import Bundle
    from parity.integrations.mlflow import MlflowTarget
    from parity.integrations.wandb import WandbTarget
    from parity.report import ParityReport

F = TypeVar("F", bound=Callable[..., Any])


def config_option(fn: F) -> F:
    """`--config`: the parity config to read."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=Path("parity.toml"),
        show_default=True,
        help="The parity config: model adapter, inputs, environments, tolerances.",
    )(fn)


def cache_dir_option(fn: F) -> F:
    """`--cache-dir`: where materialized environments are kept."""
    return click.option(
        "--cache-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="Environment cache (default: $ENVLOCK_CACHE_DIR or ~/.cache/envlock).",
    )(fn)


def quiet_option(fn: F) -> F:
    """`-q/--quiet`: no progress on stderr, but where a work folder was kept."""
    return click.option(
        "-q",
        "--quiet",
        is_flag=True,
        help="No progress on stderr (only where a work folder was kept, if one was).",
    )(fn)


def report_options(json_help: str, junit_case: str, html: bool = True) -> Callable[[F], F]:
    """`--json`, `--junit`, `--markdown` (and `--html`): where a report is written, the same
    options for every command that writes one (`check`, `shard merge`, `fleet`).
    `junit_case` says what one testcase is."""

    def decorate(fn: F) -> F:
        options = [
            click.option(
                "--json",
                "json_path",
                type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
                help=f"{json_help} ('-' for stdout, which then holds only the JSON).",
            ),
            click.option(
                "--junit",
                "junit_path",
                type=click.Path(path_type=Path, dir_okay=False),
                help=f"Also write a JUnit XML report ({junit_case}).",
            ),
            click.option(
                "--markdown",
                "markdown_path",
                type=click.Path(path_type=Path, dir_okay=False),
                help="Also write a Markdown summary (CI step summaries, PR comments).",
            ),
        ]
        if html:
            options.append(
                click.option(
                    "--html",
                    "html_path",
                    type=click.Path(path_type=Path, dir_okay=False),
                    help="Also write one self-contained HTML page (histograms, heatmaps; "
                    "no scripts).",
                )
            )
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


@click.group(cls=InterruptibleGroup)
@click.version_option(package_name="envlock-parity")
def main() -> None:
    """Replay seeded inputs through two environments and prove they agree.

    Ctrl-C (exit 130) or SIGTERM (exit 143) stops every worker at once; no report is
    written."""


@main.command("check")
@config_option
@click.option(
    "--against",
    type=click.Path(path_type=Path),
    help="Compare with a golden bundle from `parity record` (a folder, .tar.gz, .tgz or "
    ".zip, or from MLflow: runs:/RUN_ID/parity-bundle, or models:/NAME/VERSION for the "
    "bundle logged to that version's training run) instead of running the reference "
    "environment.",
)
@click.option(
    "--env",
    "env_name",
    help="With --against: the environment to check (default: the one that is not "
    "run.reference, i.e. the inference side).",
)
@report_options(
    "Write the JSON report here", "one testcase per output, difference and failing warning"
)
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write a small flat metrics file (verdict, per-output differences) for "
    "`dvc metrics show`.",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep inputs, outputs, fingerprints and worker logs in this folder.",
)
@cache_dir_option
@click.option(
    "--calibrate/--no-calibrate",
    default=None,
    help="Run each environment twice and report how much it disagrees with itself "
    "(default: the config's run.calibrate).",
)
@click.option(
    "--localize/--no-localize",
    default=None,
    help="On a failure, run the worst sample through the adapter's stages ([model] stages) "
    "in both environments and name the first stage, and module, beyond tolerance "
    "(default: the config's run.localize).",
)
@click.option(
    "--mlflow",
    "mlflow_log",
    is_flag=True,
    help="Log the check to MLflow: a run with params, a metric per output, the verdict "
    "and the reports as artifacts.",
)
@click.option(
    "--mlflow-uri",
    metavar="URI",
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
    "next to the config). Implies --mlflow.",
)
@click.option(
    "--model",
    "model_ref",
    metavar="NAME/VERSION",
    help="The registered model version this check vouches for (or models:/NAME/VERSION): "
    "tagged parity=passed|failed|error with the run id. Implies --mlflow.",
)
@click.option(
    "--alias",
    metavar="ALIAS",
    help="On a pass, point this registered-model alias at --model's version; on a failure "
    "or error, take it off that version if it points there.",
)
@click.option(
    "--wandb",
    "wandb_log",
    is_flag=True,
    help="Log the check to Weights & Biases: a run with the config, a summary metric per "
    "output, the verdict and the reports as an artifact (WANDB_MODE=offline works).",
)
@click.option(
    "--wandb-project",
    metavar="NAME",
    help="W&B project (default: $WANDB_PROJECT, else parity). Implies --wandb.",
)
@click.option(
    "--wandb-entity",
    metavar="NAME",
    help="W&B entity, a user or team (default: $WANDB_ENTITY, else yours). Implies --wandb.",
)
@quiet_option
@domain_errors(ParityError, EnvlockError)
def check_command(
    config_path: Path,
    against: Path | None,
    env_name: str | None,
    json_path: Path | None,
    junit_path: Path | None,
    markdown_path: Path | None,
    html_path: Path | None,
    metrics_path: Path | None,
    workdir: Path | None,
    cache_dir: Path | None,
    calibrate: bool | None,
    localize: bool | None,
    mlflow_log: bool,
    mlflow_uri: str | None,
    model_ref: str | None,
    alias: str | None,
    wandb_log: bool,
    wandb_project: str | None,
    wandb_entity: str | None,
    quiet: bool,
) -> None:
    """Check that two environments give the same outputs on the same seeded inputs.

    With --against, one environment is checked against a golden bundle that
    `parity record` wrote, so the training environment need not exist any more.

    Exit status: 0 pass, 1 outputs or versions differ beyond the policy, 2 bad
    config or usage (or a bundle altered since it was recorded), 3 an environment
    could not be built or its worker failed.

    \b
    Example:
        parity check --config parity.toml --json report.json --junit parity.xml
        parity check --config parity.toml --against golden.tar.gz --env infer
        parity check --config parity.toml --model espcn/3 --alias validated
        parity check --config parity.toml --localize
        WANDB_MODE=offline parity check --config parity.toml --wandb
    """
    if env_name is not None and against is None:
        raise click.UsageError(
            "--env names the environment to check against a bundle: add --against"
        )
    target = _mlflow_target(config_path, mlflow_log, mlflow_uri, model_ref, alias)
    # With --against the bundle's recording is the reference: its environment may be gone.
    config = load_config(config_path) if against is None else load_config(config_path, against=True)
    if target is not None:
        from parity.integrations.mlflow import check_model_version

        check_model_version(target)  # a mistyped --model is refused before anything runs
    if wandb_log or wandb_project or wandb_entity:
        from parity.integrations.wandb import require_wandb

        require_wandb()  # so is --wandb without wandb installed
    progress = progress_printer(quiet)
    # `--json -` prints the JSON alone: nothing is rendered, so rich is never imported.
    renderer = None if json_path is not None and str(json_path) == "-" else _import_renderer
    if against is None:
        report = run_check(
            config,
            workdir=workdir,
            cache_dir=cache_dir,
            progress=progress,
            calibrate=calibrate,
            localize=localize,
            meanwhile=renderer,
        )
    else:
        with _open_bundle(str(against), config_path, mlflow_uri) as bundle:
            report = check_against(
                config,
                bundle,
                env_name=env_name,
                workdir=workdir,
                cache_dir=cache_dir,
                progress=progress,
                calibrate=calibrate,
                localize=localize,
                meanwhile=renderer,
            )
    written = _write_report(report, json_path, junit_path, markdown_path, html_path, metrics_path)
    if target is not None:
        _log_to_mlflow(report, target, written, progress)
    if wandb_log or wandb_project or wandb_entity:
        from parity.integrations.wandb import WandbTarget

        _log_to_wandb(report, WandbTarget(wandb_project, wandb_entity), written, progress)
    raise SystemExit(report.exit_code)


def _render_terminal(report: ParityReport, console: Console) -> None:
    """The terminal report (rich imported only when a report is rendered)."""
    from parity.render.terminal import render_terminal

    render_terminal(report, console)


def _import_renderer() -> None:
    """Import the terminal renderer (rich): called while the workers run, so that the
    check's start-up does not wait for it."""
    import parity.render.terminal  # noqa: F401


@contextmanager
def _open_bundle(against: str, config_path: Path, mlflow_uri: str | None) -> Iterator[Bundle]:
    """The bundle at a path, or downloaded from an MLflow `runs:/` or `models:/` URI."""
    from parity.bundle import load_bundle
    from parity.integrations.mlflow import download_bundle, is_mlflow_uri

    if not is_mlflow_uri(against):
        with load_bundle(Path(against)) as bundle:
            yield bundle
        return
    target = _mlflow_target(config_path, True, mlflow_uri, None, None)
    assert target is not None
    with tempfile.TemporaryDirectory(prefix="parity-bundle-") as tmp:
        folder = download_bundle(against, target.tracking_uri, Path(tmp))
        with load_bundle(folder) as bundle:
            yield bundle


def _mlflow_target(
    config_path: Path,
    mlflow_log: bool,
    uri: str | None,
    model_ref: str | None,
    alias: str | None,
) -> MlflowTarget | None:
    """Where to log the check, or None when logging was not asked for."""
    if alias and not model_ref:
        raise click.UsageError("--alias moves an alias to --model's version: add --model")
    if not (mlflow_log or uri or model_ref):
        return None
    from parity.integrations.mlflow import MlflowTarget, default_tracking_uri

    name = version = None
    if model_ref:
        name, _, version = model_ref.removeprefix("models:/").rpartition("/")
        if not name or not version.isdigit():
            raise click.BadParameter(
                f"expected NAME/VERSION such as espcn/3, got {model_ref!r}", param_hint="--model"
            )
    uri = (
        uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or default_tracking_uri(config_path.resolve().parent)
    )
    return MlflowTarget(uri, model_name=name, model_version=version, alias=alias)


def _log_to_mlflow(
    report: ParityReport, target: MlflowTarget, written: list[Path], say: Progress
) -> None:
    from parity.integrations.mlflow import log_check, redacted

    report = scrub(report, redactor())
    with tempfile.TemporaryDirectory(prefix="parity-mlflow-") as tmp:
        files = list(written)
        if not any(p.suffix == ".json" for p in files):
            files.append(Path(tmp) / "report.json")
            files[-1].write_text(redactor().redact(report.to_json()), encoding="utf-8")
        run_id = log_check(report, target, files, say)
    model = f"; {target.model_name}/{target.model_version} tagged" if target.model_name else ""
    say(f"logged to MLflow at {redacted(target.tracking_uri)}: run {run_id}{model}")


def _log_to_wandb(
    report: ParityReport, target: WandbTarget, written: list[Path], say: Progress
) -> None:
    from parity.integrations.wandb import describe, log_check

    report = scrub(report, redactor())
    with tempfile.TemporaryDirectory(prefix="parity-wandb-") as tmp:
        files = list(written)
        if not any(p.suffix == ".json" for p in files):
            files.append(Path(tmp) / "report.json")
            files[-1].write_text(redactor().redact(report.to_json()), encoding="utf-8")
        logged = log_check(report, target, files)
    describe(logged, say)


def _write_report(
    report: ParityReport,
    json_path: Path | None,
    junit_path: Path | None,
    markdown_path: Path | None,
    html_path: Path | None,
    metrics_path: Path | None,
) -> list[Path]:
    """Print the report and write the files asked for; the files written. No value of a
    secret-looking variable of ours is in any of them (`envlock.envvars.scrub`)."""
    report = scrub(report, redactor())
    _emit(report, _render_terminal, json_path)
    written = [json_path] if json_path is not None and str(json_path) != "-" else []
    renderings: list[tuple[Path | None, str]] = [
        (junit_path, "junit"),
        (markdown_path, "markdown"),
        (html_path, "html"),
        (metrics_path, "metrics"),
    ]
    for path, kind in renderings:
        if path is not None and str(path) != "-":
            write_whole(path, _renderer(kind)(report))
            written.append(path)
    return written


def _renderer(kind: str) -> Callable[[ParityReport], str]:
    """The renderer of one report file, imported only when that file is asked for."""
    if kind == "junit":
        from parity.render.junit import render_junit

        return render_junit
    if kind == "markdown":
        from parity.render.markdown import render_markdown

        return render_markdown
    if kind == "html":
        from parity.render.html import render_html

        return render_html
    from parity.render.metrics import render_metrics

    return render_metrics


@main.group("shard")
def shard_group() -> None:
    """A check cut into shards that run anywhere (Kubernetes pods, batch jobs), each
    writing files into one shared folder, then merged into one report.

    \b
    Example:
        parity shard run --config parity.toml --index 0 --of 4 --out /shards
        ... (shards 1, 2, 3, on any machines sharing /shards)
        parity shard merge --config parity.toml /shards --json report.json
    """


@shard_group.command("run")
@config_option
@click.option(
    "--index",
    type=click.IntRange(min=0),
    required=True,
    help="Which shard, from 0 (a Kubernetes Indexed Job's $(JOB_COMPLETION_INDEX)).",
)
@click.option(
    "--of",
    "of",
    type=click.IntRange(min=1),
    required=True,
    help="How many shards the check is cut into (on batch boundaries, as executor = 'ray').",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The shared folder: the shard writes OUT/shard-K-of-N/ (replacing a former run's).",
)
@cache_dir_option
@quiet_option
@domain_errors(ParityError, EnvlockError)
def shard_run_command(
    config_path: Path, index: int, of: int, out: Path, cache_dir: Path | None, quiet: bool
) -> None:
    """Replay shard INDEX of OF in both environments here and write its files.

    Exit status: 0 the shard ran (whether or not the outputs agree: the merge judges
    them), 2 bad config or usage, 3 an environment could not be built or its worker
    failed (the shard's folder records it, and the merge reports it).
    """
    from parity.shard_files import run_shard

    config = load_config(config_path)
    progress = progress_printer(quiet)
    ran = run_shard(config, index, of, out, cache_dir=cache_dir, progress=progress)
    if ran.failed:
        progress(f"shard {index} of {of}: {' and '.join(ran.failed)} failed; see {ran.folder}")
        raise SystemExit(3)
    progress(f"shard {index} of {of} written: {ran.folder}")


@shard_group.command("merge")
@config_option
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@report_options(
    "Write the JSON report here", "one testcase per output, difference and failing warning"
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the assembled outputs in this folder.",
)
@quiet_option
@domain_errors(ParityError, EnvlockError)
def shard_merge_command(
    config_path: Path,
    folder: Path,
    json_path: Path | None,
    junit_path: Path | None,
    markdown_path: Path | None,
    html_path: Path | None,
    workdir: Path | None,
    quiet: bool,
) -> None:
    """Merge the shards `parity shard run` wrote into FOLDER and judge them as `parity
    check` does: the same report, figures and exit status.

    Exit status: 0 pass, 1 outputs or versions differ beyond the policy, 2 bad config or
    usage, 3 a shard missing, extra or of another check (each named), or an environment
    failed in a shard.
    """
    from parity.shard_files import merge_shard_files

    config = load_config(config_path)
    report = merge_shard_files(config, folder, workdir=workdir, progress=progress_printer(quiet))
    _write_report(report, json_path, junit_path, markdown_path, html_path, None)
    raise SystemExit(report.exit_code)


@main.command("fleet")
@click.argument("configs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where the checks run: a pool of processes here, or one Ray task per config.",
)
@click.option(
    "--address",
    metavar="HOST:PORT",
    help="With --executor ray: the Ray cluster's address (default: $RAY_ADDRESS).",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    help="With --executor local: checks run at once (default: the CPU count).",
)
@report_options(
    "Write the fleet's JSON report here, every config's report in it",
    "one testcase per config",
    html=False,
)
@click.option(
    "--reports",
    "reports_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep each config's JSON report and its check's stderr in this folder.",
)
@cache_dir_option
@quiet_option
@domain_errors(ParityError, EnvlockError)
def fleet_command(
    configs: tuple[Path, ...],
    executor: str,
    address: str | None,
    jobs: int | None,
    json_path: Path | None,
    junit_path: Path | None,
    markdown_path: Path | None,
    reports_dir: Path | None,
    cache_dir: Path | None,
    quiet: bool,
) -> None:
    """Check many configs (models) as one job, each in a `parity check` of its own.

    CONFIGS are parity configs, folders (every parity.toml under them) or fleet files
    (a TOML file whose [fleet] table lists configs = [...], relative to it). Each config
    is checked in a process of its own, so one that crashes, hangs (killed after its
    run.timeout plus 600 s) or cannot be read never stops the others: it is a row with
    verdict error and the reason. With --executor ray each config is one Ray task
    (one CPU, retried if its node dies) running the check on its node, which needs
    parity (with the `ray` extra) and the configs at the same paths.

    Exit status: 0 every config passed, 1 one or more failed (and all were checked),
    2 bad usage (no configs, --executor ray without an address, Ray not installed),
    3 one or more configs could not be checked, or the Ray cluster cannot be reached.

    \b
    Example:
        parity fleet models/*/parity.toml --json fleet.json --junit fleet.xml
        parity fleet models/ --executor ray --reports reports/ \\
            --address ray-head.example.internal:6379
    """
    from parity.fleet import run_fleet

    if not configs:
        raise click.UsageError("name at least one config, folder or fleet file")
    if executor != "ray" and address is not None:
        raise click.UsageError("--address is the Ray cluster's: add --executor ray")
    if executor == "ray" and jobs is not None:
        raise click.UsageError("--jobs sizes the local pool: Ray schedules by its CPUs")
    report = run_fleet(
        configs,
        executor=executor,
        jobs=jobs,
        address=address,
        cache_dir=cache_dir,
        reports_dir=reports_dir,
        progress=progress_printer(quiet),
    )
    from parity.render.fleet import render_fleet, render_fleet_junit, render_fleet_markdown

    _emit(report, render_fleet, json_path)
    for path, render in ((junit_path, render_fleet_junit), (markdown_path, render_fleet_markdown)):
        if path is not None:
            write_whole(path, render(scrub(report, redactor())))
    raise SystemExit(report.exit_code)


@main.command("record")
@config_option
@click.option(
    "--env",
    "env_name",
    help="The environment to record (default: run.reference, i.e. the training side).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Write the bundle folder here (with --archive: one .tar.gz, .tgz or .zip file).",
)
@click.option(
    "--archive", is_flag=True, help="Write one archive file instead of a folder (by --out's name)."
)
@click.option("--overwrite", is_flag=True, help="Replace what --out holds.")
@click.option(
    "--mlflow-run",
    metavar="RUN_ID",
    help="Log the bundle into this MLflow run (the training run, next to its model), with "
    "the lock and input digests as params.",
)
@click.option(
    "--mlflow",
    "mlflow_log",
    is_flag=True,
    help="Log the bundle to MLflow (a new run unless --mlflow-run names one).",
)
@click.option(
    "--mlflow-uri",
    metavar="URI",
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
    "next to the config).",
)
@cache_dir_option
@quiet_option
@domain_errors(ParityError, EnvlockError)
def record_command(
    config_path: Path,
    env_name: str | None,
    out: Path,
    archive: bool,
    overwrite: bool,
    mlflow_run: str | None,
    mlflow_log: bool,
    mlflow_uri: str | None,
    cache_dir: Path | None,
    quiet: bool,
) -> None:
    """Record one environment's outputs as a golden bundle, to check against later.

    Replays the config's input set in the environment and writes a bundle: the
    outputs, the fingerprint, the lock digest, the input set's digest, the tolerance
    policies, and a manifest with every file's sha256. `parity check --against`
    compares another environment with it once the recorded one is gone.

    Exit status: 0 written, 2 bad config or usage (or --out not empty), 3 the
    environment could not be built or its worker failed.

    \b
    Example:
        parity record --config parity.toml --env train --out golden.tar.gz --archive
        parity check --config parity.toml --against golden.tar.gz
        parity record --out golden --mlflow-run 0b1c...   # next to the training run's model
        parity check --against models:/espcn/3 --model espcn/3
    """
    from parity.bundle import record_bundle
    from parity.integrations.mlflow import BUNDLE_ARTIFACTS, log_bundle, redacted

    target = _mlflow_target(config_path, mlflow_log or bool(mlflow_run), mlflow_uri, None, None)
    config = load_config(config_path)
    name = env_name or config.reference
    with record_bundle(
        config,
        name,
        out,
        cache_dir=cache_dir,
        progress=progress_printer(quiet),
        overwrite=overwrite,
        archive=archive,
    ) as bundle:
        click.echo(
            redactor().redact(
                f"recorded {name!r}: {len(bundle.outputs)} outputs on {config.inputs.count} "
                f"inputs ({bundle.input_digest[:19]}…) into {out} (manifest "
                f"{bundle.manifest_digest})"
            )
        )
        if target is not None:
            run_id = log_bundle(bundle, target, mlflow_run)
            click.echo(
                f"logged to MLflow at {redacted(target.tracking_uri)}: "
                f"runs:/{run_id}/{BUNDLE_ARTIFACTS}"
            )


@main.command("bisect")
@config_option
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Also write the bisection as JSON (`-`: to stdout instead of the text).",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep every environment's job, log and outputs here (default: a temporary folder).",
)
@cache_dir_option
@quiet_option
@domain_errors(ParityError, EnvlockError)
def bisect_command(
    config_path: Path,
    json_path: Path | None,
    workdir: Path | None,
    cache_dir: Path | None,
    quiet: bool,
) -> None:
    """Name the packages that make the two environments' outputs diverge.

    Builds venvs between the two locks, each taking some of the differing packages
    from the candidate lock and the rest from the reference lock, and narrows them
    down by delta debugging to the smallest installable set that reproduces the
    divergence. Each combination is checked on metadata before it is built: a
    package that cannot move alone takes the packages its requirements join to it,
    and the report says which and why. A combination that cannot be installed
    however, or in which the model cannot run, is unresolved and never blamed.
    Every environment is cached; the number built and of resolutions is printed.

    Exit status: 0 the outputs agree (nothing to bisect), 1 they diverge (the
    culprits are named, or the packages alone do not reproduce it), 2 bad config,
    3 the reference or candidate environment failed.

    \b
    Example:
        parity bisect --config examples/numpy-drift/parity.toml --json bisect.json
    """
    from parity.investigations.bisect import bisect_environments
    from parity.render.text import render_bisect

    config = load_config(config_path)
    report = bisect_environments(
        config, workdir=workdir, cache_dir=cache_dir, progress=progress_printer(quiet)
    )
    _emit(report, render_bisect, json_path)
    raise SystemExit(report.exit_code)


@main.command("search")
@config_option
@click.option(
    "--examples",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="How many inputs to try (each runs in both environments).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The search's seed: the same seed gives the same search.",
)
@click.option(
    "--output",
    "output_name",
    help="The output whose max abs diff to maximize (default: of the outputs that pass on "
    "the seeded set but differ, the one closest to its tolerance; else the one furthest "
    "beyond it).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("parity-search-case"),
    show_default=True,
    help="Save the worst input here as a case: inputs/worst.npz, a parity.toml that "
    "replays it, and case.json (an earlier case there is replaced).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Also write the result as JSON here ('-' for stdout, which then holds only the JSON).",
)
@cache_dir_option
@quiet_option
@domain_errors(ParityError, EnvlockError)
def search_command(
    config_path: Path,
    examples: int,
    seed: int,
    output_name: str | None,
    out: Path,
    json_path: Path | None,
    cache_dir: Path | None,
    quiet: bool,
) -> None:
    """Search for the input the two environments disagree on most.

    Replays the seeded input set through both environments, then runs a targeted
    search (hypothesis) within the input spec's bounds for the input that maximizes
    one output's max abs diff, starting from the seeded set's worst samples. The worst
    input is saved as a case that `parity check` replays. Needs the `search` extra:
    pip install 'envlock-parity[search]'.

    Exit status: 0 the worst input found is within tolerance, 1 it is beyond (a
    failing case), 2 bad config or usage (or hypothesis missing), 3 an environment
    could not be built or its worker failed.

    \b
    Example:
        parity search --config parity.toml --examples 500 --output sr_float
        parity check --config parity-search-case/parity.toml
    """
    from parity.investigations.search import search
    from parity.render.text import render_search

    config = load_config(config_path)
    result = search(
        config,
        examples=examples,
        seed=seed,
        output=output_name,
        out=out,
        cache_dir=cache_dir,
        progress=progress_printer(quiet),
    )
    _emit(result, render_search, json_path)
    raise SystemExit(result.exit_code)


@main.command("init")
@click.option(
    "--mlflow-model",
    "mlflow_model",
    metavar="URI",
    help="An MLflow model: runs:/RUN_ID/model, models:/NAME/VERSION or its local folder. "
    "Its signature and input example give the inputs, its requirements.txt the lock spec, "
    "and the adapter is mlflow:URI (the model is never loaded or unpickled here).",
)
@click.option(
    "--requirements",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    help="A pip requirements file for main (hashes, -r includes, markers, index options). "
    "A requirements-train.txt beside it goes to train.",
)
@click.option(
    "--train-requirements",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    help="A requirements file of training-only packages (the train group).",
)
@click.option(
    "--pyproject",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A PEP 621 project (a uv project): its dependencies go to main, its train/training "
    "dependency group or extra to train; its [tool.uv] index settings are kept.",
)
@click.option(
    "--environment",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A conda environment.yml: its pip section, and conda packages under their PyPI "
    "names (those without one are refused unless --drop names them).",
)
@click.option("--train", multiple=True, metavar="NAME", help="Put this package in train.")
@click.option(
    "--train-group",
    multiple=True,
    metavar="NAME",
    help="With --pyproject: the dependency group or extra that is training-only "
    "(default: train, training).",
)
@click.option("--drop", multiple=True, metavar="NAME", help="Leave this package out.")
@click.option(
    "--adapter",
    metavar="MODULE:FUNCTION",
    help="The model's adapter (without it and without --mlflow-model, a skeleton "
    "parity_adapter.py is written to fill in).",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    metavar="FOLDER",
    help="A folder to put on sys.path in the environments, relative to --dir (default: .; "
    "none for an MLflow model).",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=DTYPE[SHAPE]",
    help="An input array, e.g. x=float32[3,4], lr=uint8[48,48]:image, k=int64[]:0..9 "
    "(:LOW..HIGH and :uniform|normal|image are optional). Overrides the MLflow signature's.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Seeded samples per check.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Samples per batch given to the model.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The seeded input set's seed.",
)
@click.option(
    "--tracking-uri",
    help="For a runs:/ or models:/ URI: the tracking store, written into [run.env] "
    "(default: $MLFLOW_TRACKING_URI, passed through from parity's environment).",
)
@click.option(
    "--exclude-newer",
    metavar="WHEN",
    help="Solve the lock as of this date or RFC 3339 timestamp (uv's exclude-newer; default: "
    "now). Give the same one to init again and get the same lock.",
)
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Where to write parity.toml and locks/.",
)
@click.option("--force", is_flag=True, help="Replace files that exist.")
@click.option("--no-lock", is_flag=True, help="Write the spec but do not run envlock lock.")
@click.option(
    "--ask/--no-ask",
    default=None,
    help="Ask for what is missing (default: when stdin is a terminal).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    help="Also write what was done as JSON ('-' for stdout, which then holds only the JSON).",
)
@quiet_option
@domain_errors(ParityError, EnvlockError)
def init_command(
    mlflow_model: str | None,
    requirements: tuple[Path, ...],
    train_requirements: tuple[Path, ...],
    pyproject: Path | None,
    environment: Path | None,
    train: tuple[str, ...],
    train_group: tuple[str, ...],
    drop: tuple[str, ...],
    adapter: str | None,
    paths: tuple[str, ...],
    inputs: tuple[str, ...],
    count: int,
    batch_size: int,
    seed: int,
    tracking_uri: str | None,
    exclude_newer: str | None,
    folder: Path,
    force: bool,
    no_lock: bool,
    ask: bool | None,
    json_path: Path | None,
    quiet: bool,
) -> None:
    """Start a project: parity.toml, locks/pyproject.toml (main and train) and its lock.

    From an MLflow model (its signature, input example and requirements) or from your
    dependency files (requirements.txt, pyproject.toml, environment.yml) with --adapter
    and --input. On a terminal it asks for what is missing; otherwise it takes flags.
    It never replaces a file without --force, and writes nothing when it fails.

    Exit status: 0 written, 2 bad input, something it cannot express, or a file that
    exists, 3 the lock could not be solved or MLflow could not be reached.

    \b
    Example:
        parity init --mlflow-model runs:/RUN_ID/model
        parity init --requirements requirements.txt --adapter mymodel:predict \\
            --input x=float32[4]
    """
    import sys

    from parity.init.project import ExistingFiles, init_project
    from parity.render.text import render_init

    if ask is None:
        ask = sys.stdin.isatty()
    requirement_files = list(requirements)
    if ask:
        mlflow_model, adapter, inputs, requirement_files, pyproject, environment = _ask_init(
            folder, mlflow_model, adapter, inputs, requirement_files, pyproject, environment
        )
    arguments: dict[str, Any] = dict(
        mlflow_model=mlflow_model,
        requirements=requirement_files,
        train_requirements=list(train_requirements),
        pyproject=pyproject,
        environment=environment,
        train=list(train),
        train_groups=list(train_group) or None,
        drop=list(drop),
        adapter=adapter,
        paths=list(paths) or None,
        inputs=list(inputs),
        count=count,
        batch_size=batch_size,
        seed=seed,
        tracking_uri=tracking_uri,
        exclude_newer=exclude_newer,
        lock=not no_lock,
        progress=progress_printer(quiet),
    )
    try:
        result = init_project(folder, force=force, **arguments)
    except ExistingFiles as e:
        names = ", ".join(str(p) for p in e.paths)
        if not ask or not click.confirm(f"{names} exist(s): replace?", default=False):
            raise
        result = init_project(folder, force=True, **arguments)
    _emit(result, render_init, json_path)
    raise SystemExit(result.exit_code)


def _ask_init(
    folder: Path,
    mlflow_model: str | None,
    adapter: str | None,
    inputs: tuple[str, ...],
    requirements: list[Path],
    pyproject: Path | None,
    environment: Path | None,
) -> tuple[str | None, str | None, tuple[str, ...], list[Path], Path | None, Path | None]:
    """`parity init` on a terminal: ask for the model, the dependency file and the inputs
    that the flags did not give, offering what the folder holds."""
    from parity.init.project import detect_sources

    if not mlflow_model and not adapter:
        mlflow_model = (
            click.prompt(
                "MLflow model (runs:/..., models:/..., or its folder; empty if none)",
                default="",
                show_default=False,
            ).strip()
            or None
        )
    if not (requirements or pyproject or environment) and not mlflow_model:
        found = detect_sources(folder)
        answer = click.prompt(
            "Dependencies file (requirements.txt, pyproject.toml or environment.yml)",
            default=str(next(iter(found.values()))) if found else None,
        ).strip()
        path = Path(answer)
        if path.suffix == ".toml":
            pyproject = path
        elif path.suffix in (".yml", ".yaml"):
            environment = path
        else:
            requirements = [path]
    if not mlflow_model and not adapter:
        adapter = (
            click.prompt(
                "Adapter (module:function; empty for a skeleton to fill in)",
                default="",
                show_default=False,
            ).strip()
            or None
        )
    if not inputs and not mlflow_model:
        answer = click.prompt("Input arrays (NAME=DTYPE[SHAPE], separated by spaces)")
        inputs = tuple(answer.split())
    return mlflow_model, adapter, inputs, requirements, pyproject, environment


class _Result(Protocol):
    def to_json(self) -> str: ...


R = TypeVar("R", bound=_Result)


def _emit(result: R, render: Callable[[R, Console], None], json_path: Path | None) -> None:
    """Every command's output, one way: `render` prints `result` on stdout (colour only on
    a terminal), and its JSON goes to `json_path`; `-` prints the JSON instead. The value of
    a secret-looking variable of ours is replaced wherever it is, before anything is
    written (a model can raise an error holding one, or name an output after it)."""
    secrets = redactor()
    result = scrub(result, secrets)
    if json_path is not None and str(json_path) == "-":
        click.echo(secrets.redact(result.to_json()), nl=False)
        return
    from parity.render.terminal import stdout_console

    console = stdout_console()
    if secrets:  # and a last pass over the text printed
        with console.capture() as captured:
            render(result, console)
        console.file.write(secrets.redact(captured.get()))
        console.file.flush()
    else:
        render(result, console)
    if json_path is not None:
        write_whole(json_path, result.to_json())


def write_whole(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all: into a temporary file beside it, then
    renamed over it, so that a full disk or a killed process never leaves a truncated
    report for a CI gate to read. A folder that does not exist is made; a file that cannot
    be written is a ParityError (exit 3) naming it. The value of a secret-looking variable
    of ours never gets into the file (a last pass over the text)."""
    text = redactor().redact(text)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # nothing to remove where no folder could be made
            tmp.unlink(missing_ok=True)
        raise ParityError(f"could not write {path}: {e.strerror or e}") from None
    except BaseException:  # interrupted: no half-written file either
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
