"""Errors parity raises; each carries the exit code the CLI maps it to (the contracts of
docs/ARCHITECTURE.md)."""

from __future__ import annotations

from pathlib import Path


class ParityError(Exception):
    """Base class: a failure a user can act on, with a one-line message."""

    exit_code = 3


class ConfigError(ParityError):
    """The parity config is missing, malformed, or names something that does not exist."""

    exit_code = 2

    def __init__(self, path: Path | str, key: str | None, message: str) -> None:
        self.path = str(path)
        self.key = key
        self.detail = message
        where = f" {key}:" if key else ""
        super().__init__(f"{self.path}:{where} {message}")


class WorkerError(ParityError):
    """The worker inside an environment crashed, timed out, or wrote something unusable."""

    exit_code = 3

    def __init__(self, environment: str, message: str, log: str | None = None) -> None:
        self.environment = environment
        self.log = log
        super().__init__(f"environment {environment!r}: {message}")


def stopped(environment: str, failed: str) -> WorkerError:
    """The error of environment `environment`, stopped because `failed` failed first (a
    side's failure stops the other: its answers could no longer be compared)."""
    return WorkerError(environment, f"stopped: environment {failed!r} failed first")


def was_stopped(error: str, environment: str) -> bool:
    """Whether the report error `error` says environment `environment` was stopped (see
    `stopped`), rather than failed."""
    return error.startswith(f"environment {environment!r}: stopped: environment ")


class HostileOutputError(ParityError):
    """A file that came out of an environment is not plain numeric data; it was not loaded."""

    exit_code = 3


class BundleError(ParityError):
    """A golden bundle is unreadable, altered since it was recorded, or not for this check."""

    exit_code = 2


class ClusterError(ParityError):
    """The cluster a sharded check runs on cannot be reached, or lost a shard for good."""

    exit_code = 3
