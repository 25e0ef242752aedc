"""Compensation: when a cancellation misses Stripe's 24 h window, undo the usage with a
negative meter event, Stripe's documented remedy, where it is sound (issue 20).

The compensation is a second phase of the same record, so it inherits everything a
cancellation has: a claim with a lease, the shared rate limit, retries with backoff, the
ready set's order, reconciliation. ``begin`` moves an ``expired`` record back to ``queued``
with ``phase=compensate``, a deterministic meter-event identifier and idempotency keys of its
own; the attempt then sends the meter event instead of the adjustment, and the record ends
``compensated``, or ``expired`` again with a ``compensation_error`` saying why not.

Only a raw ``sum`` meter is sound: a ``count`` meter would count the negative event as one
more, a ``last`` or pre-aggregated (``event_time_window``) meter would replace a value. The
meter is looked up by event name (``GET /v1/billing/meters``, cached for a while).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from .errors import InvalidInput
from .logging import get_logger
from .models import METER_EVENT_MAX_AGE, Record, Status, iso, to_ms
from .replay import ReplayFilter, select
from .retry import KEY_UNKNOWN
from .store import Moved, RecordStore

log = get_logger("adjustments.compensation")
PHASE = "compensate"
# Stripe takes a meter event up to 35 days after its timestamp; stop an hour short of that.
MARGIN = timedelta(hours=1)
# With compensation_timestamp=now the event is stamped when it is sent: no Stripe deadline,
# but a correction should not trail the invoice by more than this.
NOW_MODE_WINDOW = timedelta(days=7)
METER_CACHE_S = 300.0
MISS_REFRESH_S = 1.0  # an unknown event name looks the meters up again after this


def identifier_for(record_id: str) -> str:
    """The compensation's meter-event identifier: derived from the record, so a second send
    (a retry, a replay, a second worker) is refused by Stripe as a duplicate (≤ 100 chars)."""
    return "adjcmp_" + hashlib.sha256(record_id.encode()).hexdigest()[:40]


def idempotency_key(record_id: str, generation: int) -> str:
    """The compensation's Idempotency-Key at ``generation`` (as ``RecordStore.key_for``)."""
    return f"adjustments-cmp-{record_id}-g{generation}"


# Why a record whose cancellation may have been executed is not compensated.
IN_DOUBT = (
    "an attempt may have cancelled the event (its outcome is unknown: no answer from Stripe, or "
    "a worker stopped mid-call), and a negative event would then correct the usage twice; "
    "replay the record to ask Stripe (it reuses the idempotency key, so Stripe answers with "
    "what happened), or check the event in the Dashboard"
)


def due(record: Record) -> bool:
    """Whether ``record`` should now be compensated: expired, with its original event, never
    compensated nor refused compensation before, and its cancellation surely not executed."""
    return eligible(record) and not in_doubt(record)


def eligible(record: Record) -> bool:
    """Expired with its original event, and neither compensated nor refused before."""
    return (
        record.status is Status.EXPIRED
        and record.original_event is not None
        and record.phase == ""
        and record.compensation_error is None
    )


def in_doubt(record: Record) -> bool:
    """Whether an attempt may have executed ``record``'s cancellation (found in a chaos soak:
    a worker's outcome lost in a failover, then the window closed, then a compensation)."""
    return record.key_outcome == KEY_UNKNOWN


def deadline(record: Record, *, now: datetime, timestamp_mode: str) -> datetime:
    """The latest time the compensation can still be sent."""
    assert record.original_event is not None
    if timestamp_mode == "now":
        return now + NOW_MODE_WINDOW
    return record.original_event.timestamp + METER_EVENT_MAX_AGE - MARGIN


def begin(store: RecordStore, record: Record, *, now: datetime, timestamp_mode: str) -> Moved:
    """``expired`` → ``queued`` in the compensation phase (refused unless it is ``due``: a
    second call is a no-op). The caller publishes a message for it."""
    by = deadline(record, now=now, timestamp_mode=timestamp_mode)
    fields: dict[str, str | int] = {
        "phase": PHASE,
        "compensation_identifier": identifier_for(record.id),
        "compensate_by": iso(by),
        "expires_at_ms": to_ms(by),
        "deadline_ms": to_ms(by),
        "generation": 0,
        "idempotency_key": idempotency_key(record.id, 0),
        "key_outcome": "",
        "attempts": 0,
        "next_attempt_at": "",
        "next_attempt_ms": "",
    }
    if by <= now:
        return Moved("refused", record.status.value)
    return store.transition(
        record,
        Status.QUEUED,
        now=now,
        allowed_from={Status.EXPIRED},
        fields=fields,
        history={"outcome": "compensating", "status": "queued", "generation": 0},
        ready_score=to_ms(by) if store.order == "deadline" else to_ms(now),
        unless_field="phase",  # once compensating, never again
    )


def start(
    store: RecordStore,
    record_id: str,
    publish: Callable[[str], bool],
    *,
    now: datetime,
    timestamp_mode: str,
) -> bool:
    """Begin the compensation of ``record_id`` if it is due, and publish its message (a
    failed publish leaves it queued: reconciliation publishes it). True if it began."""
    record = store.find(record_id)
    if record is not None and eligible(record) and in_doubt(record):
        refuse(store, record, IN_DOUBT, now=now)
        log.warning("compensation.in_doubt", request_id=record_id, event_name=record.event_name)
        return False
    if record is None or not due(record):
        return False
    if not begin(store, record, now=now, timestamp_mode=timestamp_mode):
        return False
    publish(record_id)
    log.info("compensation.begun", request_id=record_id, event_name=record.event_name)
    return True


def start_due(
    store: RecordStore,
    publish: Callable[[str], bool],
    *,
    now: datetime,
    since: datetime,
    timestamp_mode: str,
    limit: int,
) -> int:
    """Begin every due compensation among the records that expired since ``since``."""
    ids = store.ids_by_score(Status.EXPIRED, low_ms=to_ms(since), high_ms=to_ms(now), limit=limit)
    records = [r for r in store.get_many(ids) if eligible(r)]
    return sum(start(store, r.id, publish, now=now, timestamp_mode=timestamp_mode) for r in records)


def refuse(store: RecordStore, record: Record, reason: str, *, now: datetime) -> Moved:
    """Mark an expired record as not compensable (it stays ``expired``), with the reason."""
    return store.transition(
        record,
        Status.EXPIRED,
        now=now,
        allowed_from={Status.EXPIRED},
        fields={"compensation_error": reason},
        history={"outcome": "not_compensated", "status": "expired", "reason": reason},
    )


# --- the meter: is a negative event sound? --------------------------------------------------
@dataclass(frozen=True)
class MeterInfo:
    """What decides whether a negative event is sound on a meter."""

    id: str
    event_name: str
    formula: str
    event_time_window: str | None
    customer_key: str
    value_key: str

    @classmethod
    def from_stripe(cls, data: dict[str, Any]) -> MeterInfo:
        return cls(
            id=str(data.get("id")),
            event_name=str(data.get("event_name")),
            formula=str((data.get("default_aggregation") or {}).get("formula") or ""),
            event_time_window=data.get("event_time_window"),
            customer_key=str(
                (data.get("customer_mapping") or {}).get("event_payload_key")
                or "stripe_customer_id"
            ),
            value_key=str((data.get("value_settings") or {}).get("event_payload_key") or "value"),
        )


def unsound(meter: MeterInfo | None, record: Record) -> str | None:
    """Why a negative event would be wrong for ``record`` on ``meter`` (None: it is sound)."""
    name = record.event_name
    if meter is None:
        return f"no active meter for event_name {name}"
    if meter.formula != "sum":
        return f"meter {name} aggregates by {meter.formula}: a negative event would not undo it"
    if meter.event_time_window:
        return (
            f"meter {name} is pre-aggregated per {meter.event_time_window}: an event there "
            "replaces the window's value"
        )
    payload = record.original_event.payload if record.original_event else {}
    for key in (meter.customer_key, meter.value_key):
        if key not in payload:
            return f"the original event's payload has no {key!r} (meter {name} needs it)"
    if negated(payload[meter.value_key]) is None:
        return f"the original value {payload[meter.value_key]!r} is not a non-zero number"
    return None


def negated(value: str) -> str | None:
    """``value`` negated as Stripe reads it ("5" → "-5", "2.5" → "-2.5"); None unless it is
    a finite non-zero number."""
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    if not number.is_finite() or number == 0:
        return None
    return str(-number)


def _stale(cached: tuple[float, dict[str, MeterInfo]], event_name: str, ttl_s: float) -> bool:
    age = time.monotonic() - cached[0]
    return age > ttl_s or (event_name not in cached[1] and age > MISS_REFRESH_S)


@dataclass
class MeterCache:
    """Meters by (account, event name), fetched with ``fetch(account)`` at most every
    ``ttl_s`` per account (meters are immutable but for their display name)."""

    fetch: Callable[[str | None], Iterable[dict[str, Any]]]
    ttl_s: float = METER_CACHE_S
    _by_account: dict[str, tuple[float, dict[str, MeterInfo]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def find(self, account: str | None, event_name: str) -> MeterInfo | None:
        """The active meter for ``event_name``. A name the cache does not know is looked up
        again (at most once a MISS_REFRESH_S): a meter created after the cache was filled
        must not make a record look uncompensable for the rest of the TTL."""
        slot = account or ""
        with self._lock:
            cached = self._by_account.get(slot)
        if cached is None or _stale(cached, event_name, self.ttl_s):
            meters = {}
            for raw in self.fetch(account):
                if raw.get("status", "active") == "active":
                    info = MeterInfo.from_stripe(raw)
                    meters[info.event_name] = info
            cached = (time.monotonic(), meters)
            with self._lock:
                self._by_account[slot] = cached
        return cached[1].get(event_name)


# --- the plan (a dry run) ------------------------------------------------------------------
@dataclass
class Plan:
    """What a compensation run would send: per (customer, event name), the records and the
    total negative value. Meters are not looked up here (the worker does, before sending)."""

    records: list[str] = field(default_factory=list)
    totals: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, record: Record, customer_key: str, value_key: str) -> None:
        event = record.original_event
        if event is None:
            self.skipped.append((record.id, "no original event"))
            return
        value = negated(event.payload.get(value_key, ""))
        customer = event.payload.get(customer_key)
        if value is None or not customer:
            self.skipped.append((record.id, f"no {customer_key}/{value_key} in the payload"))
            return
        slot = (customer, record.event_name)
        self.records.append(record.id)
        self.totals[slot] = self.totals.get(slot, Decimal(0)) + Decimal(value)
        self.counts[slot] = self.counts.get(slot, 0) + 1

    def to_dict(self) -> dict[str, object]:
        """As JSON-ready values."""
        return {
            "records": len(self.records),
            "ids": list(self.records),
            "by_customer": [
                {
                    "customer": customer,
                    "event_name": name,
                    "records": self.counts[(customer, name)],
                    "total_value": str(total),
                }
                for (customer, name), total in sorted(self.totals.items())
            ],
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped],
        }


# --- after the fact: `adjustments compensate` ----------------------------------------------
@dataclass
class CompensationReport:
    """What a compensation run selected, planned and began."""

    plan: Plan
    begun: list[str] = field(default_factory=list)
    dry_run: bool = True
    meters_checked: bool = False

    def to_dict(self) -> dict[str, object]:
        """As JSON-ready values (``--json``, the HTTP API)."""
        return {
            "dry_run": self.dry_run,
            "meters_checked": self.meters_checked,
            "begun": len(self.begun),
            **self.plan.to_dict(),
        }


def run(
    store: RecordStore,
    publish: Callable[[str], bool],
    flt: ReplayFilter,
    *,
    now: datetime,
    timestamp_mode: str,
    dry_run: bool,
    meters: Callable[[str | None], MeterCache] | None,
) -> CompensationReport:
    """Plan (and unless ``dry_run``, begin) the compensation of the expired records ``flt``
    selects. With ``meters`` (a platform's meters) each record's meter is checked as the
    worker will: an unsound
    one is skipped in the plan and, for real, marked with the reason; without, the plan
    assumes Stripe's default payload keys (``stripe_customer_id``, ``value``)."""
    if flt.status is not Status.EXPIRED:
        raise InvalidInput(f"only expired records are compensated, not {flt.status}")
    records, skipped = select(store, flt, force=True, dry_run=True)
    plan = Plan(skipped=list(skipped))
    report = CompensationReport(plan=plan, dry_run=dry_run, meters_checked=meters is not None)
    refusals: list[tuple[Record, str]] = []
    for record in records:
        if not due(record):
            plan.skipped.append((record.id, _not_due(record)))
            if eligible(record):  # in doubt
                refusals.append((record, IN_DOUBT))
            continue
        if meters is None:
            plan.add(record, "stripe_customer_id", "value")
            continue
        meter = meters(record.platform).find(record.stripe_account, record.event_name)
        why = unsound(meter, record)
        if why is not None or meter is None:
            plan.skipped.append((record.id, why or "no meter"))
            refusals.append((record, why or "no meter"))
            continue
        plan.add(record, meter.customer_key, meter.value_key)
    if dry_run:
        return report
    for record, why in refusals:
        refuse(store, record, why, now=now)
    chosen = {r.id: r for r in records}
    for record_id in plan.records:
        if begin(store, chosen[record_id], now=now, timestamp_mode=timestamp_mode):
            publish(record_id)  # a failed publish leaves it queued: reconciliation sends it
            report.begun.append(record_id)
    log.info("compensation.run", selected=len(records), begun=len(report.begun),
             skipped=len(plan.skipped))  # fmt: skip
    return report


def _not_due(record: Record) -> str:
    if eligible(record) and in_doubt(record):
        return IN_DOUBT
    if record.original_event is None:
        return "no original event (nothing to negate)"
    if record.compensation_error:
        return f"not compensable: {record.compensation_error}"
    return "compensation already begun"
