"""Group commit for asyncio callers: concurrent ``cancel_async()`` calls on one event loop
share Redis round trips.

Each call puts its prepared write in the pending list; while one batch is on its way to Redis
(one pipeline, run in a worker thread so that the event loop never blocks on a socket), the
next calls gather, and go together as soon as it returns. One caller alone pays one round trip
and one thread hop; a hundred concurrent callers pay a few round trips between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

Call = TypeVar("Call")
MAX_BATCH = 1000


class GroupCommit(Generic[Call]):
    """Runs ``run(calls) -> replies`` (one reply per call: a value, or an exception for that
    call alone) for batches of the calls submitted on one event loop."""

    def __init__(self, run: Callable[[Sequence[Call]], list[Any]]) -> None:
        self.run = run
        self.pending: list[tuple[Call, asyncio.Future[Any]]] = []
        self.draining = False

    async def submit(self, call: Call) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append((call, future))
        if not self.draining:
            self.draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
                try:
                    replies = await asyncio.to_thread(self.run, [call for call, _ in batch])
                except Exception as exc:  # the whole round trip failed: every call with it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if future.done():  # its caller went away (cancelled)
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self.draining = False
