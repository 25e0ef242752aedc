"""The public API for backend services: validate, write the record, publish. About a millisecond.

    from adjustments import Producer

    with Producer.from_env() as producer:
        record = producer.cancel("ai_search_api", "req_8f2c", api="v2")
        record.id  # keep it to ask for the status later

Reads of the deployment as a whole (stats, windows, workers) are ``Producer.readouts``
(``readouts``); the input rules are ``intake``'s.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import TracebackType
from typing import Any

import redis

from . import keys, publishing
from .batching import GroupCommit
from .bulk import BATCH_SIZE, batched
from .celery_config import create_app
from .config import Settings, load_settings
from .embedded import resolve_url
from .errors import InvalidInput, RecordNotFound
from .intake import Intake, aware_now
from .listing import MAX_LIMIT, Page, Query, page
from .logging import get_logger
from .messages import TaskMessages
from .models import CancelRequest, Record, Status
from .operations import Operations
from .readouts import Readouts
from .redis_errors import reading, store_error, writing
from .server_checks import check_server
from .snapshot import Stats
from .store import Outbox, RecordStore

log = get_logger("adjustments.producer")


@dataclass
class BulkResult:
    """What ``cancel_many`` did, position by position of its input."""

    ids: list[str | None] = field(default_factory=list)  # None where the item was invalid
    created: int = 0
    duplicates: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)


class Producer:
    """Enqueues cancellations and reads their records. Thread-safe; create one per process
    and reuse it (it holds a Redis connection pool), and ``close()`` it (or use ``with``).

    ``Producer(redis_url, settings=Settings(...))`` reads no environment variable;
    ``Producer.from_env()`` reads them all (see the configuration reference).
    """

    def __init__(
        self,
        redis_url: str,
        *,
        settings: Settings | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        """Connect to ``redis_url`` (``redis://``, ``rediss://``, ``sentinel://``, or
        ``embedded`` for the bundled trial server, announced on stderr).

        ``settings``: queue, key prefix, durability and the other knobs; default
        ``Settings()``, the documented defaults. ``settings.redis_url`` is not used here.
        ``client``: a Redis client (``decode_responses=True``) to use instead of one made
        from ``redis_url``, e.g. a fakeredis one in a test; it is closed with the producer.
        Raises ConfigError (a ValueError) for an unusable URL; connects lazily.
        """
        self.settings = settings if settings is not None else Settings()
        self.redis_url = redis_url = resolve_url(redis_url, self.settings.data_dir)
        self.client: redis.Redis = client or self.settings.redis_target(redis_url).client()
        self._store = RecordStore.from_settings(self.client, self.settings)
        self.readouts = Readouts(self.client, self._store, self.settings)
        self.operations = Operations(self._store, self.settings, self.publish, self._writing)
        self._intake = Intake(self.settings)
        self._checked = False
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GroupCommit[Any]]
        self._batchers = weakref.WeakKeyDictionary()
        self._check_lock = threading.Lock()
        self._app = create_app(self.settings, redis_url, name="adjustments-producer")
        messages = TaskMessages(self._app, self.settings.queue)
        self._outbox = Outbox(self.settings.queue, messages.payload)

    @classmethod
    def from_env(cls) -> Producer:
        """A producer configured from the environment (``REDIS_URL`` and the ``ADJUSTMENTS_*``
        variables, or the module named by ``ADJUSTMENTS_SETTINGS_MODULE``).

        Raises ConfigError naming ``REDIS_URL`` when it is unset: nothing is started or
        written. ``REDIS_URL=embedded`` chooses the bundled trial server explicitly."""
        settings = load_settings()
        return cls(settings.redis_url or "", settings=settings)

    def cancel(
        self,
        event_name: str,
        identifier: str,
        *,
        api: str | None = None,
        stripe_account: str | None = None,
        event_received_at: datetime | float | int | str | None = None,
        original_event: Mapping[str, Any] | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
        platform: str | None = None,
        now: datetime | None = None,
    ) -> Record:
        """Enqueue the cancellation of one meter event and return its record.

        ``event_name``: the meter's event name; ``identifier``: the meter event's identifier
        (each 1-100 characters, no control characters). ``api``: ``"v1"`` or ``"v2"``
        (default ``settings.default_api``). ``stripe_account``: a connected account
        (``acct_...``; for v2 also ``acct_.../acct_...``) or None for the platform.
        ``event_received_at``: when Stripe received the event (aware datetime, epoch seconds
        or ISO 8601 with an offset), within the last 24 h; it lets the record expire on time.
        ``original_event``: ``{"payload": {...}, "timestamp": ...}``, the meter event as it
        was sent to Stripe (string values; its timestamp as epoch seconds, an aware datetime
        or ISO 8601, within 35 days): what a compensation needs if the window is missed.
        ``reason`` (up to 500 characters) and ``requested_by`` (who asked) are kept on the
        record for finance. ``platform``: which of the deployment's own Stripe accounts
        (``ADJUSTMENTS_PLATFORMS``; default the first); part of what identifies the request.
        ``now``: the current time, a timezone-aware datetime (for tests).

        ``record.created`` is True when this call enqueued the request and False when the same
        (api, account, event_name, identifier, platform) was already known: that record is returned.
        Raises InvalidInput (a ValueError) for bad input and NotAccepted or AcceptanceUnknown
        (both StoreError) when Redis fails; nothing is written on InvalidInput or NotAccepted.
        """
        now = aware_now(now)
        request = self._intake.request(
            event_name,
            identifier,
            api,
            stripe_account,
            event_received_at,
            now=now,
            extra={
                "original_event": original_event,
                "reason": reason,
                "requested_by": requested_by,
                "platform": platform,
            },
        )
        return self._create(request, now)

    async def cancel_async(
        self,
        event_name: str,
        identifier: str,
        *,
        api: str | None = None,
        stripe_account: str | None = None,
        event_received_at: datetime | float | int | str | None = None,
        original_event: Mapping[str, Any] | None = None,
        reason: str | None = None,
        requested_by: str | None = None,
        platform: str | None = None,
    ) -> Record:
        """``cancel()`` for asyncio code, without blocking the event loop on Redis.

        ``event_name``, ``identifier``, ``api``, ``stripe_account``, ``event_received_at``,
        ``original_event``, ``reason``, ``requested_by`` and ``platform`` are ``cancel()``'s,
        validated the same way; the record and the errors are the same too. Concurrent calls
        on one loop share round trips (see ``batching``), so a web server that enqueues at
        its request rate makes a few Redis round trips per batch of requests instead of one
        per request."""
        now = aware_now(None)
        extra = {
            "original_event": original_event,
            "reason": reason,
            "requested_by": requested_by,
            "platform": platform,
        }
        request = self._intake.request(
            event_name, identifier, api, stripe_account, event_received_at, now=now, extra=extra
        )
        script_keys, args, fields = self._store.create_args(request, now, self._outbox)
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = GroupCommit(self._create_batch)
        try:
            created, _ = await batcher.submit((script_keys, args))
        except redis.RedisError as exc:
            raise store_error(exc) from exc
        if int(created):
            return replace(Record.from_hash({k: str(v) for k, v in fields.items()}), created=True)
        # Known already: the stored record, as cancel() returns it (rare; off the fast path).
        return await asyncio.to_thread(self._create, request, now)

    def _create(self, request: CancelRequest, now: datetime) -> Record:
        with self._writing():
            record, created = self._store.create(request, now=now, outbox=self._outbox)
        return replace(record, created=created)

    def _create_batch(self, calls: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[Any]:
        with self._writing():
            return self._store.create_replies(calls)

    def find(
        self,
        event_name: str,
        identifier: str,
        *,
        api: str | None = None,
        stripe_account: str | None = None,
        platform: str | None = None,
        with_history: bool = False,
    ) -> Record:
        """The record of the request ``cancel()`` would make of these arguments.

        ``event_name``, ``identifier``, ``api`` (default ``settings.default_api``),
        ``stripe_account`` and ``platform`` identify the request as in ``cancel()``;
        ``with_history`` adds the attempt history. Raises InvalidInput for bad arguments,
        RecordNotFound when no such request is known (never enqueued, or past retention),
        StoreError when Redis cannot be read."""
        request = self._intake.request(
            event_name,
            identifier,
            api,
            stripe_account,
            None,
            now=datetime.now().astimezone(),
            extra={"platform": platform},
        )
        with reading():
            record = self._store.find_request(request, with_history=with_history)
        if record is None:
            raise RecordNotFound(f"{request.api} {event_name}/{identifier}")
        return record

    def check_server(self) -> None:
        """Refuse a Redis that cannot keep our promises (UnsafeRedis); log weaker set-ups.

        Runs once, before the first write (``cancel()`` and ``cancel_many()`` call it)."""
        if self._checked:
            return
        with self._check_lock:
            if self._checked:
                return
            for warning in check_server(
                self.client,
                durability=self.settings.durability,
                allow_eviction=self.settings.allow_eviction,
            ):
                log.warning("redis.weak_guarantee", reason=warning)
            self._checked = True

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Redis's errors as ours, each saying whether the request may have been written;
        the server is checked before the first write."""
        with writing():
            self.check_server()
            yield

    def cancel_many(
        self, items: Iterable[Mapping[str, Any]], *, now: datetime | None = None
    ) -> BulkResult:
        """Enqueue many cancellations: records and their task messages written by the same
        Lua script as ``cancel()``, pipelined 1,000 to a Redis round trip.

        ``items``: mappings with the keyword arguments of ``cancel()`` (``event_name``,
        ``identifier``, optional ``api``, ``stripe_account``, ``event_received_at``,
        ``original_event``, ``reason``, ``requested_by``, ``platform``); any other key makes
        the item invalid. ``now``: the current time, timezone-aware (for tests).
        Invalid items are reported in ``invalid`` with their position and skipped; every valid
        one is enqueued once. Raises InvalidInput when ``items`` is not an iterable of
        mappings, StoreError when Redis fails (earlier chunks stay written).
        """
        now = aware_now(now)
        if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
            raise InvalidInput(f"items must be an iterable of mappings, got {type(items).__name__}")
        result = BulkResult()

        def valid() -> Iterator[tuple[int, CancelRequest]]:
            for position, item in enumerate(items):
                result.ids.append(None)
                try:
                    yield position, self._intake.from_item(item, now)
                except InvalidInput as exc:
                    result.invalid.append((position, str(exc)))

        for batch in batched(valid(), BATCH_SIZE):
            self._write_chunk([r for _, r in batch], [p for p, _ in batch], result, now)
        return result

    def _write_chunk(
        self, chunk: list[CancelRequest], slots: list[int], result: BulkResult, now: datetime
    ) -> None:
        with self._writing():
            written = self._store.create_many(chunk, now=now, outbox=self._outbox)
        for position, (record_id, created) in zip(slots, written, strict=True):
            result.ids[position] = record_id
            if created:
                result.created += 1
            else:
                result.duplicates += 1

    def page(self, query: Query | None = None, cursor: str | None = None) -> Page:
        """One page of records, newest first, and the cursor of the next (None at the end).

        ``query``: statuses and filters (a ``listing.Query``; default all records, 50 a
        page); ``cursor``: a ``next_cursor`` this returned. Raises InvalidInput for a bad
        cursor or limit, StoreUnavailable when Redis cannot be read."""
        with reading():
            return page(self._store, query or Query(), cursor)

    def ping(self) -> bool:
        """Whether Redis answers now."""
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def write_problem(self) -> str | None:
        """None when Redis accepts a write now; else why not (unreachable, out of memory, a
        read-only replica), in one line. Writes one small key that expires in a minute."""
        try:
            self.client.set(keys.health_probe(self.settings.key_prefix), "1", px=60_000)
        except redis.RedisError as exc:
            return str(store_error(exc))
        return None

    def publish(self, record_id: str) -> bool:
        """Send the task message for ``record_id`` (an existing record's id). A failure is
        counted, logged and returns False, not raised: the record is already safe in Redis
        as ``queued`` and reconciliation publishes it again (see ``publishing``)."""
        return publishing.publish(self._app, record_id, queue=self.settings.queue)

    def get(self, record_id: str, *, with_history: bool = False) -> Record:
        """The record for ``record_id`` (the ``id`` that ``cancel()`` returned);
        ``with_history`` adds the attempt history. Raises RecordNotFound if unknown or past
        retention, StoreError when Redis cannot be read."""
        with reading():
            return self._store.get(record_id, with_history=with_history)

    def latest(
        self, status: Status | str | None = None, *, limit: int = 50, platform: str | None = None
    ) -> list[Record]:
        """The newest records, newest first: all of them, or those in ``status`` (a Status or
        its name, e.g. ``"failed"``); at most ``limit``; of one ``platform`` only when given
        (its name). Raises InvalidInput for an unknown status or platform, StoreError when
        Redis cannot be read."""
        chosen = None if status is None else Status.parse(status)
        if platform is None:
            with reading():
                return self._store.latest(chosen, limit=limit)
        name = self._intake.platform(platform) or ""
        found: list[Record] = []
        cursor: str | None = None
        while len(found) < limit:
            statuses = [chosen] if chosen is not None else list(Status)
            query = Query(statuses, platform=name, limit=min(MAX_LIMIT, limit - len(found)))
            result = self.page(query, cursor)
            found += result.records
            cursor = result.next_cursor
            if cursor is None:
                break
        return found

    def stats(self) -> Stats:
        """The deployment at a glance (``snapshot.Stats``): records per status, the queue,
        dead letters, live workers, the shared Stripe rate as the workers use it and the
        expiry forecast, per platform too. Raises StoreError when Redis cannot be read."""
        return self.readouts.stats()

    def counts(self) -> dict[str, int]:
        """Records per status. Raises StoreUnavailable when Redis cannot be read."""
        return self.readouts.counts()

    def close(self) -> None:
        """Release the connections (and stop a bundled server this producer started)."""
        self._app.close()
        self.client.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
