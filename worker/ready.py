"""The ready sets: each platform's records ready to send, in the order they go (deadline
first, or with order=fifo as they became ready), and the due retries that join them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

import redis

from . import keys
from .config import Order
from .models import Record, Status, to_ms

# A retry's message may come this much before the retry is due (a countdown's rounding): it
# waits for it rather than finding nothing.
EARLY_RETRY_TOLERANCE_MS = 1000


class ReadySets:
    """Reads of the ready sets named ``names`` ("": records without a platform), under
    ``prefix``. Each platform's records wait in a set of their own, so each platform's rate
    budget is spent on its own most urgent ones."""

    def __init__(
        self, client: redis.Redis, prefix: str, order: Order, names: Sequence[str]
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.order = order
        self.names = tuple(names)
        self.retrying = keys.index(prefix, Status.RETRYING.value)

    def score(self, record: Record, now: datetime) -> int:
        """Where ``record`` goes among the ready when it becomes ready at ``now``."""
        return to_ms(now) if self.order == "fifo" else to_ms(record.deadline)

    def ids(self, count: int) -> list[str]:
        """The ``count`` ready records that go first (of all platforms, by score)."""
        pipe = self.client.pipeline(transaction=False)
        for platform in self.names:
            pipe.zrange(keys.ready(self.prefix, platform), 0, count - 1, withscores=True)
        heads = cast(list[list[tuple[str, float]]], pipe.execute())
        merged = sorted((entry for head in heads for entry in head), key=lambda e: e[1])
        return [record_id for record_id, _ in merged[:count]]

    def platforms(self, now: datetime) -> dict[str, float]:
        """The platforms ("" for records without one) with a record ready to send now, each
        with the score of its first (its deadline, or with order=fifo when it became ready;
        a due retry not yet made ready counts with its due time). One round trip, two when
        retries are due."""
        pipe = self.client.pipeline(transaction=False)
        for platform in self.names:
            pipe.zrange(keys.ready(self.prefix, platform), 0, 0, withscores=True)
        pipe.zrangebyscore(self.retrying, "-inf", to_ms(now), 0, 100, withscores=True)
        *heads, due = cast(list[list[tuple[str, float]]], pipe.execute())
        found = {
            platform: head[0][1] for platform, head in zip(self.names, heads, strict=True) if head
        }
        if due:
            pipe = self.client.pipeline(transaction=False)
            for record_id, _ in due:
                pipe.hget(keys.record(self.prefix, record_id), "platform")
            for (_, due_ms), platform in zip(due, pipe.execute(), strict=True):
                name = str(platform or "")
                found[name] = min(found.get(name, due_ms), due_ms)
        return found

    def any(self, now: datetime) -> bool:
        """Whether a record is ready to send, or a retry is due within the tolerance."""
        return self.due_in(now) is not None

    def due_in(self, now: datetime) -> float | None:
        """Seconds until a record is ready to send: 0 when one is (or a retry is due), the
        wait for the first retry when it is due within EARLY_RETRY_TOLERANCE_MS (a message
        with a countdown may come a moment early: it waits rather than finding nothing),
        None when nothing is. One round trip, no claim."""
        pipe = self.client.pipeline(transaction=False)
        for platform in self.names:
            pipe.zcard(keys.ready(self.prefix, platform))
        pipe.zrangebyscore(
            self.retrying,
            "-inf",
            to_ms(now) + EARLY_RETRY_TOLERANCE_MS,
            0,
            1,
            withscores=True,
        )
        *ready, due = pipe.execute()
        if any(ready):
            return 0.0
        if not due:
            return None
        return max(0.0, (float(due[0][1]) - to_ms(now)) / 1000)
