"""The Redis record store: create with dedupe, leased claims, atomic transitions, indexes.

Every write is one Lua script, so a record, its status indexes, its history and the deadline
index never disagree, and an illegal move (a late duplicate overwriting ``complete``) is
refused inside Redis. Index scores say when a record next needs attention: creation time for
``queued``, lease end for ``processing``, ``next_attempt_at`` for ``retrying``, and the last
update for terminal statuses.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import redis
from redis.lock import Lock

from . import keys, lua
from .config import CANCEL_WINDOW_S, Durability, Order, Settings
from .durable import Durable
from .errors import RecordNotFound
from .models import TERMINAL, CancelRequest, Record, Status, iso, to_ms
from .ready import EARLY_RETRY_TOLERANCE_MS, ReadySets

DEFAULTS = Settings()
ClaimKind = Literal["claimed", "missing", "leased", "not_due", "terminal", "window_closed", "empty"]
# A message's own record goes instead of the first ready one when its deadline is this close:
# deadline order to the second (windows are 24 h), and a trace stays with its own request.
HINT_TOLERANCE_MS = 1000
HISTORY_CAP = 20
# Fields a fresh record does not store: Record.from_hash reads them as 0, created_at and the
# generation-0 idempotency key until a transition writes them.
DERIVED_AT_CREATION = frozenset(
    {"attempts", "generation", "replays", "updated_at", "idempotency_key"}
)
LIVE = frozenset({Status.QUEUED, Status.PROCESSING, Status.RETRYING})


def _pairs(fields: Mapping[str, str | int]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        out.extend((name, str(value)))
    return out


def _hash(flat: Sequence[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


@dataclass(frozen=True)
class Outbox:
    """Where and what to enqueue with a new record: the queue's list and its message."""

    queue_key: str
    message_for: Callable[[str], str]


@dataclass(frozen=True)
class Moved:
    """What a transition did: ``reason`` is "ok", or why nothing changed ("missing",
    "refused": its status was not an allowed one, "lost_lease": another claim holds it,
    "leased": processing under a running lease); ``before`` is the status it had. True only
    when the record moved."""

    reason: str
    before: str = ""

    def __bool__(self) -> bool:
        return self.reason == "ok"


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: the record and the lease token when ``kind == 'claimed'``."""

    kind: ClaimKind
    record: Record | None = None
    token: str = ""
    status: str = ""
    record_id: str = ""  # a "window_closed" answer of claim_next: the record to expire


def new_fields(req: CancelRequest, record_id: str, now: datetime) -> dict[str, str | int]:
    """The hash of a fresh ``queued`` record."""
    digest = req.digest
    expires = req.expires_at
    return {
        "id": record_id,
        "api": req.api,
        "event_name": req.event_name,
        "identifier": req.identifier,
        "stripe_account": req.stripe_account or "",
        "status": Status.QUEUED.value,
        "attempts": 0,
        "generation": 0,
        "replays": 0,
        "created_at": iso(now),
        "updated_at": iso(now),
        "event_received_at": iso(req.event_received_at),
        "expires_at_ms": to_ms(expires) if expires else "",
        "next_attempt_at": "",
        "idempotency_key": keys.idempotency_key(digest, 0),
        "original_event": req.original_event.to_json() if req.original_event else "",
        "reason": req.reason or "",
        "requested_by": req.requested_by or "",
        "platform": req.platform or "",
    }


class RecordStore:
    """Records in Redis. Pass a client made with ``decode_responses=True``.

    Each argument left out takes the setting's default (``Settings``): one default each."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULTS.key_prefix,
        retention_s: int = DEFAULTS.retention_s,
        durability: Durability = DEFAULTS.durability,
        durability_timeout_ms: int = DEFAULTS.durability_timeout_ms,
        order: Order = DEFAULTS.order,
        platforms: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.order = order
        # Each platform's records wait in a ready set of their own ("": records without a
        # platform), so each platform's rate budget is spent on its own most urgent ones.
        self.ready = ReadySets(client, prefix, order, ("", *platforms))
        self.retention_s = retention_s
        self.durable = Durable(client, durability, durability_timeout_ms)
        self._create = client.register_script(lua.load("create.lua"))
        self._claim = client.register_script(lua.load("claim.lua"))
        self._claim_next = client.register_script(lua.load("claim_next.lua"))
        self._transition = client.register_script(lua.load("transition.lua"))

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> RecordStore:
        """The store as ``settings`` configure it (prefix, retention, durability, order,
        platforms)."""
        return cls(
            client,
            prefix=settings.key_prefix,
            retention_s=settings.retention_s,
            durability=settings.durability,
            durability_timeout_ms=settings.durability_timeout_ms,
            order=settings.order,
            platforms=settings.platform_names,
        )

    # --- keys -----------------------------------------------------------------------------
    def record_key(self, record_id: str) -> str:
        return keys.record(self.prefix, record_id)

    def dedupe_key(self, record: Record | CancelRequest) -> str:
        req = record if isinstance(record, CancelRequest) else record.request
        return keys.dedupe(self.prefix, req.digest)

    def index_key(self, status: Status) -> str:
        return keys.index(self.prefix, status.value)

    # --- create and read -------------------------------------------------------------------
    def create_args(
        self, req: CancelRequest, now: datetime, outbox: Outbox | None = None
    ) -> tuple[list[str], list[str], dict[str, str | int]]:
        """KEYS and ARGV of create.lua for ``req`` (also used by pipelined bulk writes)."""
        record_id = "adj_" + uuid.uuid4().hex
        fields = new_fields(req, record_id, now)
        script_keys = [
            self.record_key(record_id),
            self.dedupe_key(req),
            self.index_key(Status.QUEUED),
            keys.deadline(self.prefix),
            outbox.queue_key if outbox else keys.deadline(self.prefix),  # unused without outbox
            keys.ready(self.prefix, req.platform or ""),
        ]
        message = outbox.message_for(record_id) if outbox else ""
        # Absent reads as empty, and as the creation-time value for the fields Record.from_hash
        # derives: a queued record is a third smaller in Redis (docs/performance.md, backlog).
        stored = {k: v for k, v in fields.items() if v != "" and k not in DERIVED_AT_CREATION}
        # Without the event's receipt time, the latest its window can close: 24 h after the
        # cancellation was requested (the event was received before that). Deadline-first
        # orders by it; it is not stored (a queued record's ready score is its deadline).
        deadline = req.expires_at or now + timedelta(seconds=CANCEL_WINDOW_S)
        ready_score = to_ms(deadline) if self.order == "deadline" else to_ms(now)
        window_end = str(fields["expires_at_ms"])
        args = [record_id, str(to_ms(now)), window_end, message, str(ready_score), *_pairs(stored)]
        return script_keys, args, fields

    def create(
        self, req: CancelRequest, *, now: datetime, outbox: Outbox | None = None
    ) -> tuple[Record, bool]:
        """Write a queued record (and, with ``outbox``, its task message in the same step), or
        find the existing one for the same request. Returns ``(record, created)``."""
        for _ in range(2):
            script_keys, args, fields = self.create_args(req, now, outbox)
            created, found_id = cast(
                list[Any], self.durable.scripts(self._create, [(script_keys, args)])[0]
            )
            if int(created):
                return Record.from_hash({k: str(v) for k, v in fields.items()}), True
            existing = self.find(str(found_id))
            if existing is not None:
                return existing, False
            # The dedupe key outlived its record by a moment (both expire at retention): retry.
            self.client.delete(self.dedupe_key(req))
        raise RuntimeError("could not create or find the record")  # pragma: no cover

    def create_many(
        self, requests: Sequence[CancelRequest], *, now: datetime, outbox: Outbox | None = None
    ) -> list[tuple[str, bool]]:
        """Pipelined ``create``, all or nothing: one round trip and one MULTI/EXEC for the
        lot, so a Redis that refuses a write (full, read-only) refuses the whole batch and
        nothing of it is written. ``(record id, created)`` each."""
        calls = []
        for req in requests:
            script_keys, args, _ = self.create_args(req, now, outbox)
            calls.append((script_keys, args))
        replies = self.durable.scripts(self._create, calls, atomic=True)
        return [(str(found), bool(int(created))) for created, found in replies]

    def create_replies(self, calls: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[Any]:
        """``create``'s round trip for many prepared calls (``create_args``) at once, each
        reply ``(created, record id)`` or that command's own RedisError."""
        return self.durable.scripts(self._create, calls, raise_on_error=False)

    def find(self, record_id: str, *, with_history: bool = False) -> Record | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.record_key(record_id))
        if with_history:
            pipe.lrange(keys.history(self.prefix, record_id), 0, -1)
        data, *history = pipe.execute()
        return Record.from_hash(data, history[0] if history else ()) if data else None

    def find_request(self, req: CancelRequest, *, with_history: bool = False) -> Record | None:
        """The record of the request ``req`` names (its dedupe identity), or None."""
        record_id = self.client.get(self.dedupe_key(req))
        if not record_id:
            return None
        return self.find(str(record_id), with_history=with_history)

    def get(self, record_id: str, *, with_history: bool = False) -> Record:
        record = self.find(record_id, with_history=with_history)
        if record is None:
            raise RecordNotFound(record_id)
        return record

    def get_many(self, record_ids: Sequence[str]) -> list[Record]:
        """Records for ``record_ids`` in one round trip, skipping any that are gone."""
        pipe = self.client.pipeline(transaction=False)
        for record_id in record_ids:
            pipe.hgetall(self.record_key(record_id))
        return [Record.from_hash(h) for h in cast(list[dict[str, str]], pipe.execute()) if h]

    def ids_by_score(
        self,
        status: Status,
        *,
        low_ms: float | str = "-inf",
        high_ms: float | str = "+inf",
        offset: int = 0,
        limit: int = 1000,
        newest_first: bool = False,
    ) -> list[str]:
        """Ids in one status index with scores in [low, high] (see the module docstring)."""
        key = self.index_key(status)
        if newest_first:
            ids = self.client.zrevrangebyscore(key, high_ms, low_ms, offset, limit)
        else:
            ids = self.client.zrangebyscore(key, low_ms, high_ms, offset, limit)
        return cast(list[str], ids)

    def latest(self, status: Status | None = None, *, limit: int = 50) -> list[Record]:
        """The newest records first, of one status or of all."""
        statuses = [status] if status else list(Status)
        pipe = self.client.pipeline(transaction=False)
        for s in statuses:
            pipe.zrevrange(self.index_key(s), 0, limit - 1)
        ids = [i for group in cast(list[list[str]], pipe.execute()) for i in group]
        records = self.get_many(ids)
        records.sort(key=lambda r: r.updated_at, reverse=True)
        return records[:limit]

    def counts(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for s in Status:
            pipe.zcard(self.index_key(s))
        return dict(zip([s.value for s in Status], cast(list[int], pipe.execute()), strict=True))

    def deadline_due(self, now: datetime, *, limit: int = 1000) -> list[str]:
        """Live records whose 24 h window has closed."""
        key = keys.deadline(self.prefix)
        return cast(list[str], self.client.zrangebyscore(key, "-inf", to_ms(now), 0, limit))

    def touch(self, status: Status, record_ids: Sequence[str], score_ms: int) -> None:
        """Re-score index entries that still exist (so a repair is not repeated at once)."""
        if record_ids:
            self.client.zadd(self.index_key(status), dict.fromkeys(record_ids, score_ms), xx=True)

    # --- the attempt cycle ------------------------------------------------------------------
    def claim(self, record_id: str, *, now: datetime, lease_s: float) -> Claim:
        """Take the record for one attempt under a lease; a duplicate delivery gets refused."""
        token = secrets.token_hex(8)
        lease_until = to_ms(now + timedelta(seconds=lease_s))
        reply = cast(
            list[Any],
            self._claim(
                keys=[self.record_key(record_id), keys.ready(self.prefix)],
                args=[
                    keys.index_prefix(self.prefix),
                    to_ms(now),
                    lease_until,
                    token,
                    iso(now),
                    EARLY_RETRY_TOLERANCE_MS,
                ],
            ),
        )
        kind = cast(ClaimKind, str(reply[0]))
        if kind != "claimed":
            return Claim(kind, status=str(reply[1]) if len(reply) > 1 else "")
        return Claim(kind, Record.from_hash(_hash(reply[1:])), token)

    def claim_next(
        self, *, now: datetime, lease_s: float, hint: str = "", platform: str = ""
    ) -> Claim:
        """Take ``platform``'s next ready record (deadline first, or oldest first with
        order=fifo) for one attempt under a lease, making due retries ready first; ``hint``
        (the message's
        own record) when it is ready and its deadline within HINT_TOLERANCE_MS of the first.
        ``Claim("empty")`` when none is ready; ``Claim("window_closed", record_id=...)`` for
        a record whose window closed while it waited (the caller expires it, asks again)."""
        token = secrets.token_hex(8)
        lease_until = to_ms(now + timedelta(seconds=lease_s))
        reply = self.durable.claim(
            self._claim_next,
            keys=[
                keys.ready(self.prefix, platform),
                self.index_key(Status.QUEUED),
                self.index_key(Status.RETRYING),
                self.index_key(Status.PROCESSING),
                keys.claim(self.prefix, token),
            ],
            args=[
                keys.record(self.prefix, ""),
                to_ms(now),
                lease_until,
                token,
                iso(now),
                0,  # a retry is taken when it is due, not before (see ReadySets.due_in)
                self.order,
                hint,
                HINT_TOLERANCE_MS,
                keys.ready(self.prefix),
            ],
        )
        kind = cast(ClaimKind, str(reply[0]))
        if kind == "window_closed":
            return Claim(kind, record_id=str(reply[1]))
        if kind != "claimed":
            return Claim(kind)
        return Claim(kind, Record.from_hash(_hash(reply[1:])), token)

    def make_ready(self, record_ids: Sequence[str], now: datetime) -> None:
        """Put live records back among the ready (reconciliation, after a worker died), each
        in its deadline's place (with order=fifo: now)."""
        records = self.get_many(record_ids) if record_ids else []
        by_platform: dict[str, dict[str, int]] = {}
        for r in records:
            by_platform.setdefault(r.platform or "", {})[r.id] = self.ready.score(r, now)
        for platform, scores in by_platform.items():
            self.client.zadd(keys.ready(self.prefix, platform), scores)

    def transition(
        self,
        record: Record,
        to: Status,
        *,
        now: datetime,
        allowed_from: frozenset[Status] | set[Status],
        fields: Mapping[str, str | int] | None = None,
        token: str = "",
        score_ms: int | None = None,
        history: Mapping[str, Any] | None = None,
        unless_leased: bool = False,
        ready_score: int | None = None,
        unless_field: str = "",
    ) -> Moved:
        """Move ``record`` to ``to`` if it is in ``allowed_from`` (and the lease is ours).

        ``unless_leased`` refuses a ``processing`` record whose lease still runs;
        ``unless_field`` refuses a record that has that field set (a one-way switch);
        ``ready_score``: the record's place among the ready (a record moving to ``queued``),
        None to take it out of them. The answer says why when nothing moved.
        """
        now_ms = to_ms(now)
        entry = json.dumps({"at": iso(now), **history}, separators=(",", ":")) if history else ""
        reply = cast(
            list[Any],
            self._transition(
                keys=[
                    self.record_key(record.id),
                    self.dedupe_key(record),
                    keys.history(self.prefix, record.id),
                    keys.deadline(self.prefix),
                    keys.ready(self.prefix, record.platform or ""),
                ],
                args=[
                    keys.index_prefix(self.prefix),
                    ",".join(s.value for s in allowed_from),
                    to.value,
                    now_ms if score_ms is None else score_ms,
                    token,
                    self.retention_s if to in TERMINAL else 0,
                    now_ms - self.retention_s * 1000,
                    now_ms if unless_leased else "",
                    entry,
                    HISTORY_CAP,
                    "" if ready_score is None else ready_score,
                    unless_field,
                    *_pairs({"updated_at": iso(now), **(fields or {})}),
                ],
            ),
        )
        return Moved(str(reply[0]), str(reply[1]) if len(reply) > 1 else "")

    def key_for(self, record: Record, generation: int) -> str:
        """The idempotency key of ``record``'s request at ``generation`` (of its
        compensation, in that phase)."""
        if record.phase == "compensate":
            return f"adjustments-cmp-{record.id}-g{generation}"
        return keys.idempotency_key(record.request.digest, generation)

    # --- locks ------------------------------------------------------------------------------
    def try_lock(self, name: str, *, ttl_s: float) -> Lock | None:
        """redis-py's lock on ``name`` for ``ttl_s`` (SET NX PX with a token), or None if
        another holder has it. Release it with ``unlock``."""
        lock = self.client.lock(keys.lock(self.prefix, name), timeout=ttl_s, blocking=False)
        return lock if lock.acquire() else None

    def unlock(self, lock: Lock) -> None:
        """Release ``lock`` if it is still ours (one that expired meanwhile is not)."""
        with suppress(redis.exceptions.LockError):
            lock.release()
