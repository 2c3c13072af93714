"""The `docker` backend: run a script in a locked-down container of an image built by envlock.

The container gets no network, a read-only root filesystem, a non-root user, no
capabilities, no-new-privileges, memory and process limits, its inputs mounted read-only
and one writable output folder. The code it runs is mounted, not baked in, so the image
under test is the image that ships.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from envlock.backends.base import (
    LOG_TAIL,
    RUNNING,
    Cancelled,
    Environment,
    Mount,
    Running,
    RunTimeout,
    Stopped,
    listed,
)
from envlock.errors import EnvlockError

USER = "10001:10001"
INSIDE = "/parity"
# How every container envlock or parity starts is locked down (docker SDK run() options).
SANDBOX: dict[str, Any] = {
    "network_mode": "none",
    "read_only": True,
    "user": USER,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    # What the daemon keeps of a container's output: a worker that floods stdout must not
    # fill the host's disk (the json-file driver rotates at max-size, keeping one file).
    "log_config": {"type": "json-file", "config": {"max-size": "10m", "max-file": "1"}},
}
# A private, size-bounded /tmp (the root is read-only) and a HOME in it, for every container.
TMPFS = {"/tmp": "rw,nosuid,nodev,size=512m"}
CONTAINER_ENV = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}


class DockerUnavailable(EnvlockError):
    """No Docker daemon answers, or the docker SDK is missing."""

    exit_code = 3


class ImageUnavailable(EnvlockError):
    """An image is not on this machine's daemon and cannot be had by digest."""

    exit_code = 3


# An image id (`sha256:<hex>`: the digest of its config, the same wherever it is pulled) and
# a registry digest reference (`name@sha256:<hex>`: one manifest): names that cannot move.
IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")
DIGEST_REFERENCE = re.compile(r"[^@\s]+@sha256:[0-9a-f]{64}")
MOVING = 'a tag can move: name it by digest instead (image = "registry/name@sha256:…")'


@dataclass(frozen=True)
class PinnedImage:
    """An image fixed on one machine for others to run exactly (a Ray node): `name` as
    the config or `envlock build` named it, its image `id` (None when only a digest
    reference named it and this machine does not have it) and the registry digests
    (`name@sha256:…`, from its `RepoDigests`) another machine can pull it by."""

    name: str
    id: str | None
    digests: tuple[str, ...] = ()

    @property
    def shown(self) -> str:
        """The image as a message names it: its id, and its name when that differs."""
        if self.id is None or self.id == self.name:
            return self.id or self.name
        return f"{self.id} ({self.name})"


def pin_image(reference: str, hint: str = "") -> PinnedImage:
    """`reference` as this machine's daemon resolves it: its id and registry digests.
    A reference that cannot move (an id, a digest reference) is pinned as it is where
    the daemon lacks it or none answers; a tag must resolve here (`ImageUnavailable`,
    with `hint` on how to make it, or `DockerUnavailable`)."""
    import docker

    fixed = IMAGE_ID.fullmatch(reference) or DIGEST_REFERENCE.fullmatch(reference)
    try:
        image = docker_client().images.get(reference)
    except (docker.errors.ImageNotFound, DockerUnavailable) as e:
        if not fixed:
            where = f"the nodes run the image its tag names on this machine{hint}; {MOVING}"
            if isinstance(e, DockerUnavailable):
                raise DockerUnavailable(f"{e}: {where}") from None
            raise ImageUnavailable(f"image {reference} not found: {where}") from None
        if IMAGE_ID.fullmatch(reference):
            return PinnedImage(reference, reference)
        return PinnedImage(reference, None, (reference,))
    digests = [str(d) for d in image.attrs.get("RepoDigests") or []]
    if DIGEST_REFERENCE.fullmatch(reference):
        digests = [reference, *(d for d in digests if d != reference)]
    return PinnedImage(reference, str(image.id), tuple(digests))


def pinned_image_here(pinned: PinnedImage, progress: Callable[[str], None]) -> str:
    """The id of `pinned` on this machine's daemon: the image itself where the daemon has
    it, else pulled by one of its registry digests (and checked to be that id).
    `ImageUnavailable` when it has no digest, or no pull gives it."""
    import docker

    client = docker_client()
    for local in [pinned.id] if pinned.id else pinned.digests:
        try:
            return str(client.images.get(local).id)
        except docker.errors.ImageNotFound:
            pass
    if not pinned.digests:
        raise ImageUnavailable(
            f"image {pinned.shown} is not on this node and has no registry digest to pull "
            f"it by: it must be pushed to a registry the nodes can reach (docker push), "
            f'then named by digest (image = "registry/name@sha256:…")'
        )
    failures = []
    for digest in pinned.digests:
        progress(f"pulling image {digest}")
        try:
            image = client.images.pull(digest)
        except docker.errors.APIError as e:
            failures.append(f"{digest}: {_one_line(e.explanation or e)}")
            continue
        if pinned.id is not None and image.id != pinned.id:
            failures.append(f"{digest} is image {image.id}, not {pinned.id}")
            continue
        return str(image.id)
    raise ImageUnavailable(
        f"image {pinned.shown} is not on this node and could not be pulled by digest "
        f"({'; '.join(failures)}): it must be in a registry the nodes can reach, with "
        f"`docker login` to it on each node"
    )


def _one_line(message: object) -> str:
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else ""


def docker_client() -> Any:
    """A docker SDK client that has answered a ping, or `DockerUnavailable`."""
    try:
        import docker
    except ImportError:
        raise DockerUnavailable("the docker SDK is not installed (pip install docker)") from None
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as e:  # every way of not answering means the same here
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise DockerUnavailable(f"no Docker daemon answers at {host}: {e}") from None
    return client


@dataclass(frozen=True)
class DockerEnvironment(Environment):
    """An image, run as a locked-down container for each script."""

    image: str = ""
    gpus: bool = False
    memory: str = "4g"
    pids: int = 512
    shares_host_pids: ClassVar[bool] = False  # its own pid namespace, killed by Docker
    probes_on_host: ClassVar[bool] = False  # its files are the image's: probed inside

    def layout(self, mounts: Mapping[str, Mount]) -> dict[str, str]:
        """Each mount appears under /parity/<name> (a file keeps its name)."""
        inside = {}
        for name, m in mounts.items():
            inside[name] = f"{INSIDE}/{name}" + ("" if m.source.is_dir() else f"/{m.source.name}")
        return inside

    def run_python(
        self,
        script: str,
        args: Sequence[str],
        *,
        mounts: Mapping[str, Mount],
        env: Mapping[str, str],
        log: Path,
        timeout: float,
        started: Callable[[], None] | None = None,
        cancel: Running | None = None,
    ) -> int:
        """Run `python script args...` in a fresh container; remove it afterwards.
        `started` is called once the container has started; `cancel`'s `stop_all` kills it
        (`Cancelled`)."""
        import docker

        client = docker_client()
        inside = self.layout(mounts)
        volumes: dict[str, dict[str, str]] = {}
        for name, m in mounts.items():
            if m.writable:
                # The container's user is not the host's: let it write the output folder.
                m.source.chmod(0o777)
            volumes[str(m.source.resolve())] = {
                "bind": inside[name],
                "mode": "rw" if m.writable else "ro",
            }
        device_requests = (
            [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])] if self.gpus else None
        )
        container = client.containers.run(
            self.image,
            ["python", "-s", script, *args],
            detach=True,
            **SANDBOX,
            mem_limit=self.memory,
            pids_limit=self.pids,
            tmpfs=TMPFS,
            environment={**CONTAINER_ENV, **env},
            volumes=volumes,
            working_dir="/tmp",
            device_requests=device_requests,
            labels={"org.envlock.role": "parity-worker"},
        )
        if started is not None:
            started()
        try:
            status = wait_for(container, timeout, cancel)
            if RUNNING.stopping:
                raise Stopped(f"container {container.short_id}: stopped")
            if cancel is not None and cancel.stopping:
                raise Cancelled(f"container {container.short_id}: cancelled")
            if status is None:
                raise RunTimeout(
                    f"timed out after {timeout:g}s; container {container.short_id} was killed"
                )
            return status
        finally:
            log.write_bytes(container.logs(stdout=True, stderr=True)[-LOG_TAIL:])
            container.remove(force=True)


def wait_for(container: Any, timeout: float, cancel: Running | None = None) -> int | None:
    """`container`'s exit status, or None when it ran past `timeout` seconds and was
    killed; listed while it runs (in `cancel` too, if given), so that Ctrl-C or SIGTERM of
    the command kills it."""
    import requests

    with RUNNING.running(container.kill), listed(cancel, container.kill):
        try:
            return int(container.wait(timeout=timeout)["StatusCode"])
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            container.kill()
            return None
