"""Build the training and inference images from one lock, hermetically, and show they agree.

`build_images` fetches and verifies a wheelhouse, checks the base image against the digest
pinned with the lock (recording it the first time), builds `Dockerfile.train` and
`Dockerfile.infer` through the docker SDK with no network, and proves the environment both
images share is identical: by their layer digests when the builder could share them, else
by the installed trees (every distribution's name, version and RECORD file hashes).

The Dockerfiles are multi-stage: pip installs in builder stages, and the images hold only
the venv (no wheelhouse). The inference image is the base plus one layer, the venv; the
training image is those same layers plus one holding only the files its training-only
packages added, so the layers prove the shared environment identical whenever the builder
could reuse them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

import envlock.probe
from envlock.backends.docker import (
    CONTAINER_ENV,
    SANDBOX,
    TMPFS,
    docker_client,
    wait_for,
)
from envlock.errors import EnvlockError, LockFileError
from envlock.fetch import fetch, verify_wheelhouse
from envlock.lockfile import MAIN, LockedEnv
from envlock.locking import read_spec
from envlock.progress import Progress, quiet

DEFAULT_BASE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
# role -> (Dockerfile, lock group)
ROLES = {"train": ("Dockerfile.train", "train"), "infer": ("Dockerfile.infer", MAIN)}
LABEL_LOCK = "org.envlock.lock-digest"
LABEL_BASE_DIGEST = "org.envlock.base-digest"
LABEL_GROUP = "org.envlock.group"
# The sha256 of the Dockerfile an image was built from: an image from another Dockerfile
# (an older layout, say) is rebuilt, not taken as a cache hit.
LABEL_DOCKERFILE = "org.envlock.dockerfile-digest"


class BuildError(EnvlockError):
    """docker could not build an image; the message ends with the builder's last lines."""

    exit_code = 3


class ProbeError(EnvlockError):
    """The fingerprint probe could not run in an image, or wrote no fingerprint."""

    exit_code = 3


class BaseDigestChanged(EnvlockError):
    """The base image resolves to another digest than the one pinned with the lock."""

    exit_code = 1


class BaseImageMissing(EnvlockError):
    """The base image is neither present nor pullable."""

    exit_code = 3


@dataclass(frozen=True)
class BuiltImage:
    """One image: its role, the group it installs, its tag, id and layer digests."""

    role: str
    group: str
    tag: str
    image_id: str
    layers: tuple[str, ...]
    cached: bool


@dataclass(frozen=True)
class SharedProof:
    """How the shared environment was shown identical (or not) in both images."""

    method: str  # "layers" or "trees"
    identical: bool
    detail: str
    differences: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BuildResult:
    """Both images, the base they were built on, and the proof of the shared part."""

    images: dict[str, BuiltImage]
    base: str
    base_digest: str
    proof: SharedProof


def base_digest(client: Any, base: str, progress: Progress) -> str:
    """The digest `base` resolves to here: its registry digest, else its local image id."""
    import docker

    try:
        image = client.images.get(base)
    except docker.errors.ImageNotFound:
        progress(f"pulling base image {base}")
        try:
            image = client.images.pull(base)
        except docker.errors.APIError as e:
            raise BaseImageMissing(
                f"base image {base} is not here and could not be pulled ({e.explanation}); "
                f"on a machine with no registry, make one with scripts/make-local-base.sh "
                f"and pass --base"
            ) from None
    repo_digests = image.attrs.get("RepoDigests") or []
    if repo_digests:
        return str(repo_digests[0].split("@", 1)[1])
    return str(image.id)


def default_pins(lock: LockedEnv) -> Path:
    """Where base-image digests are pinned for a lock: `base-images.toml` next to it."""
    return lock.path.with_name("base-images.toml")


def check_base_pin(pins: Path, base: str, digest: str, *, repin: bool) -> str:
    """Record `digest` for `base` the first time; refuse a different one unless `repin`.

    Returns what happened: "recorded", "matches" or "re-pinned".
    """
    data: dict[str, Any] = tomllib.loads(pins.read_text()) if pins.is_file() else {}
    bases = data.setdefault("bases", {})
    pinned = bases.get(base, {}).get("digest")
    if pinned == digest:
        return "matches"
    if pinned is not None and not repin:
        raise BaseDigestChanged(
            f"base image {base} now resolves to {digest}, but {pins} pins {pinned}; "
            f"if the new base is intended, run `envlock build --repin`"
        )
    bases[base] = {"digest": digest, "recorded": datetime.now(UTC).isoformat(timespec="seconds")}
    header = "# Base image digests pinned by `envlock build` for the lock next to this file.\n"
    pins.write_text(header + tomli_w.dumps(data))
    return "recorded" if pinned is None else "re-pinned"


def default_repository(lock: LockedEnv) -> str:
    """Image repository for a lock: `envlock/<spec project name>`, else `envlock/env`."""
    spec = lock.spec_path
    if spec is not None and spec.is_file():
        name = read_spec(spec).get("project", {}).get("name")
        if isinstance(name, str) and name:
            return f"envlock/{name.lower()}"
    return "envlock/env"


def role_for(group: str) -> str:
    """The image role that installs `group`: `train` for a training group, else `infer`."""
    return next((role for role, (_, g) in ROLES.items() if g == group), "infer")


def image_tag(repository: str, role: str, lock: LockedEnv) -> str:
    """The tag of one image: the role and the lock digest it was built from."""
    return f"{repository}:{role}-{lock.digest.removeprefix('sha256:')[:12]}"


def build_images(
    lock: LockedEnv,
    *,
    dockerfiles: Path,
    base: str = DEFAULT_BASE,
    python: str = "python3",
    repository: str | None = None,
    pins: Path | None = None,
    wheelhouse: Path | None = None,
    repin: bool = False,
    no_cache: bool = False,
    offline: bool = False,
    progress: Progress | None = None,
) -> BuildResult:
    """Build (or find, unchanged) the training and inference images of `lock`."""
    say = progress or quiet
    if lock.flavor != "pylock":
        raise LockFileError(lock.path, "envlock build installs PEP 751 locks (pylock.toml) only")
    client = docker_client()
    digest = base_digest(client, base, say)
    pin_state = check_base_pin(pins or default_pins(lock), base, digest, repin=repin)
    say(f"base {base} = {digest[:19]}… ({pin_state})")
    repository = repository or default_repository(lock)
    house_root = wheelhouse or (_cache_root() / "wheelhouse")
    groups = [g for _, g in ROLES.values()]
    house = fetch(lock, house_root, groups=groups, allow_network=not offline, progress=say)
    verify_wheelhouse(house, lock)
    images: dict[str, BuiltImage] = {}
    with tempfile.TemporaryDirectory(prefix="envlock-context-") as tmp:
        context = Path(tmp)
        for group, files in house.groups.items():
            folder = context / group
            folder.mkdir()
            for f in [*files, house.folder(group) / "requirements.txt"]:
                _link(f, folder / f.name)
        for role, (dockerfile, group) in ROLES.items():
            shutil.copy(dockerfiles / dockerfile, context / dockerfile)
            images[role] = _build_one(
                client,
                context,
                dockerfile,
                role=role,
                group=group,
                tag=image_tag(repository, role, lock),
                buildargs={
                    "BASE": base,
                    "PYTHON": python,
                    "LOCK_DIGEST": lock.digest,
                    "BASE_DIGEST": digest,
                },
                lock=lock,
                base_digest=digest,
                no_cache=no_cache,
                say=say,
            )
    base_layers = tuple(client.images.get(base).attrs["RootFS"]["Layers"])
    proof = prove_shared(client, images["train"], images["infer"], base_layers, lock)
    return BuildResult(images, base, digest, proof)


def _build_one(
    client: Any,
    context: Path,
    dockerfile: str,
    *,
    role: str,
    group: str,
    tag: str,
    buildargs: dict[str, str],
    lock: LockedEnv,
    base_digest: str,
    no_cache: bool,
    say: Progress,
) -> BuiltImage:
    import docker

    recipe = "sha256:" + hashlib.sha256((context / dockerfile).read_bytes()).hexdigest()
    if not no_cache:
        try:
            existing = client.images.get(tag)
            labels = existing.attrs["Config"].get("Labels") or {}
            if (
                labels.get(LABEL_LOCK) == lock.digest
                and labels.get(LABEL_BASE_DIGEST) == base_digest
                and labels.get(LABEL_DOCKERFILE) == recipe
            ):
                say(f"[{role}] {tag}: unchanged lock, base and Dockerfile, cache hit")
                return BuiltImage(
                    role, group, tag, existing.id, tuple(existing.attrs["RootFS"]["Layers"]), True
                )
        except docker.errors.ImageNotFound:
            pass
    say(f"[{role}] building {tag} from {dockerfile} (no network)")
    lines: list[str] = []
    stream = client.api.build(
        path=str(context),
        dockerfile=dockerfile,
        tag=tag,
        buildargs=buildargs,
        labels={LABEL_DOCKERFILE: recipe},
        network_mode="none",
        rm=True,
        forcerm=True,
        nocache=no_cache,
        decode=True,
    )
    for chunk in stream:
        if "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
            tail = "\n".join(lines[-25:])
            raise BuildError(f"building {tag} from {dockerfile} failed: {detail.strip()}\n{tail}")
        text = str(chunk.get("stream", "")).rstrip()
        if text:
            lines.extend(text.splitlines())
            for line in text.splitlines():
                if line.startswith("Step ") or "Using cache" in line:
                    say(f"[{role}] {line.strip()}")
    image = client.images.get(tag)
    return BuiltImage(role, group, tag, image.id, tuple(image.attrs["RootFS"]["Layers"]), False)


def prove_shared(
    client: Any,
    train: BuiltImage,
    infer: BuiltImage,
    base_layers: tuple[str, ...],
    lock: LockedEnv,
) -> SharedProof:
    """Show the `main` environment is the same in both images: layers, else installed trees.

    By layers when both images start with the base's layers and every layer the inference
    image adds to the base is, at the same place, the training image's too: the inference
    image is then a prefix of the training image, whose further layers only add the
    training-only files (Dockerfile.train refuses to build if they would change or remove
    a file of the shared venv).
    """
    n = len(base_layers)
    env = infer.layers[n:]
    if (
        env
        and infer.layers[:n] == base_layers
        and train.layers[: len(infer.layers)] == infer.layers
    ):
        shared = ", ".join(d.removeprefix("sha256:")[:12] for d in env)
        extra = len(train.layers) - len(infer.layers)
        return SharedProof(
            "layers",
            True,
            f"the shared environment is the same layers in both images ({len(env)} "
            f"layer{'s' if len(env) != 1 else ''} above the base: {shared}); the training "
            f"image adds {extra} layer{'s' if extra != 1 else ''} of training-only files",
        )
    differences = compare_trees(client, train.tag, infer.tag, sorted(lock.versions(MAIN)))
    if differences:
        return SharedProof("trees", False, "the shared environment differs", differences)
    return SharedProof(
        "trees",
        True,
        f"layers differ (no shared build cache), but the installed trees are identical: "
        f"{len(lock.versions(MAIN))} distributions, same versions and RECORD file hashes",
    )


def fingerprint_image(client: Any, tag: str, timeout: float = 300) -> dict[str, Any]:
    """The fingerprint probe's output, run inside `tag` in the workers' sandbox (no
    network, memory and process limits, a private /tmp), killed after `timeout` seconds."""

    probe = Path(envlock.probe.__file__).resolve()
    container = client.containers.run(
        tag,
        ["python", "-s", "/envlock/probe.py"],
        detach=True,
        **SANDBOX,
        mem_limit="4g",
        pids_limit=512,
        tmpfs=TMPFS,
        environment=CONTAINER_ENV,
        volumes={str(probe): {"bind": "/envlock/probe.py", "mode": "ro"}},
        labels={"org.envlock.role": "fingerprint"},
    )
    try:
        status = wait_for(container, timeout)
        if status is None:
            raise ProbeError(
                f"fingerprinting {tag} timed out after {timeout:g}s; the container was killed"
            )
        output = container.logs(stdout=True, stderr=False)
        if status != 0:
            tail = container.logs(stdout=False, stderr=True)[-2000:].decode("utf-8", "replace")
            raise ProbeError(f"fingerprinting {tag}: the probe exited with {status}: {tail}")
    finally:
        container.remove(force=True)
    try:
        data = json.loads(output)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProbeError(f"fingerprinting {tag}: the probe wrote no JSON ({e})") from None
    if not isinstance(data, dict):
        raise ProbeError(f"fingerprinting {tag}: the probe wrote no JSON object")
    return data


def compare_trees(client: Any, a: str, b: str, names: list[str]) -> list[str]:
    """Differences between two images' installed `names`: version or RECORD file hashes."""
    trees = []
    for tag in (a, b):
        dists = fingerprint_image(client, tag).get("distributions", [])
        trees.append({d["name"]: d for d in dists})
    differences = []
    for name in names:
        da, db = trees[0].get(name), trees[1].get(name)
        if da is None or db is None:
            differences.append(f"{name}: missing from {a if da is None else b}")
        elif da["version"] != db["version"]:
            differences.append(f"{name}: {da['version']} ({a}) vs {db['version']} ({b})")
        elif da.get("files_sha256") != db.get("files_sha256"):
            differences.append(f"{name} {da['version']}: installed files differ")
    return differences


def _cache_root() -> Path:
    from envlock.backends.venv import default_cache_dir

    return default_cache_dir()


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
