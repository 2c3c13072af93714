"""`envlock`: lock, materialize and fingerprint environments (thin layer over the API)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

import envlock.probe
from envlock.backends import VenvBackend
from envlock.clikit import CommandError, domain_errors
from envlock.errors import EnvlockError
from envlock.lockfile import MAIN, read_lock
from envlock.locking import check_lock, lock


def _progress(message: str) -> None:
    click.echo(f"envlock: {message}", err=True)


@click.group()
@click.version_option(package_name="envlock-parity")
def main() -> None:
    """Build every environment of a model from one lock file, and tell how they differ."""


@main.command("lock")
@click.option(
    "--spec",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("locks/pyproject.toml"),
    show_default=True,
    help="The lock spec: a uv project file with [project].dependencies (main) and "
    "[dependency-groups] (train, ...).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the lock (default: pylock.toml next to the spec).",
)
@click.option("--check", is_flag=True, help="Do not solve: exit 1 if the lock is stale.")
@click.option("--dry-run", is_flag=True, help="Solve and print the lock to stdout; write nothing.")
@domain_errors(EnvlockError)
def lock_command(spec: Path, out: Path | None, check: bool, dry_run: bool) -> None:
    """Solve the spec with uv and write the shared PEP 751 lock.

    All groups are solved together, so training and inference share one version of
    every package they both install.

    \b
    Example:
        envlock lock --spec locks/pyproject.toml
        envlock lock --check        # exit 1 if locks/pylock.toml is stale
    """
    target = out or spec.with_name("pylock.toml")
    if check:
        check_lock(spec, target)
        click.echo(f"{target} is up to date with {spec}")
        return
    result = lock(spec, out, dry_run=dry_run, progress=_progress)
    if dry_run:
        click.echo(result.text, nl=False)
        return
    sizes = ", ".join(f"{g}: {len(p)}" for g, p in result.groups.items())
    click.echo(f"wrote {result.path} ({sizes} packages)")


@main.command("materialize")
@click.argument("lock_path", metavar="LOCK", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--group", default=MAIN, show_default=True, help="Group to install besides main.")
@click.option(
    "--cache-dir", type=click.Path(path_type=Path, file_okay=False), help="Environment cache."
)
@domain_errors(EnvlockError)
def materialize_command(lock_path: Path, group: str, cache_dir: Path | None) -> None:
    """Create (or reuse) the venv for a lock and group; print its interpreter's path.

    \b
    Example:
        envlock materialize locks/pylock.toml --group train
    """
    env = VenvBackend(cache_dir).materialize(read_lock(lock_path), group, progress=_progress)
    state = "created" if env.created else "cached"
    _progress(f"{state}: {env.root}")
    click.echo(str(env.python))


@main.command("fingerprint")
@click.option("--python", "python", help="Interpreter to fingerprint (default: this one).")
@domain_errors(EnvlockError)
def fingerprint_command(python: str | None) -> None:
    """Print the fingerprint of an environment as JSON.

    \b
    Example:
        envlock fingerprint --python ~/.cache/envlock/venvs/<key>/bin/python
    """
    if python is None:
        click.echo(json.dumps(envlock.probe.collect(), indent=2, sort_keys=True))
        return
    proc = subprocess.run(
        [python, "-s", envlock.probe.__file__], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise CommandError(f"fingerprint probe failed in {python}:\n{proc.stderr.strip()}", 3)
    sys.stdout.write(proc.stdout)
