"""The exception tree: one base, input errors the CLI turns into exit code 2."""

from __future__ import annotations


class AdjustmentsError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidInput(AdjustmentsError, ValueError):
    """Raised when a cancellation request or an argument is malformed; nothing was written."""


class ConfigError(AdjustmentsError, ValueError):
    """Raised when the environment holds an invalid or unsafe setting."""


class RecordNotFound(AdjustmentsError, KeyError):
    """Raised when a request id (or an event name and identifier) names no record: never
    created, or past retention."""

    def __str__(self) -> str:  # KeyError's own str() would quote the id
        return str(self.args[0]) if self.args else ""


class EmbeddedRedisError(AdjustmentsError, RuntimeError):
    """Raised when the embedded Redis server cannot be started or reached."""


class StoreError(AdjustmentsError):
    """Raised when the store (Redis) is unavailable, within the client's socket timeouts;
    the subclass says whether a write may have happened."""


class StoreUnavailable(StoreError, ConnectionError):
    """Raised when a read (``get``, ``find``, ``list``, ``stats``) could not reach Redis."""


class NotAccepted(StoreError, ConnectionError):
    """Raised when Redis was unreachable or refused the write (out of memory, read-only
    replica): nothing was written, so the request was not accepted. Safe to try again."""


class AcceptanceUnknown(StoreError, TimeoutError):
    """Raised when the write may or may not have happened (a timeout or a connection lost after
    sending, or durability not confirmed in time). Call ``cancel()`` again: it is idempotent
    and returns the existing record if the first call was written."""


class ClaimNotDurable(StoreError, TimeoutError):
    """A worker's claim of a record was not confirmed as durable in time: it sends nothing
    (the record is taken again once the claim's lease ends)."""


class CancellationFailed(AdjustmentsError):
    """Raised by the worker's task after it recorded a permanent failure, so Celery (events,
    Flower, Sentry) sees the task as FAILURE; the record already says why. Never retried."""


class Unhealthy(AdjustmentsError):
    """Raised by ``adjustments health`` when no live worker answers for this host."""


class UnsafeRedis(StoreError, ConfigError):
    """Raised when the Redis server cannot keep the promises configured (an eviction policy,
    no append-only file for ``fsync``, a server too old for WAITAOF). A StoreError (nothing
    was written: ``except StoreError`` handles it) and a ConfigError (the CLI exits 2)."""
