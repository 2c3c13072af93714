"""`envlock`: lock, materialize and fingerprint environments (thin layer over the API)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import click

import envlock.probe
from envlock.backends import VenvBackend, default_cache_dir
from envlock.backends.docker import docker_client
from envlock.clikit import CommandError, InterruptibleGroup, domain_errors
from envlock.diff import diff as diff_sides
from envlock.diff import load_sides, summarize
from envlock.errors import EnvlockError
from envlock.fetch import default_mirrors, fetch, verify_wheel_files, verify_wheelhouse
from envlock.images import (
    DEFAULT_BASE,
    LABEL_GROUP,
    LABEL_LOCK,
    ROLES,
    build_images,
    default_repository,
    fingerprint_image,
    image_tag,
)
from envlock.lockfile import MAIN, read_lock
from envlock.locking import check_lock, lock
from envlock.names import shown_path
from envlock.verify import failures, verify_conda_prefix, verify_fingerprint

lock_option = click.option(
    "--lock",
    "lock_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("locks/pylock.toml"),
    show_default=True,
    help="The lock: a pylock.toml or a conda-lock.yml.",
)


def _progress(message: str) -> None:
    click.echo(f"envlock: {message}", err=True)


@click.group(cls=InterruptibleGroup)
@click.version_option(package_name="envlock-parity")
def main() -> None:
    """Build every environment of a model from one lock file, and tell how they differ.

    Ctrl-C (exit 130) or SIGTERM (exit 143) ends any command at once."""


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


@main.command("show")
@click.argument("lock_path", metavar="LOCK", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--group", default=MAIN, show_default=True, help="Group to list (main always).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@domain_errors(EnvlockError)
def show_command(lock_path: Path, group: str, as_json: bool) -> None:
    """Read a lock (pylock.toml or conda-lock.yml), validate it, list what a group installs here.

    Source trees the lock names (a project's own directory entry) are listed apart:
    envlock does not install them. With PEP 751 default-groups, main is those groups.

    \b
    Example:
        envlock show locks/pylock.toml --group train
    """
    lock = read_lock(lock_path)
    packages = lock.packages_in(group)
    sources = lock.sources_in(group)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "lock": str(lock_path),
                    "flavor": lock.flavor,
                    "digest": lock.digest,
                    "groups": list(lock.groups),
                    "default_groups": list(lock.default_groups),
                    "group": group,
                    "packages": [
                        {"name": p.name, "version": p.version, "manager": p.manager}
                        for p in packages
                    ],
                    "not_installed": [
                        {"name": s.name, "kind": s.kind, "location": s.location} for s in sources
                    ],
                },
                indent=2,
            )
        )
        return
    groups = [
        f"{g} (default-groups: {', '.join(lock.default_groups)})"
        if g == MAIN and lock.default_groups
        else g
        for g in lock.groups
    ]
    click.echo(f"{lock_path} ({lock.flavor}, groups: {', '.join(groups)}, {lock.digest[:19]}…)")
    for p in packages:
        build = f" {p.build}" if p.build else ""
        click.echo(f"  {p.name} {p.version}{build} [{p.manager}]")
    for s in sources:
        click.echo(s.describe())


@main.command("fetch")
@click.argument("lock_path", metavar="LOCK", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--dest",
    type=click.Path(path_type=Path, file_okay=False),
    help="Wheelhouse folder (default: <cache>/wheelhouse).",
)
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="A local folder of wheels to try first (repeatable; PIP_FIND_LINKS and "
    "ENVLOCK_MIRRORS are tried too).",
)
@click.option("--offline", is_flag=True, help="Never use the network; mirrors only.")
@domain_errors(EnvlockError)
def fetch_command(
    lock_path: Path, dest: Path | None, mirrors: tuple[Path, ...], offline: bool
) -> None:
    """Fetch every wheel of a lock into a wheelhouse, checking each file's hash.

    Local mirrors are tried before the network. Prints the wheelhouse folder.

    \b
    Example:
        envlock fetch locks/pylock.toml --offline
    """
    lock = read_lock(lock_path)
    house = fetch(
        lock,
        dest or default_cache_dir() / "wheelhouse",
        mirrors=[*mirrors, *default_mirrors()],
        allow_network=not offline,
        progress=_progress,
    )
    verify_wheelhouse(house, lock)
    click.echo(str(house.root))


@main.command("build")
@lock_option
@click.option(
    "--base", default=None, help=f"Base image (default: $ENVLOCK_BASE_IMAGE or {DEFAULT_BASE})."
)
@click.option(
    "--python", "python", default="python3", show_default=True, help="Python in the base."
)
@click.option("--repo", "repository", help="Image repository (default: envlock/<spec name>).")
@click.option(
    "--dockerfiles",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Folder holding Dockerfile.train and Dockerfile.infer.",
)
@click.option(
    "--pins",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Base digest pins (default: base-images.toml next to the lock).",
)
@click.option("--repin", is_flag=True, help="Accept a base that now resolves to another digest.")
@click.option("--no-cache", is_flag=True, help="Build every layer again.")
@click.option("--offline", is_flag=True, help="Fetch wheels from local mirrors only.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@domain_errors(EnvlockError)
def build_command(
    lock_path: Path,
    base: str | None,
    python: str,
    repository: str | None,
    dockerfiles: Path,
    pins: Path | None,
    repin: bool,
    no_cache: bool,
    offline: bool,
    as_json: bool,
) -> None:
    """Build the training and inference images from one lock, with no network.

    Prints both tags and how the environment they share was shown identical: by
    layer digests, or (when the builder could not share layers) by installed trees.

    \b
    Example:
        envlock build --base envlock/local-base:bookworm
    """
    result = build_images(
        read_lock(lock_path),
        dockerfiles=dockerfiles,
        base=base or os.environ.get("ENVLOCK_BASE_IMAGE") or DEFAULT_BASE,
        python=python,
        repository=repository,
        pins=pins,
        repin=repin,
        no_cache=no_cache,
        offline=offline,
        progress=_progress,
    )
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        for image in result.images.values():
            state = "cache hit" if image.cached else "built"
            click.echo(f"{image.role}: {image.tag} ({image.group}; {state})")
        click.echo(f"shared environment: {result.proof.method}: {result.proof.detail}")
        for line in result.proof.differences:
            click.echo(f"  {line}")
    if not result.proof.identical:
        raise CommandError("the images' shared environments differ", 1)


@main.command("verify")
@click.option("--image", help="Image tag to check.")
@click.option(
    "--role",
    type=click.Choice(sorted(ROLES)),
    help="Instead of --image: the image `envlock build` made from --lock for this role.",
)
@click.option("--python", "python", help="Instead of an image: an interpreter (venv) to check.")
@click.option(
    "--prefix",
    type=click.Path(path_type=Path, file_okay=False),
    help="Instead: a conda environment, checked (from its conda-meta) against a conda-lock.yml.",
)
@lock_option
@click.option("--group", help="Lock group it should hold (default: the image's label, or main).")
@click.option(
    "--wheelhouse",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also check installed files against these locked wheels (from `envlock fetch`).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Count installer tooling the lock does not name (pip, setuptools, wheel) as extra.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@domain_errors(EnvlockError)
def verify_command(
    image: str | None,
    role: str | None,
    python: str | None,
    prefix: Path | None,
    lock_path: Path,
    group: str | None,
    wheelhouse: Path | None,
    strict: bool,
    as_json: bool,
) -> None:
    """Check an environment against a lock group; exit 1 listing every differing package.

    Missing, extra and wrong-version packages, and (with --wheelhouse, whose wheels are
    first checked against the lock's hashes) installed files whose RECORD hashes are not
    the locked wheel's. Installer tooling the lock does not name (the pip `python -m venv`
    seeds) is listed apart and does not fail, unless --strict. A source tree the lock names
    (the project) may be installed or not.

    \b
    Example:
        envlock verify --role infer
        envlock verify --python .venv-serve/bin/python --group main
        envlock verify --prefix ~/miniforge3/envs/serve --lock conda-lock.yml
    """
    if sum(x is not None for x in (image, role, python, prefix)) != 1:
        raise click.UsageError("give exactly one of --image, --role, --python and --prefix")
    lock = read_lock(lock_path)
    if wheelhouse is not None:  # before probing anything: a wheel not as locked ends it here
        verify_wheel_files(wheelhouse, lock)
    labels: dict[str, str] = {}
    problems = None
    if prefix is not None:
        target = str(prefix)
        group = group or MAIN
        lock.check_group(group)
        problems = verify_conda_prefix(prefix, lock, group, strict=strict)
        fingerprint: dict[str, Any] = {}
    elif python is not None:
        fingerprint = _probe_interpreter(python, imports=False)
        target = python
    else:
        import docker

        target = image or image_tag(default_repository(lock), str(role), lock)
        client = docker_client()
        try:
            labels = client.images.get(target).attrs["Config"].get("Labels") or {}
        except docker.errors.ImageNotFound:
            raise CommandError(f"image {target} not found", 2) from None
        fingerprint = fingerprint_image(client, target)
    group = group or labels.get(LABEL_GROUP) or MAIN
    lock.check_group(group)
    if problems is None:
        problems = verify_fingerprint(fingerprint, lock, group, wheelhouse, strict=strict)
    failing = failures(problems)
    if as_json:
        # One list, as always; benign entries (installer tooling) say so in their own field.
        click.echo(json.dumps([dataclasses.asdict(p) for p in problems], indent=2))
    elif failing:
        click.echo(f"{target} differs from {lock_path} [{group}]:")
        width = max(len(p.name) for p in failing)
        for p in failing:
            locked, installed = p.locked or "-", p.installed or "-"
            click.echo(
                f"  {p.name:<{width}}  {p.problem:<7}  locked {locked:<12} installed {installed}"
            )
    else:
        click.echo(f"{target} matches {lock_path} [{group}]: {len(lock.versions(group))} packages")
    tooling = [p for p in problems if p.benign]
    if tooling and not as_json:
        shown = ", ".join(f"{p.name} {p.installed}" for p in tooling)
        click.echo(f"installer tooling, not in the lock: {shown}")
    if labels.get(LABEL_LOCK) not in (None, lock.digest):
        _progress(f"note: {target} was built from another lock ({labels.get(LABEL_LOCK)})")
    if failing:
        raise SystemExit(1)


def _probe_interpreter(python: str, *, imports: bool) -> dict[str, Any]:
    """Run the fingerprint probe in another interpreter; its JSON."""
    args = [python, "-s", envlock.probe.__file__, *([] if imports else ["--no-import"])]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
    except OSError as e:
        raise CommandError(f"cannot run {python}: {e.strerror}", 2) from None
    if proc.returncode != 0:
        raise CommandError(f"fingerprint probe failed in {python}:\n{proc.stderr.strip()}", 3)
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@main.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@domain_errors(EnvlockError)
def diff_command(a: str, b: str, as_json: bool) -> None:
    """Diff two environments: fingerprints (JSON), locks, or a lock and a fingerprint.

    A lock is `PATH` (its main group) or `PATH#GROUP`. Every difference is classified
    (numerics, runtime, benign, other) and explained. Exit 1 if they differ.

    \b
    Example:
        envlock diff locks/pylock.toml#train examples/numpy-drift/locks/pylock.toml#train
        envlock fingerprint --python A/bin/python > a.json; envlock diff a.json b.json
    """
    differences = diff_sides(*load_sides(a, b))
    if as_json:
        click.echo(json.dumps([d.to_json() for d in differences], indent=2))
    elif not differences:
        click.echo(f"no differences between {a} and {b}")
    else:
        counts = ", ".join(f"{n} {sev}" for sev, n in sorted(summarize(differences).items()))
        click.echo(f"{len(differences)} differences ({counts}) between A={a} and B={b}:")
        for d in differences:  # what follows from a difference is indented under it
            indent = "      " if d.caused_by else "  "
            click.echo(f"{indent}[{d.severity}] {d.explanation}")
    if differences:
        raise SystemExit(1)


@main.command("fingerprint")
@click.option("--python", "python", help="Interpreter to fingerprint (default: this one).")
@click.option("--image", help="Docker image to fingerprint (runs the probe in a container).")
@click.option(
    "--no-import",
    is_flag=True,
    help="Do not import numpy/threadpoolctl/torch to describe them (faster).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write it to this file (a serving endpoint's recorded fingerprint) instead of stdout.",
)
@domain_errors(EnvlockError)
def fingerprint_command(
    python: str | None, image: str | None, no_import: bool, out: Path | None
) -> None:
    """Print the fingerprint of an environment as JSON.

    Interpreter, platform, CPU features, every distribution (with a digest of its
    files), conda packages, numpy/BLAS, thread pools, torch/CUDA, and the environment
    variables that change numerics. Secret-looking variables are never written.

    \b
    Example:
        envlock fingerprint --python ~/.cache/envlock/venvs/<key>/bin/python > a.json
        envlock fingerprint --image envlock/espcn-reference-env:infer-dfcc470d1171
        envlock fingerprint --python serve/.venv/bin/python --out serve.fingerprint.json
    """
    if python and image:
        raise click.UsageError("give at most one of --python and --image")
    if image:
        fp = fingerprint_image(docker_client(), image)
    elif python is None:
        fp = envlock.probe.collect(imports=not no_import)
    else:
        fp = _probe_interpreter(python, imports=not no_import)
    text = json.dumps(fp, indent=2, sort_keys=True)
    if out is None:
        click.echo(text)
        return
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(out)
    _progress(f"wrote {shown_path(out)}")
