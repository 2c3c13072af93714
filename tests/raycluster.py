"""A real two-node Ray cluster on 127.0.0.1 for the tests (the `ray_cluster` fixture).

Ray's own multi-node helper (`ray.cluster_utils.Cluster`) starts a head node and further
nodes as child processes of this one, each with its own raylet, resources and, here, its
own envlock cache (`ENVLOCK_CACHE_DIR` in the raylet's environment, which its workers
inherit): environments are materialized per node, as on a real cluster.

Loopback only: Ray turns 127.0.0.1 into the machine's outward address unless
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` is set before `import ray` (then every Ray process
listens on 127.0.0.1 alone); the Ray CLI refuses a second node in that mode, Ray's
`Cluster` does not. `RAY_ENABLE_UV_RUN_RUNTIME_ENV=0`: a driver started by `uv run`
would otherwise make every worker re-run the project's `uv run`. The cluster is stopped
by its own handles and the pids it recorded, never by `ray stop` (which stops every Ray
process of the user on the machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What every Ray process of a test needs: the pytest process (head, nodes) and each
# parity driver it starts (`RAY_ADDRESS` added by `driver_env`).
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}
OBJECT_STORE = 128 * 2**20  # results are summaries and shard outputs, not datasets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalRayCluster:
    """A head node (resource `node1`) and a second node (`node2`) on 127.0.0.1, one CPU
    each; `add_node` adds more (e.g. one to kill), `kill_node` kills one at once."""

    root: Path  # the nodes' envlock caches
    short: Path  # Ray's own files: Unix socket paths must stay under 108 bytes
    # One envlock cache for every node (the tests': environments other tests built are
    # reused); None: each node its own, as on a real cluster (the benchmark's).
    shared_cache: Path | None = None
    cluster: Any = None
    nodes: dict[str, Any] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)

    @property
    def address(self) -> str:
        """The GCS address a driver connects to (`RAY_ADDRESS`)."""
        return str(self.cluster.address)

    def cache_dir(self, label: str) -> Path:
        """The envlock cache of the node with resource `label`."""
        return self.shared_cache or self.root / "caches" / label

    def tmp_dir(self, label: str) -> Path:
        """The temporary folder (`TMPDIR`) of the node with resource `label`."""
        return self.root / "tmp" / label

    def driver_env(self, **extra: str) -> dict[str, str]:
        """The environment of a parity process that drives this cluster."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return {**env, **RAY_ENV, "RAY_ADDRESS": self.address, **extra}

    def _node_args(
        self,
        label: str,
        env: dict[str, str] | None = None,
        resources: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        cache = self.cache_dir(label)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_dir(label)
        tmp.mkdir(parents=True, exist_ok=True)
        return {
            "node_ip_address": "127.0.0.1",
            "num_cpus": 1,
            "object_store_memory": OBJECT_STORE,
            "resources": {label: 1, **(resources or {})},
            # the node's temporary files (a shard's work folder) stay in the test's folder
            "env_vars": {"ENVLOCK_CACHE_DIR": str(cache), "TMPDIR": str(tmp), **(env or {})},
        }

    def start(self, second_node: bool = True) -> None:
        os.environ.update(RAY_ENV)
        # Ray writes $RAY_TMPDIR/ray/ray_current_cluster; a short path keeps its Unix
        # sockets under the 107-byte limit.
        os.environ["RAY_TMPDIR"] = str(self.short)
        (self.short / "ray").mkdir(parents=True, exist_ok=True)
        from ray.cluster_utils import Cluster

        head = {
            **self._node_args("node1"),
            "gcs_server_port": free_port(),
            "include_dashboard": False,
            "temp_dir": str(self.short / "t"),
            # A node killed is known dead within about 3 s, not Ray's 15 (5 health checks
            # 3 s apart): a killed node's raylet refuses at once, a slow one has 10 s each.
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        }
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.nodes["node1"] = self.cluster.head_node
        self._record(self.cluster.head_node)
        if second_node:
            self.add_node("node2")

    def add_node(
        self,
        label: str,
        env: dict[str, str] | None = None,
        resources: dict[str, float] | None = None,
    ) -> Any:
        """Start a node with the custom resource `label` (and `resources`), its processes
        with the variables `env` added, and wait until it has joined."""
        node = self.cluster.add_node(**self._node_args(label, env, resources))
        self.cluster.wait_for_nodes()
        self.nodes[label] = node
        self._record(node)
        return node

    def kill_node(self, label: str) -> None:
        """Kill the node `label` at once (its raylet and workers, no grace)."""
        node = self.nodes.pop(label)
        self.cluster.remove_node(node, allow_graceful=False)

    def _record(self, node: Any) -> None:
        for infos in node.all_processes.values():
            self.pids.update(info.process.pid for info in infos)

    def alive(self) -> list[int]:
        """The recorded pids still running."""
        left = []
        for pid in sorted(self.pids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 0)
                if not _zombie(pid):
                    left.append(pid)
        return left

    def stop(self) -> list[int]:
        """Stop every node; the pids that had to be killed by hand afterwards."""
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.shutdown()
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        stragglers = self.alive()
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return stragglers


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@contextlib.contextmanager
def local_ray_cluster(
    root: Path, second_node: bool = True, shared_cache: Path | None = None
) -> Iterator[LocalRayCluster]:
    import shutil
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    cluster = LocalRayCluster(root, short, shared_cache)
    try:
        cluster.start(second_node)
        yield cluster
    finally:
        left = cluster.stop()
        shutil.rmtree(short, ignore_errors=True)
        assert not left, f"Ray processes left running after the cluster stopped: {left}"
