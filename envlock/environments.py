"""Environments from specs: the one place that turns "where an environment lives" into an
environment that can run a script and be fingerprinted.

An `EnvironmentSpec` names a backend and what it needs (a lock and a group, an image, an
interpreter); `open_environment` hands it to that backend and returns a ready
`Environment` (`envlock.backends.base`). `pin_environment` fixes, on one machine, what a
spec names for another machine to open exactly that environment (a Ray node). Callers
never branch on the backend's kind: what differs between backends is asked of the
backend (`installs_groups`). To add a backend, write a class with `kind`,
`installs_groups`, `pin()` and `open()` and list it in `BACKENDS`. An environment that
runs no scripts (a serving endpoint) says so (`Environment.runs_scripts`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from envlock.backends.base import Environment, LocalEnvironment
from envlock.backends.endpoint import EndpointEnvironment
from envlock.backends.venv import VenvBackend
from envlock.errors import EnvlockError
from envlock.lockfile import MAIN, LockedEnv, read_lock
from envlock.names import shown_path
from envlock.progress import Progress, quiet

if TYPE_CHECKING:
    from envlock.backends.docker import PinnedImage  # imported where a check runs docker


@dataclass(frozen=True)
class EnvironmentSpec:
    """One environment: its name, the backend it lives in and what that backend needs."""

    name: str
    backend: str
    lock: Path | None = None
    group: str = MAIN
    python: str | None = None
    image: str | None = None
    gpus: bool = False
    memory: str = "4g"
    pids: int = 512
    env: dict[str, str] = field(default_factory=dict)
    # backend = "endpoint" (`envlock.backends.endpoint.EndpointEnvironment` says what each is)
    url: str | None = None
    model: str | None = None
    model_version: str | None = None
    protocol: str = "oip"
    binary: str = "auto"
    headers: dict[str, str] = field(default_factory=dict)  # header -> variable holding it
    verify: bool = True
    ca_bundle: Path | None = None
    ready_timeout: float = 60.0
    request_timeout: float = 60.0
    retries: int = 3
    fingerprint: Path | None = None
    serving: tuple[str, ...] = ()  # the server's own packages (what they bring is expected)
    outputs: dict[str, str] = field(default_factory=dict)  # output -> dtype (bentoml)
    # Set by `pin_environment`, never by a config: the image another machine must run.
    pinned: PinnedImage | None = None


class Backend(Protocol):
    """Where environments live: makes the environment a spec describes exist.

    `options` are the spec's settings only this backend reads (name -> type; their
    defaults are `EnvironmentSpec`'s); `needs_lock(keys)` says whether a spec written with
    those keys must name a lock."""

    kind: ClassVar[str]
    installs_groups: ClassVar[bool]  # whether the spec's lock group says what is installed
    options: ClassVar[dict[str, type | tuple[type, ...]]]

    @staticmethod
    def needs_lock(keys: Collection[str]) -> bool:
        """Whether a spec that sets `keys` must name a lock."""
        ...

    def pin(self, spec: EnvironmentSpec, lock: LockedEnv | None, say: Progress) -> EnvironmentSpec:
        """`spec` with what it names fixed here, for another machine to open exactly it."""
        ...

    def open(self, spec: EnvironmentSpec, lock: LockedEnv | None, say: Progress) -> Environment:
        """The ready environment for `spec` (`lock` is the spec's lock, read)."""
        ...


class LocalBackend:
    """This interpreter, or another one already installed: nothing is built."""

    kind: ClassVar[str] = "local"
    installs_groups: ClassVar[bool] = False
    options: ClassVar[dict[str, type | tuple[type, ...]]] = {}

    @staticmethod
    def needs_lock(keys: Collection[str]) -> bool:
        """Never: the interpreter is already installed."""
        return False

    def __init__(self, cache_dir: Path | None = None) -> None:
        del cache_dir  # nothing is cached

    def pin(self, spec: EnvironmentSpec, lock: LockedEnv | None, say: Progress) -> EnvironmentSpec:
        """`spec`: an interpreter is each machine's own."""
        return spec

    def open(self, spec: EnvironmentSpec, lock: LockedEnv | None, say: Progress) -> Environment:
        """The interpreter `spec.python` (default: the one running envlock)."""
        return LocalEnvironment(spec.python)


class LockedVenvBackend:
    """A uv venv installed from the spec's lock and group, cached by lock digest."""

    kind: ClassVar[str] = "venv"
    installs_groups: ClassVar[bool] = True
    options: ClassVar[dict[str, type | tuple[type, ...]]] = {}

    @staticmethod
    def needs_lock(keys: Collection[str]) -> bool:
        """Always: the venv is installed from it."""
        return True

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.venvs = VenvBackend(cache_dir)

    def pin(self, spec: EnvironmentSpec, lock: LockedEnv | None, say: Progress) -> EnvironmentSpec:
        """`spec`: its lock, checked by hash, is what every machine installs."""
        return spec

    def open(self, spec: EnvironmentSpec, lock: LockedEnv | None, say: Progress) -> Environment:
        """The cached venv for the lock and group, built first if it is not there yet."""
        if lock is None:
            raise EnvlockError(f"environment {spec.name!r}: the venv backend needs a lock")
        return self.venvs.materialize(lock, spec.group, progress=say)


class ImageBackend:
    """An image envlock built from the lock (`envlock build`), or one named outright; each
    script runs in a fresh locked-down container of it."""

    kind: ClassVar[str] = "docker"
    installs_groups: ClassVar[bool] = True
    options: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "image": str,
        "gpus": bool,
        "memory": str,
        "pids": int,
    }

    @staticmethod
    def needs_lock(keys: Collection[str]) -> bool:
        """Unless the spec names its image: the image's tag comes from the lock's digest."""
        return "image" not in keys or "lock" in keys

    def __init__(self, cache_dir: Path | None = None) -> None:
        del cache_dir  # images live in the Docker daemon

    @staticmethod
    def _named(spec: EnvironmentSpec, lock: LockedEnv | None) -> tuple[str, str]:
        """The image `spec` names (its `image`, else the one `envlock build` tags for the
        lock and group) and the command that builds it."""
        from envlock.images import default_repository, image_tag, role_for

        build = "envlock build" + (f" --lock {shown_path(lock.path)}" if lock else "")
        if spec.image:
            return spec.image, build
        if lock is not None:
            return image_tag(default_repository(lock), role_for(spec.group), lock), build
        raise EnvlockError(f"environment {spec.name!r}: the docker backend needs an image")

    def pin(self, spec: EnvironmentSpec, lock: LockedEnv | None, say: Progress) -> EnvironmentSpec:
        """`spec` with its image resolved here (`pin_image`: its id and registry digests),
        which `open` on another machine then runs exactly, by id."""
        from envlock.backends.docker import pin_image

        name, build = self._named(spec, lock)
        pinned = pin_image(name, f" (build it here with `{build}`)")
        lacking = "" if pinned.digests else " (no registry digest: a node must have it)"
        say(f"image {name}: other machines run {pinned.id or pinned.digests[0]}{lacking}")
        return dataclasses.replace(spec, pinned=pinned)

    def open(self, spec: EnvironmentSpec, lock: LockedEnv | None, say: Progress) -> Environment:
        """The image for `spec`, run by its id: the one `spec.pinned` fixed on another
        machine (pulled by digest where this daemon lacks it), else the one its name
        gives here; raise `EnvlockError` when it has not been built or cannot be had."""
        import docker

        from envlock.backends.docker import DockerEnvironment, docker_client, pinned_image_here

        if spec.pinned is not None:
            name = spec.pinned.name
            image_id = pinned_image_here(spec.pinned, say)
        else:
            name, build = self._named(spec, lock)
            try:
                image_id = str(docker_client().images.get(name).id)
            except docker.errors.ImageNotFound:
                raise EnvlockError(f"image {name} not found: build it with `{build}`") from None
        say(f"image {name} ({image_id.removeprefix('sha256:')[:12]})")
        return DockerEnvironment(
            kind="docker",
            python=Path("python"),
            description=f"image {name}" if name == image_id else f"image {name} ({image_id})",
            image=image_id,
            gpus=spec.gpus,
            memory=spec.memory,
            pids=spec.pids,
        )


class EndpointBackend:
    """A model server that is already running, reached over HTTP: nothing is built or
    started. Its lock and group, when the spec names them, say what it was built from."""

    kind: ClassVar[str] = "endpoint"
    installs_groups: ClassVar[bool] = False
    options: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "url": str,
        "model": str,
        "model_version": str,
        "protocol": str,
        "binary": str,
        "headers": dict,
        "verify": bool,
        "ca_bundle": str,
        "ready_timeout": (int, float),
        "request_timeout": (int, float),
        "retries": int,
        "fingerprint": str,
        "serving": list,
        "outputs": dict,
    }

    @staticmethod
    def needs_lock(keys: Collection[str]) -> bool:
        """Only when the spec names one (what the server was built from)."""
        return "lock" in keys

    def __init__(self, cache_dir: Path | None = None) -> None:
        del cache_dir  # nothing is cached

    def pin(self, spec: EnvironmentSpec, lock: LockedEnv | None, say: Progress) -> EnvironmentSpec:
        """`spec`: an endpoint is one server, wherever it is reached from."""
        return spec

    def open(self, spec: EnvironmentSpec, lock: LockedEnv | None, say: Progress) -> Environment:
        """The endpoint `spec` describes (not contacted yet: its client waits for it)."""
        if not spec.url or not spec.model:
            raise EnvlockError(
                f"environment {spec.name!r}: the endpoint backend needs url and model"
            )
        version = f" version {spec.model_version}" if spec.model_version else ""
        return EndpointEnvironment(
            kind="endpoint",
            python=Path(),
            description=f"endpoint {spec.url} ({spec.protocol}, model {spec.model}{version})",
            url=spec.url,
            model=spec.model,
            model_version=spec.model_version,
            protocol=spec.protocol,
            binary=spec.binary,
            headers=dict(spec.headers),
            verify=spec.verify,
            ca_bundle=spec.ca_bundle,
            ready_timeout=spec.ready_timeout,
            request_timeout=spec.request_timeout,
            retries=spec.retries,
            fingerprint=spec.fingerprint,
            outputs=dict(spec.outputs),
        )


BACKENDS: dict[str, type[LocalBackend | LockedVenvBackend | ImageBackend | EndpointBackend]] = {
    b.kind: b for b in (LockedVenvBackend, ImageBackend, LocalBackend, EndpointBackend)
}


def backend_for(kind: str, cache_dir: Path | None = None) -> Backend:
    """The backend called `kind`; raise `EnvlockError` for one envlock does not have."""
    try:
        return BACKENDS[kind](cache_dir)
    except KeyError:
        raise EnvlockError(f"no backend {kind!r} (have: {', '.join(BACKENDS)})") from None


def read_spec_lock(spec: EnvironmentSpec) -> LockedEnv | None:
    """The lock `spec` installs from, read, or None when it names none."""
    return read_lock(spec.lock) if spec.lock else None


def open_environment(
    spec: EnvironmentSpec,
    lock: LockedEnv | None = None,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> Environment:
    """The ready environment `spec` describes (`lock`: its lock, already read, if the
    caller has it); raise `EnvlockError` when it cannot be made."""
    if lock is None:
        lock = read_spec_lock(spec)
    return backend_for(spec.backend, cache_dir).open(spec, lock, progress or quiet)


def pin_environment(
    spec: EnvironmentSpec,
    lock: LockedEnv | None = None,
    *,
    progress: Progress | None = None,
) -> EnvironmentSpec:
    """`spec` with what it names fixed on this machine, for another machine to open exactly
    the environment it opens here (a docker image: by id, pulled by registry digest where
    missing); other backends are fixed already (a lock's hashes) or each machine's own.
    Raise `EnvlockError` when it cannot be fixed here (a tag this daemon lacks)."""
    if lock is None:
        lock = read_spec_lock(spec)
    return backend_for(spec.backend).pin(spec, lock, progress or quiet)
