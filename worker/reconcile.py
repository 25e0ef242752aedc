"""The scheduled repair job: re-drive stuck records from their state, never from the broker.

- ``queued`` for longer than the grace period, and (given the queue) older than the oldest
  message still waiting in it: the message is lost → publish again. The queue is FIFO, so a
  record of a deep backlog, whose message is simply waiting its turn, is left alone;
- ``processing`` with a lapsed lease: the worker died mid-call → publish again;
- ``retrying`` past ``next_attempt_at`` by more than the grace period → publish again;
- any live record whose 24 h window has closed → ``expired``.

Publishing again is safe: a claim refuses a record that is leased, done or not yet due, and
the idempotency key makes a repeated Stripe call replay the first answer.
Only one run at a time, across every process and host: a Redis lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from . import keys, lifecycle
from .logging import get_logger
from .models import Status, to_ms
from .store import RecordStore

log = get_logger("adjustments.reconcile")
LOCK_NAME = "reconcile"
BATCH = 1000

Publish = Callable[[str], bool]


@dataclass(frozen=True)
class ReconcileReport:
    """What one run repaired (``ran`` False: another run held the lock)."""

    ran: bool
    republished_queued: int = 0
    republished_processing: int = 0
    republished_retrying: int = 0
    expired: int = 0
    publish_failures: int = 0
    duration_ms: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def reconcile(
    *,
    store: RecordStore,
    publish: Publish,
    now: datetime,
    grace_s: float,
    queue: str | None = None,
    lock_ttl_s: float = 300.0,
    batch: int = BATCH,
) -> ReconcileReport:
    """One reconciliation run; emits one ``reconcile.run`` line with the counts. ``queue``:
    the main queue's name, to tell a lost message from one still waiting its turn."""
    started = time.perf_counter()
    lock = store.try_lock(LOCK_NAME, ttl_s=lock_ttl_s)
    if lock is None:
        log.info("reconcile.run", ran=False, reason="another run holds the lock")
        return ReconcileReport(ran=False)
    try:
        expired = _expire_closed_windows(store, now, batch)
        grace_ms = int(grace_s * 1000)
        now_ms = to_ms(now)
        counts: dict[Status, int] = {}
        failures = 0
        queued_before = now_ms - grace_ms  # score: created, last republished, or held until
        lost_before = queued_before if queue is None else _lost_before(store, queue, queued_before)
        for status, stuck_before in (
            (Status.QUEUED, lost_before),
            (Status.PROCESSING, now_ms),  # score: lease end
            (Status.RETRYING, now_ms - grace_ms),  # score: next_attempt_at
        ):
            if stuck_before is None:
                counts[status] = 0
                continue
            ids = store.ids_by_score(status, high_ms=stuck_before, limit=batch)
            sent = [record_id for record_id in ids if publish(record_id)]
            failures += len(ids) - len(sent)
            # Look again only after another grace period, not on the very next run.
            store.touch(status, sent, now_ms + grace_ms if status is Status.PROCESSING else now_ms)
            counts[status] = len(sent)
    finally:
        store.unlock(lock)
    report = ReconcileReport(
        ran=True,
        republished_queued=counts[Status.QUEUED],
        republished_processing=counts[Status.PROCESSING],
        republished_retrying=counts[Status.RETRYING],
        expired=expired,
        publish_failures=failures,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    log.info("reconcile.run", **report.to_dict())
    _remember(store, report)
    return report


def _remember(store: RecordStore, report: ReconcileReport) -> None:
    """Keep the last run's time and counts for the metrics (an alert if runs stop)."""
    fields: dict[str | bytes, str | float] = {"finished_at": time.time()}
    fields.update({k: float(v) for k, v in report.to_dict().items() if isinstance(v, int | float)})
    store.client.hset(keys.last_reconcile(store.prefix), mapping=fields)  # type: ignore[arg-type]


def _lost_before(store: RecordStore, queue: str, before_ms: int) -> int | str | None:
    """The queued-index score below which a record has no message waiting in ``queue``: the
    oldest waiting message's (exclusive), at most ``before_ms``. None when the queue's oldest
    messages are not ours to read, so nothing can be told lost."""
    waiting = store.oldest_waiting(queue, PEEK)
    if waiting is not None:
        return f"({min(before_ms, waiting)}"
    if store.queue_length(queue):
        return None
    return before_ms


def _expire_closed_windows(store: RecordStore, now: datetime, batch: int) -> int:
    """Expire live records past their window; one a worker holds a live lease on is left to it."""
    records = store.get_many(store.deadline_due(now, limit=batch))
    return sum(bool(lifecycle.expire_window(store, record, now=now)) for record in records)


ORPHANS_LOCK = "orphans"
ORPHAN_MIN_AGE_S = 2.0  # a younger record's message may be on its way to a worker right now
PEEK = 16  # messages looked at from the old end of the queue


def republish_orphans(
    *, store: RecordStore, publish: Publish, queue: str, now: datetime, limit: int = BATCH
) -> int:
    """After a lost connection to Redis: publish again the ``queued`` records whose message
    vanished with it (Redis executed a worker's BRPOP, then died before the reply arrived).

    The queue is FIFO, so a queued record older than the oldest message still waiting has no
    message waiting. Only those are published again (a duplicate is refused by the claim), and
    one worker does it per outage (a short lock). Runs when a worker (re)connects."""
    lock = store.try_lock(ORPHANS_LOCK, ttl_s=10)
    if lock is None:
        return 0
    try:
        before = _lost_before(store, queue, to_ms(now) - int(ORPHAN_MIN_AGE_S * 1000))
        if before is None:
            return 0  # the oldest messages are not ours to read: leave it to reconciliation
        ids = store.ids_by_score(Status.QUEUED, high_ms=before, limit=limit)
        sent = [record_id for record_id in ids if publish(record_id)]
    finally:
        store.unlock(lock)
    if ids:
        log.warning("queue.orphans_republished", count=len(sent), failures=len(ids) - len(sent))
    return len(sent)
