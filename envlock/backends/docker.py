"""The `docker` backend: run a script in a locked-down container of an image built by envlock.

The container gets no network, a read-only root filesystem, a non-root user, no
capabilities, no-new-privileges, memory and process limits, its inputs mounted read-only
and one writable output folder. The code it runs is mounted, not baked in, so the image
under test is the image that ships.
"""

from __future__ import annotations

import os
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
