"""The Redis record store: create with dedupe, leased claims, atomic transitions, indexes.

Every write is one Lua script, so a record and its status indexes never disagree and an
illegal move (a late duplicate overwriting ``complete``) is refused inside Redis.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Literal, cast

import redis

from worker import keys
from worker.errors import RecordNotFound
from worker.models import TERMINAL, CancelRequest, ErrorInfo, Record, Status, iso, to_ms
from worker.outcomes import Accepted

ClaimKind = Literal["claimed", "missing", "leased", "not_due", "terminal", "window_closed"]
EARLY_RETRY_TOLERANCE_MS = 1000


def _load(name: str) -> str:
    return resources.files("worker").joinpath("lua", name).read_text()


def _pairs(fields: Mapping[str, str | int]) -> list[str]:
    out: list[str] = []
    for name, value in fields.items():
        out.extend((name, str(value)))
    return out


def _hash(flat: Sequence[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: the record and the lease token when ``kind == 'claimed'``."""

    kind: ClaimKind
    record: Record | None = None
    token: str = ""
    status: str = ""


class RecordStore:
    """Records in Redis. Pass a client made with ``decode_responses=True``."""

    def __init__(self, client: redis.Redis, *, prefix: str = "adj", retention_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.retention_s = retention_s
        self._create = client.register_script(_load("create.lua"))
        self._claim = client.register_script(_load("claim.lua"))
        self._transition = client.register_script(_load("transition.lua"))

    # --- keys -----------------------------------------------------------------------------
    def record_key(self, record_id: str) -> str:
        return keys.record(self.prefix, record_id)

    def dedupe_key(self, record: Record | CancelRequest) -> str:
        req = record if isinstance(record, CancelRequest) else _request_of(record)
        return keys.dedupe(self.prefix, keys.request_digest(req))

    # --- create and read -------------------------------------------------------------------
    def new_fields(self, req: CancelRequest, record_id: str, now: datetime) -> dict[str, str | int]:
        """The hash of a fresh ``queued`` record."""
        digest = keys.request_digest(req)
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
            "created_at": iso(now),
            "updated_at": iso(now),
            "event_received_at": iso(req.event_received_at),
            "expires_at_ms": to_ms(expires) if expires else "",
            "next_attempt_at": "",
            "idempotency_key": keys.idempotency_key(digest, 0),
            "digest": digest,
        }

    def create(self, req: CancelRequest, *, now: datetime) -> tuple[Record, bool]:
        """Write a queued record, or find the existing one for the same request.

        Returns ``(record, created)``; ``created`` is False for a duplicate.
        """
        for _ in range(2):
            record_id = "adj_" + uuid.uuid4().hex
            fields = self.new_fields(req, record_id, now)
            created, found_id = cast(
                list[Any],
                self._create(
                    keys=[
                        self.record_key(record_id),
                        self.dedupe_key(req),
                        keys.index(self.prefix, Status.QUEUED),
                    ],
                    args=[record_id, to_ms(now), *_pairs(fields)],
                ),
            )
            if int(created):
                return Record.from_hash({k: str(v) for k, v in fields.items()}), True
            existing = self.find(str(found_id))
            if existing is not None:
                return existing, False
            # The dedupe key outlived its record by a moment (both expire at retention): retry.
            self.client.delete(self.dedupe_key(req))
        raise RuntimeError("could not create or find the record")  # pragma: no cover

    def find(self, record_id: str) -> Record | None:
        data = cast(dict[str, str], self.client.hgetall(self.record_key(record_id)))
        return Record.from_hash(data) if data else None

    def get(self, record_id: str) -> Record:
        record = self.find(record_id)
        if record is None:
            raise RecordNotFound(record_id)
        return record

    def list(self, status: Status | None = None, *, limit: int = 50) -> list[Record]:
        """The newest records first, of one status or of all."""
        statuses = [status] if status else list(Status)
        pipe = self.client.pipeline(transaction=False)
        for s in statuses:
            pipe.zrevrange(keys.index(self.prefix, s), 0, limit - 1)
        ids = [i for group in cast(list[list[str]], pipe.execute()) for i in group]
        pipe = self.client.pipeline(transaction=False)
        for record_id in ids:
            pipe.hgetall(self.record_key(record_id))
        records = [Record.from_hash(h) for h in cast(list[dict[str, str]], pipe.execute()) if h]
        records.sort(key=lambda r: r.updated_at, reverse=True)
        return records[:limit]

    def counts(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for s in Status:
            pipe.zcard(keys.index(self.prefix, s))
        return dict(zip([s.value for s in Status], cast(list[int], pipe.execute()), strict=True))

    # --- the attempt cycle ------------------------------------------------------------------
    def claim(self, record_id: str, *, now: datetime, lease_s: float) -> Claim:
        """Take the record for one attempt under a lease; a duplicate delivery gets refused."""
        token = secrets.token_hex(8)
        lease_until = to_ms(now + timedelta(seconds=lease_s))
        reply = cast(
            list[Any],
            self._claim(
                keys=[self.record_key(record_id)],
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
    ) -> bool:
        """Move ``record`` to ``to`` if it is in ``allowed_from`` (and the lease is ours)."""
        terminal = to in TERMINAL
        now_ms = to_ms(now)
        reply = cast(
            list[Any],
            self._transition(
                keys=[self.record_key(record.id), self.dedupe_key(record)],
                args=[
                    keys.index_prefix(self.prefix),
                    ",".join(s.value for s in allowed_from),
                    to.value,
                    now_ms if score_ms is None else score_ms,
                    token,
                    self.retention_s if terminal else 0,
                    now_ms - self.retention_s * 1000,
                    *_pairs({"updated_at": iso(now), **(fields or {})}),
                ],
            ),
        )
        return str(reply[0]) == "ok"

    def finish(
        self,
        record: Record,
        to: Status,
        *,
        token: str,
        now: datetime,
        accepted: Accepted | None = None,
        error: ErrorInfo | None = None,
        retry_at: datetime | None = None,
        generation: int | None = None,
        request_id: str | None = None,
    ) -> bool:
        """End the attempt that holds ``token``: record Stripe's answer and the new status."""
        fields: dict[str, str | int] = {
            "next_attempt_at": iso(retry_at),
            "next_attempt_ms": to_ms(retry_at) if retry_at else "",
        }
        if accepted is not None:
            fields.update(
                stripe_status=accepted.stripe_status,
                adjustment_id=accepted.adjustment_id or "",
                adjustment_created=accepted.created or "",
                livemode="" if accepted.livemode is None else int(accepted.livemode),
            )
        if error is not None:
            fields["last_error"] = error.to_json()
        if request_id:
            fields["stripe_request_id"] = request_id
        if generation is not None and generation != record.generation:
            digest = keys.request_digest(_request_of(record))
            fields.update(
                generation=generation, idempotency_key=keys.idempotency_key(digest, generation)
            )
        return self.transition(
            record,
            to,
            now=now,
            allowed_from={Status.PROCESSING},
            fields=fields,
            token=token,
            score_ms=to_ms(retry_at) if retry_at else None,
        )

    def expire_window(self, record: Record, *, now: datetime) -> bool:
        """Mark a record whose 24 h window closed before Stripe accepted it."""
        return self.transition(
            record,
            Status.EXPIRED,
            now=now,
            allowed_from={Status.QUEUED, Status.RETRYING, Status.PROCESSING},
            fields={"next_attempt_at": "", "next_attempt_ms": ""},
        )


def _request_of(record: Record) -> CancelRequest:
    return CancelRequest(
        record.api,
        record.event_name,
        record.identifier,
        record.stripe_account,
        record.event_received_at,
    )
