"""The exception tree: one base, input errors the CLI turns into exit code 2."""

from __future__ import annotations


class AdjustmentsError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInput(AdjustmentsError, ValueError):
    """Raised when a cancellation request or an argument is malformed; nothing was written."""


class ConfigError(AdjustmentsError, ValueError):
    """Raised when the environment holds an invalid or unsafe setting."""


class RecordNotFound(AdjustmentsError, KeyError):
    """Raised when a request id names no record (never created, or past retention)."""


class EmbeddedRedisError(AdjustmentsError, RuntimeError):
    """Raised when the embedded Redis server cannot be started or reached."""
