"""A serving endpoint: an environment that is a running model server, reached over HTTP.

It runs no scripts: a caller that replays inputs through it speaks the server's protocol
(parity does, in `parity.runs.endpoint`). What envlock knows of it is where it is and how
to reach it: its URL, the model's name and version, the protocol, the headers whose values
come from environment variables (never written anywhere), TLS verification, the limits of
each request, and what is known of its versions: the lock and group it was built from, or a
fingerprint file recorded where it was built (`envlock fingerprint --python ... --out`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from envlock.backends.base import Environment, Mount, Running
from envlock.errors import EnvlockError

# The protocols an endpoint may speak: the Open Inference Protocol v2 over REST (KServe's
# v2, MLServer, Triton), and BentoML's HTTP API (one route per API, JSON in and out).
PROTOCOLS = ("oip", "bentoml")
# How tensors travel: `auto` uses the binary tensor data extension where the server's
# metadata lists it, `binary` insists on it, `json` never uses it.
BINARY_MODES = ("auto", "binary", "json")


@dataclass(frozen=True)
class EndpointEnvironment(Environment):
    """A model server at `url` serving `model` (at `model_version`, if given)."""

    url: str = ""
    model: str = ""
    model_version: str | None = None
    protocol: str = "oip"
    binary: str = "auto"
    # header name -> the name of the environment variable holding its value
    headers: Mapping[str, str] = field(default_factory=dict)
    verify: bool = True  # TLS certificates checked (https)
    ca_bundle: Path | None = None  # a CA bundle to check them against, else the system's
    ready_timeout: float = 60.0  # seconds to wait for the server and the model to be ready
    request_timeout: float = 60.0  # seconds for one request
    retries: int = 3  # further tries of a request answered 429 or 503 (or not answered)
    fingerprint: Path | None = None  # a fingerprint recorded where the server was built
    # each output's dtype, by name, where the protocol does not say (BentoML)
    outputs: Mapping[str, str] = field(default_factory=dict)
    runs_scripts: ClassVar[bool] = False
    probes_on_host: ClassVar[bool] = False  # no interpreter here to fingerprint

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
        """An endpoint runs no scripts: it answers requests."""
        raise EnvlockError(f"{self.description} runs no scripts: it answers requests")
