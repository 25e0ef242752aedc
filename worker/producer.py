"""The public API for backend services: validate, write the record, publish. About a millisecond.

from .producer import Producer
producer = Producer.from_env()
record = producer.cancel("ai_search_api", "req_8f2c", api="v2")
record.id  # keep it to ask for the status later
"""

from __future__ import annotations

import asyncio
import builtins
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from types import TracebackType
from typing import Any, cast

import redis

from . import compensation, forecast, keys, publishing
from .batching import GroupCommit
from .bulk import BATCH_SIZE, FIELDS, batched
from .celery_app import create_app
from .compensation import CompensationReport, MeterCache
from .config import Settings, load_settings
from .embedded import resolve_url
from .errors import (
    AcceptanceUnknown,
    ConfigError,
    InvalidInput,
    NotAccepted,
    RecordNotFound,
    StoreError,
    StoreUnavailable,
)
from .export import ExportFilter
from .export import rows as export_rows
from .forecast import Forecast
from .heartbeat import WorkerInfo, alive
from .listing import MAX_LIMIT, Page, Query, page
from .logging import get_logger
from .messages import TaskMessages
from .models import CancelRequest, Record, Status, iso, parse_iso
from .ratelimit import Budgets, policies
from .reconcile import ReconcileReport
from .replay import ReplayFilter, ReplayReport, replay
from .server_checks import check_server
from .store import Outbox, RecordStore

log = get_logger("adjustments.producer")
# kombu's Redis transport keeps every delivered, not yet acknowledged message in this hash
# (one per Redis database, whatever the queue).
UNACKED_KEY = "unacked"


@dataclass
class BulkResult:
    """What ``cancel_many`` did, position by position of its input."""

    ids: list[str | None] = field(default_factory=list)  # None where the item was invalid
    created: int = 0
    duplicates: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (position, reason)


def _aware_now(now: object) -> datetime:
    """``now`` as given (a timezone-aware datetime) or the current time; InvalidInput else."""
    if now is None:
        return datetime.now().astimezone()
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise InvalidInput(f"now must be a timezone-aware datetime, got {now!r}")
    return now


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


class Producer:
    """Enqueues cancellations and reads their records. Thread-safe; create one per process
    and reuse it (it holds a Redis connection pool), and ``close()`` it (or use ``with``).

    ``Producer(redis_url, settings=Settings(...))`` reads no environment variable;
    ``Producer.from_env()`` reads them all (see the README's configuration table).
    """

    def __init__(self, redis_url: str, *, settings: Settings | None = None) -> None:
        """Connect to ``redis_url`` (``redis://``, ``rediss://``, ``sentinel://``, or
        ``embedded`` for the bundled trial server, announced on stderr).

        ``settings``: queue, key prefix, durability and the other knobs; default
        ``Settings()``, the documented defaults. ``settings.redis_url`` is not used here.
        Raises ConfigError (a ValueError) for an unusable URL; connects lazily.
        """
        self.settings = settings if settings is not None else Settings()
        self._resources = ExitStack()
        self.redis_url = redis_url = resolve_url(redis_url, self.settings.data_dir)
        self._client = self.settings.redis_target(redis_url).client()
        self._store = RecordStore(
            self._client,
            prefix=self.settings.key_prefix,
            retention_s=self.settings.retention_s,
            durability=self.settings.durability,
            durability_timeout_ms=self.settings.durability_timeout_ms,
            order=self.settings.order,
            platforms=self.settings.platform_names,
        )
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
        now = _aware_now(now)
        request = self._build(
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
        with self._writing():
            record, created = self._store.create(request, now=now, outbox=self._outbox)
        return replace(record, created=created)

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
        now = _aware_now(None)
        extra = {
            "original_event": original_event,
            "reason": reason,
            "requested_by": requested_by,
            "platform": platform,
        }
        request = self._build(
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
        # Known already: cancel() finds and returns that record (rare; off the fast path).
        return await asyncio.to_thread(
            self.cancel,
            event_name,
            identifier,
            api=api,
            stripe_account=stripe_account,
            event_received_at=event_received_at,
            original_event=original_event,
            reason=reason,
            requested_by=requested_by,
            platform=platform,
            now=now,
        )

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
        request = self._build(
            event_name,
            identifier,
            api,
            stripe_account,
            None,
            now=datetime.now().astimezone(),
            extra={"platform": platform},
        )
        with self._reading():
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
                self._client,
                durability=self.settings.durability,
                allow_eviction=self.settings.allow_eviction,
            ):
                log.warning("redis.weak_guarantee", reason=warning)
            self._checked = True

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Redis's errors as ours, each saying whether the request may have been written."""
        try:
            self.check_server()
            yield
        except StoreError:
            raise
        except redis.RedisError as exc:
            raise store_error(exc) from exc

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Redis's errors on a read as our StoreUnavailable."""
        try:
            yield
        except redis.RedisError as exc:
            text = " ".join(str(exc).split())
            raise StoreUnavailable(f"cannot read from Redis: {text}") from exc

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
        now = _aware_now(now)
        if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
            raise InvalidInput(f"items must be an iterable of mappings, got {type(items).__name__}")
        result = BulkResult()

        def valid() -> Iterator[tuple[int, CancelRequest]]:
            for position, item in enumerate(items):
                result.ids.append(None)
                try:
                    yield position, self._request(item, now)
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

    def _request(self, item: Mapping[str, Any], now: datetime) -> CancelRequest:
        if not isinstance(item, Mapping):
            raise InvalidInput(
                f"expected a mapping of cancel() arguments, got {type(item).__name__}"
            )
        unknown = sorted(str(key) for key in set(item) - set(FIELDS))
        if unknown:  # a misspelt stripe_account must not send it to the platform account
            raise InvalidInput(f"unknown field(s): {', '.join(unknown)}")
        return self._build(
            item.get("event_name"),
            item.get("identifier"),
            item.get("api"),
            item.get("stripe_account"),
            item.get("event_received_at"),
            now=now,
            extra={
                k: item.get(k) for k in ("original_event", "reason", "requested_by", "platform")
            },
        )

    def _build(
        self,
        event_name: object,
        identifier: object,
        api: object,
        stripe_account: object,
        event_received_at: object,
        *,
        now: datetime,
        extra: Mapping[str, object] | None = None,
    ) -> CancelRequest:
        """The validated request, with the default API (and platform) where none is given.
        ``extra``: ``original_event``, ``reason``, ``requested_by`` and ``platform`` (absent
        or None: not given)."""
        extra = extra or {}
        return CancelRequest.build(
            event_name,
            identifier,
            # Only an absent api (None) takes the default: "", False, 0 are refused as invalid.
            api=self.settings.default_api if api is None else api,
            stripe_account=stripe_account,
            event_received_at=event_received_at,
            original_event=extra.get("original_event"),
            reason=extra.get("reason"),
            requested_by=extra.get("requested_by"),
            platform=self._platform(extra.get("platform")),
            now=now,
        )

    def _platform(self, name: object) -> str | None:
        """The platform's name (the default, the first, for None); InvalidInput for one
        that is not configured. None in a deployment without platforms."""
        if name is not None and not isinstance(name, str):
            raise InvalidInput(f"platform must be a string, got {type(name).__name__}")
        try:
            return self.settings.platform(name).name or None
        except ConfigError as exc:
            raise InvalidInput(str(exc)) from None

    def replay(
        self,
        flt: ReplayFilter | None = None,
        *,
        force: bool = False,
        dry_run: bool = False,
        now: datetime | None = None,
        progress: Callable[[int], None] | None = None,
        **filters: Any,
    ) -> ReplayReport:
        """Replay failed (or, with ``force``, expired) records: next key generation where the
        last key's outcome was definite, a fresh attempt budget, published again.

        ``flt``: a ``ReplayFilter``; or the same as keyword ``filters``: ``ids``, ``status``,
        ``event_name``, ``error_code``, ``since``, ``until``, ``limit``. ``force``: also
        replay expired records (Stripe will likely refuse them). ``dry_run``: report what would
        be replayed and change nothing. ``now``: the current time (for tests). ``progress``:
        called with 1 for each record handled (a progress bar)."""
        flt = flt or ReplayFilter(**filters)
        with self._writing():
            return replay(
                self._store,
                self.publish,
                flt,
                now=_aware_now(now),
                force=force,
                dry_run=dry_run,
                progress=progress,
            )

    def compensate(
        self,
        flt: ReplayFilter | None = None,
        *,
        dry_run: bool = True,
        check_meters: bool = True,
        now: datetime | None = None,
        **filters: Any,
    ) -> CompensationReport:
        """Compensate expired records after the fact: a negative meter event each, sent by
        the workers (see ``compensation``). ``dry_run`` (the default) returns the plan:
        records, and per customer and event name the total negative value; nothing changes.

        ``flt``: a ``ReplayFilter`` with status ``expired`` (the default here), or the same
        as keyword ``filters`` (``ids``, ``event_name``, ``since``, ``until``, ``limit``).
        ``check_meters``: look each record's meter up first (needs STRIPE_API_KEY) so that
        the plan holds only what the workers will send. ``now``: the current time (tests)."""
        from . import stripe_api

        flt = flt or ReplayFilter(**{"status": Status.EXPIRED, **filters})
        meters = None
        settings = self.settings
        if check_meters and all(
            settings.platform(n).api_key for n in settings.platform_names or (None,)
        ):
            caches: dict[str | None, MeterCache] = {}

            def meters(platform: str | None) -> MeterCache:
                if platform not in caches:
                    client = stripe_api.shared_client(settings, platform)
                    caches[platform] = MeterCache(fetch=partial(stripe_api.list_meters, client))
                return caches[platform]

        with self._writing():
            return compensation.run(
                self._store,
                self.publish,
                flt,
                now=_aware_now(now),
                timestamp_mode=self.settings.compensation_timestamp,
                dry_run=dry_run,
                meters=meters,
            )

    def export(self, flt: ExportFilter | None = None, **filters: Any) -> Iterator[dict[str, str]]:
        """Every record in range as a flat row (``export.COLUMNS``), read page by page: for
        finance. ``flt``: an ``ExportFilter``, or its fields as keyword ``filters``
        (``statuses``, ``since``, ``until``, ``event_name``, ``account``). Raises
        StoreUnavailable when Redis cannot be read (rows already given stand)."""
        flt = flt or ExportFilter(**filters)
        with self._reading():
            yield from export_rows(self._store, flt)

    def reconcile(self, *, grace_s: float | None = None) -> ReconcileReport:
        """One reconciliation run now (``adjustments beat`` schedules them): publish again
        what is stuck, expire closed windows. ``grace_s``: how long a record may sit before it
        counts as stuck (default ``settings.reconcile_grace_s``)."""
        from .reconcile import reconcile

        grace = self.settings.reconcile_grace_s if grace_s is None else grace_s
        queue, prefix = self.settings.queue, self.settings.key_prefix
        with self._writing():
            return reconcile(
                store=self._store,
                publish=self.publish,
                now=_aware_now(None),
                grace_s=grace,
                tickets=lambda: publishing.outstanding(self._client, queue=queue, prefix=prefix),
                settle_s=self.settings.heartbeat_s + 0.5,
                compensation_timestamp=(
                    self.settings.compensation_timestamp
                    if self.settings.compensate == "expired"
                    else None
                ),
            )

    def records_of(
        self, platform: str, status: Status | str | None = None, limit: int = 50
    ) -> builtins.list[Record]:
        """The newest records of one platform (its name; InvalidInput for one that is not
        configured), newest first, at most ``limit``, of one ``status`` (a Status or its
        name) or of all: ``list`` with a platform filter."""
        name = self._platform(platform) or ""
        statuses = [Status.parse(status)] if status is not None else list(Status)
        found: builtins.list[Record] = []
        cursor: str | None = None
        while len(found) < limit:
            query = Query(statuses, platform=name, limit=min(MAX_LIMIT, limit - len(found)))
            result = self.page(query, cursor)
            found += result.records
            cursor = result.next_cursor
            if cursor is None:
                break
        return found

    def page(self, query: Query | None = None, cursor: str | None = None) -> Page:
        """One page of records, newest first, and the cursor of the next (None at the end).

        ``query``: statuses and filters (a ``listing.Query``; default all records, 50 a
        page); ``cursor``: a ``next_cursor`` this returned. Raises InvalidInput for a bad
        cursor or limit, StoreUnavailable when Redis cannot be read."""
        with self._reading():
            return page(self._store, query or Query(), cursor)

    def ping(self) -> bool:
        """Whether Redis answers now."""
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def write_problem(self) -> str | None:
        """None when Redis accepts a write now; else why not (unreachable, out of memory, a
        read-only replica), in one line. Writes one small key that expires in a minute."""
        try:
            self._client.set(keys.health_probe(self.settings.key_prefix), "1", px=60_000)
        except redis.RedisError as exc:
            return str(store_error(exc))
        return None

    def counts(self) -> dict[str, int]:
        """Records per status. Raises StoreUnavailable when Redis cannot be read."""
        with self._reading():
            return self._store.counts()

    def recent_outcomes(
        self, series: Mapping[str, Sequence[Status]], *, minutes: int = 60
    ) -> list[dict[str, int]]:
        """For each of the last ``minutes`` minutes (oldest first), how many records reached
        each group of statuses in ``series`` then (from the status indexes' scores; one round
        trip)."""
        now_ms = time.time() * 1000
        start_ms = (now_ms // 60_000 - minutes + 1) * 60_000
        with self._reading():
            pipe = self._client.pipeline(transaction=False)
            for minute in range(minutes):
                low = start_ms + minute * 60_000
                for statuses in series.values():
                    for status in statuses:
                        pipe.zcount(self._store.index_key(status), low, f"({low + 60_000}")
            counts = iter(cast(builtins.list[int], pipe.execute()))
        return [
            {name: sum(next(counts) for _ in statuses) for name, statuses in series.items()}
            for _minute in range(minutes)
        ]

    def windows(self, within_s: Sequence[float] = ()) -> dict[str, Any]:
        """The 24 h windows of live records: ``next_closes_in_s`` (None when none is known),
        ``closing`` (how many close within each of ``within_s``), and ``past_lease`` (records
        still processing after their lease ended)."""
        now = time.time()
        deadline = keys.deadline(self.settings.key_prefix)
        with self._reading():
            pipe = self._client.pipeline(transaction=False)
            pipe.zrange(deadline, 0, 0, withscores=True)
            for seconds in within_s:
                pipe.zcount(deadline, "-inf", int((now + seconds) * 1000))
            pipe.zcount(self._store.index_key(Status.PROCESSING), "-inf", int(now * 1000))
            first, *closing, past_lease = pipe.execute()
        nearest = cast(builtins.list[tuple[str, float]], first)
        return {
            "next_closes_in_s": (nearest[0][1] / 1000 - now) if nearest else None,
            "closing": {s: int(n) for s, n in zip(within_s, closing, strict=True)},
            "past_lease": int(past_lease),
        }

    def last_reconcile(self) -> dict[str, str]:
        """The last reconciliation run: ``finished_at`` (epoch s) and its counts; empty if
        none has run."""
        with self._reading():
            return cast(
                dict[str, str], self._client.hgetall(keys.last_reconcile(self.settings.key_prefix))
            )

    def remember(self, name: str, value: str, *, ttl_s: int, replace: bool = False) -> bool:
        """Keep ``value`` under ``name`` for ``ttl_s`` unless something is kept there already
        (``replace``: whatever is there), atomically; whether it was kept. ``name`` is hashed
        into the key (an HTTP Idempotency-Key's answer, a console session)."""
        with self._writing():
            kept = self._client.set(self._memo_key(name), value, nx=not replace, ex=ttl_s)
        return bool(kept)

    def recall(self, name: str) -> str | None:
        """What ``remember`` kept under ``name``, if it has not expired."""
        with self._reading():
            return cast(str | None, self._client.get(self._memo_key(name)))

    def forget(self, name: str) -> None:
        """Remove what ``remember`` kept under ``name`` (a console session at logout)."""
        with self._writing():
            self._client.delete(self._memo_key(name))

    def _memo_key(self, name: str) -> str:
        return keys.memo(self.settings.key_prefix, name)

    def publish(self, record_id: str) -> bool:
        """Send the task message for ``record_id`` (an existing record's id). A failure is
        counted, logged and returns False, not raised: the record is already safe in Redis
        as ``queued`` and reconciliation publishes it again (see ``publishing``)."""
        return publishing.publish(self._app, record_id, queue=self.settings.queue)

    def get(self, record_id: str, *, with_history: bool = False) -> Record:
        """The record for ``record_id`` (the ``id`` that ``cancel()`` returned);
        ``with_history`` adds the attempt history. Raises RecordNotFound if unknown or past
        retention, StoreError when Redis cannot be read."""
        with self._reading():
            return self._store.get(record_id, with_history=with_history)

    def list(self, status: Status | str | None = None, *, limit: int = 50) -> list[Record]:
        """The newest records, newest first: all of them, or those in ``status`` (a Status or
        its name, e.g. ``"failed"``); at most ``limit``. Raises InvalidInput for an unknown
        status, StoreError when Redis cannot be read."""
        chosen = None if status is None else Status.parse(status)
        with self._reading():
            return self._store.latest(chosen, limit=limit)

    def stats(self) -> dict[str, object]:
        """Records per status, the queue's depth (messages waiting, not yet taken), dead
        letters, the shared Stripe rate (configured ceiling, and current value after any 429
        cuts) and the expiry forecast; with platforms, ``platforms`` gives each one's rate,
        ready records and forecast (the top-level rate is the first platform's, the
        forecast the sum). Raises StoreError when Redis cannot be read."""
        budgets = Budgets.build(
            self._client, policies(self.settings), prefix=self.settings.key_prefix
        )
        with self._reading():
            dead_total = self._client.get(
                keys.dead_letter_total(keys.dead_letter(self.settings.key_prefix))
            )
            records = self._store.counts()
            workers_alive = len(alive(self._client, self.settings.key_prefix))
            platforms = {
                name: self._platform_stats(budgets, name, workers_alive)
                for name in self.settings.platform_names or ("",)
            }
            if self.settings.platform_names and self._client.zcard(
                keys.ready(self.settings.key_prefix)
            ):
                # records made before platforms were configured: sent on the first one's budget
                first = self.settings.platform_names[0]
                platforms[""] = self._platform_stats(budgets, "", workers_alive, rate_of=first)
            expiring = sum(cast(int, p["expiry_forecast"]) for p in platforms.values())
            misses = [
                cast(str, p["expiry_forecast_first_miss"])
                for p in platforms.values()
                if p["expiry_forecast_first_miss"]
            ]
            if self.settings.order == "fifo" and len(platforms) > 1:
                # fifo keeps one set of deadlines for all: each platform's forecast is of all
                # of them at its rate, not a part of a sum (the README says so)
                expiring = max(cast(int, p["expiry_forecast"]) for p in platforms.values())
                misses = misses[:1]
            first_platform = next(iter(platforms.values()))
            out: dict[str, object] = {
                "records": records,
                "queue": {
                    "waiting": self.queue_depth(),  # in Redis, not yet taken by a worker
                    "held_by_workers": int(self._client.hlen(UNACKED_KEY)),  # taken, not acked
                    "scheduled_retries": records[Status.RETRYING.value],
                },
                "ready": sum(cast(int, p["ready"]) for p in platforms.values()),  # to send now
                "dead_letters": int(dead_total or 0),  # unparseable queue items set aside, ever
                "oldest_live_age_s": round(self.oldest_live_age_s(), 3),
                "workers_alive": workers_alive,
                # At the rate the workers achieve now (0 with none alive): how many waiting
                # records will miss their 24 h window, and the nearest deadline missed.
                "expiry_forecast": expiring,
                "expiry_forecast_first_miss": min(misses) if misses else None,
                "rate_limit": first_platform["rate_limit"],
            }
            if self.settings.platform_names:
                out["platforms"] = {name or "(none)": p for name, p in platforms.items()}
            return out

    def _platform_stats(
        self, budgets: Budgets, name: str, workers_alive: int, *, rate_of: str | None = None
    ) -> dict[str, object]:
        """One platform's rate (as the workers use it), ready records and forecast."""
        configured, current, from_workers = budgets.limiter(rate_of or name).shared()
        outlook = self.expiry_forecast(
            rate_per_s=(current if configured > 0 else -1.0) if workers_alive else 0.0,
            platform=name,
        )
        return {
            "ready": int(self._client.zcard(keys.ready(self.settings.key_prefix, name))),
            "expiry_forecast": outlook.expiring,
            "expiry_forecast_first_miss": (
                iso(datetime.fromtimestamp(outlook.first_miss_ms / 1000, UTC))
                if outlook.first_miss_ms is not None
                else None
            ),
            "rate_limit": {
                # The limit as the workers use it (from Redis), not this process's settings;
                # "source" says which.
                "configured_per_s": configured,
                "current_per_s": round(current, 2),
                "source": "workers" if from_workers else "settings (no worker has sent yet)",
            },
        }

    def expiry_forecast(self, *, rate_per_s: float, platform: str = "") -> Forecast:
        """How many of ``platform``'s waiting records will miss their window if the workers
        go on sending at ``rate_per_s`` (0: none is sent; below 0: no limit), deadline
        first, and the nearest deadline missed (see ``forecast``). With order=fifo every
        platform's known deadlines are read. Raises StoreUnavailable when Redis cannot be
        read."""
        key = (
            keys.ready(self.settings.key_prefix, platform)
            if self.settings.order == "deadline"
            else keys.deadline(self.settings.key_prefix)  # fifo: the deadlines that are known
        )
        with self._reading():
            return forecast.read(
                self._client, key, now_ms=time.time() * 1000, rate_per_s=rate_per_s
            )

    def oldest_live_age_s(self) -> float:
        """Age in seconds of the oldest live (queued, processing or retrying) record, 0 when
        none is live. Read from the first record of each live status index, each O(log n)
        (the queued index is scored by when a record became queued)."""
        client = self._client
        candidates: builtins.list[str | None] = []
        with self._reading():
            for status in (Status.QUEUED, Status.PROCESSING, Status.RETRYING):
                candidates += cast(
                    builtins.list[str], client.zrange(self._store.index_key(status), 0, 0)
                )
            pipe = client.pipeline(transaction=False)
            ids = [c for c in candidates if c]
            for record_id in ids:
                pipe.hget(self._store.record_key(record_id), "created_at")
            created = [parse_iso(str(c)) for c in pipe.execute() if c]
        times = [c.timestamp() for c in created if c is not None]
        return max(0.0, time.time() - min(times)) if times else 0.0

    def workers(self) -> builtins.list[WorkerInfo]:  # (the list method shadows the builtin)
        """Workers alive now (their heartbeat has not expired), newest beat first. Raises
        StoreError when Redis cannot be read."""
        with self._reading():
            return alive(self._client, self.settings.key_prefix)

    def queue_depth(self) -> int:
        """Messages waiting in the queues, not yet taken by a worker."""
        # Countdown messages held by workers until due are not counted.
        names = [
            name
            for queue in (self.settings.queue, self.settings.later_queue)
            for name in publishing.queue_lists(queue)
        ]
        with self._reading():
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            return int(sum(pipe.execute()))

    def close(self) -> None:
        """Release the connections (and stop a bundled server this producer started)."""
        self._app.close()
        self._client.close()
        self._resources.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
