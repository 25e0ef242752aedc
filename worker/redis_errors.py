"""Redis's errors as ours: each says whether a failed write may have happened."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from .errors import AcceptanceUnknown, NotAccepted, StoreError, StoreUnavailable


def store_error(exc: redis.RedisError) -> StoreError:
    """Whether a failed write may have happened: Redis refused it or was never reached (not
    accepted), or the answer was lost on the way back (unknown)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return NotAccepted(f"Redis is out of memory and refused the write: {text}")
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return NotAccepted(
            f"Redis is a read-only replica (failover?) and refused the write: {text}"
        )
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError) and " connecting to " in text:
        # redis-py's message for a connection that was never established: nothing was sent.
        return NotAccepted(f"cannot reach Redis, nothing was written: {text}")
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return AcceptanceUnknown(
            f"Redis did not answer ({text}): the request may or may not have been written; "
            "call cancel() again, it is idempotent"
        )
    return NotAccepted(f"Redis refused the write: {text}")


@contextmanager
def writing() -> Iterator[None]:
    """Redis's errors on a write as our StoreError, saying whether it may have happened."""
    try:
        yield
    except StoreError:
        raise
    except redis.RedisError as exc:
        raise store_error(exc) from exc


@contextmanager
def reading() -> Iterator[None]:
    """Redis's errors on a read as our StoreUnavailable."""
    try:
        yield
    except redis.RedisError as exc:
        text = " ".join(str(exc).split())
        raise StoreUnavailable(f"cannot read from Redis: {text}") from exc
