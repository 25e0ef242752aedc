"""Short-lived values the HTTP server keeps in Redis: an ``Idempotency-Key``'s answer, a
console session. Each name is hashed into its key (``keys.memo``)."""

from __future__ import annotations

from typing import cast

import redis

from .. import keys
from ..redis_errors import reading, writing


class Memo:
    """Values kept under names, each for a time, on ``client`` (``decode_responses=True``)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        """Keep values on ``client`` under keys with ``prefix`` (the deployment's)."""
        self.client = client
        self.prefix = prefix

    def remember(self, name: str, value: str, *, ttl_s: int, replace: bool = False) -> bool:
        """Keep ``value`` under ``name`` for ``ttl_s`` unless something is kept there already
        (``replace``: whatever is there), atomically; whether it was kept."""
        with writing():
            kept = self.client.set(self._key(name), value, nx=not replace, ex=ttl_s)
        return bool(kept)

    def recall(self, name: str) -> str | None:
        """What ``remember`` kept under ``name``, if it has not expired."""
        with reading():
            return cast(str | None, self.client.get(self._key(name)))

    def forget(self, name: str) -> None:
        """Remove what ``remember`` kept under ``name`` (a console session at logout)."""
        with writing():
            self.client.delete(self._key(name))

    def _key(self, name: str) -> str:
        return keys.memo(self.prefix, name)
