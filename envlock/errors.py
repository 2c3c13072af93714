"""Errors envlock raises; each carries the exit code the CLI maps it to."""

from __future__ import annotations


class EnvlockError(Exception):
    """Base class: a failure a user can act on, with a one-line message."""

    exit_code = 3


class LockFileError(EnvlockError):
    """A lock file or lock spec is missing, malformed or unsupported."""

    exit_code = 2

    def __init__(self, path: object, message: str, where: str | None = None) -> None:
        self.path = str(path)
        self.where = where
        self.detail = message
        place = f" ({where})" if where else ""
        super().__init__(f"{self.path}{place}: {message}")


class StaleLockError(EnvlockError):
    """The lock no longer matches the spec it was written from."""

    exit_code = 1


class MaterializeError(EnvlockError):
    """An environment could not be created from its lock."""

    exit_code = 3


class ToolMissingError(EnvlockError):
    """An external tool envlock drives (uv, docker, conda) is not available."""

    exit_code = 3
