"""The scheduled repair job: re-drive stuck records from their state, never from the broker.

A task message is a permit for one attempt: the attempt sends whichever ready record's window
closes first (see ``attempt``), so what must hold is a count, not a pairing: every live record
needs a message on its way. Each run checks it and repairs what is off:

- fewer messages than ``queued`` and ``processing`` records (messages waiting in the queue,
  plus those held by live workers' threads): messages were lost (a broker that lost writes, a
  BRPOP whose reply never arrived, a worker killed while it held them) → publish the
  difference. A surplus is harmless: a message that finds nothing ready ends at once;
- ``processing`` with a lapsed lease: the worker died mid-call → ready again, and published;
- ``retrying`` past ``next_attempt_at`` by more than the grace period → publish again;
- any live record whose 24 h window has closed → ``expired``.

Publishing again is safe: a claim takes only a ready record (never a leased, finished or not
yet due one), and the idempotency key makes a repeated Stripe call replay the first answer.
Only one run at a time, across every process and host: a Redis lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from . import compensation, keys, lifecycle
from .config import CANCEL_WINDOW_S
from .logging import get_logger
from .models import Status, to_ms
from .store import RecordStore

log = get_logger("adjustments.reconcile")
LOCK_NAME = "reconcile"
BATCH = 1000

Publish = Callable[[str], bool]
# How many task messages are on their way to an attempt: waiting in the queue, or held by the
# threads of live workers (see ``publishing.outstanding``).
Tickets = Callable[[], int]
# Expired records looked at for a compensation that never began. Bounded, so that switching
# compensation on does not reach back over old records (`adjustments compensate` does that).
COMPENSATION_LOOKBACK_S = 3600
SETTLE_S = 0.3  # between the two looks at the count (the workers' heartbeat: see below)
# How long the run lock outlives a run's settle pause. The lock only keeps runs from doing the
# same work twice (an overlap is harmless: a duplicate message is refused by the claim), so it
# is short: a worker killed or stopped mid-run must not hold back repairs for long.
LOCK_MARGIN_S = 30.0


@dataclass(frozen=True)
class ReconcileReport:
    """What one run repaired (``ran`` False: another run held the lock)."""

    ran: bool
    republished_queued: int = 0
    republished_processing: int = 0
    republished_retrying: int = 0
    expired: int = 0
    compensations_started: int = 0
    publish_failures: int = 0
    duration_ms: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """As JSON-ready values (``--json``, the last-run hash)."""
        return asdict(self)


def reconcile(
    *,
    store: RecordStore,
    publish: Publish,
    now: datetime,
    grace_s: float,
    tickets: Tickets | None = None,
    settle_s: float = SETTLE_S,
    lock_ttl_s: float | None = None,
    batch: int = BATCH,
    compensation_timestamp: str | None = None,
) -> ReconcileReport:
    """One reconciliation run; emits one ``reconcile.run`` line with the counts. ``tickets``:
    how many messages are on their way (without it, lost messages are not looked for);
    ``settle_s``: between the two looks at that count (see ``missing_tickets``);
    ``lock_ttl_s``: how long the run lock lasts if this run dies holding it (default
    ``settle_s + LOCK_MARGIN_S``).
    ``compensation_timestamp`` (compensation on): records that expired in the last
    COMPENSATION_LOOKBACK_S with their original event and no compensation yet (a worker
    died between the two steps) begin it now."""
    started = time.perf_counter()
    ttl_s = settle_s + LOCK_MARGIN_S if lock_ttl_s is None else lock_ttl_s
    lock = store.try_lock(LOCK_NAME, ttl_s=ttl_s)
    if lock is None:
        log.info("reconcile.run", ran=False, reason="another run holds the lock")
        return ReconcileReport(ran=False)
    try:
        expired = _expire_closed_windows(store, now, batch)
        started_cmp = 0
        if compensation_timestamp is not None:
            started_cmp = compensation.start_due(
                store, publish, now=now, timestamp_mode=compensation_timestamp, limit=batch,
                since=now - timedelta(seconds=COMPENSATION_LOOKBACK_S),
            )  # fmt: skip
        grace_ms = int(grace_s * 1000)
        now_ms = to_ms(now)
        failures = 0
        lapsed = store.ids_by_score(Status.PROCESSING, high_ms=now_ms, limit=batch)
        store.make_ready(lapsed, now)  # the next claim takes them over
        overdue = store.ids_by_score(Status.RETRYING, high_ms=now_ms - grace_ms, limit=batch)
        counts: dict[Status, int] = {}
        for status, ids in ((Status.PROCESSING, lapsed), (Status.RETRYING, overdue)):
            sent = [record_id for record_id in ids if publish(record_id)]
            failures += len(ids) - len(sent)
            # Look again only after another grace period, not on the very next run.
            store.touch(status, sent, now_ms + grace_ms if status is Status.PROCESSING else now_ms)
            counts[status] = len(sent)
        missing = missing_tickets(store, tickets, settle_s) if tickets is not None else 0
        sent_missing = _publish_permits(store, publish, min(missing, batch))
        failures += min(missing, batch) - sent_missing
    finally:
        store.unlock(lock)
    report = ReconcileReport(
        ran=True,
        republished_queued=sent_missing,
        republished_processing=counts[Status.PROCESSING],
        republished_retrying=counts[Status.RETRYING],
        expired=expired,
        compensations_started=started_cmp,
        publish_failures=failures,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    log.info("reconcile.run", **report.to_dict())
    _remember(store, report)
    return report


def missing_tickets(store: RecordStore, tickets: Tickets, settle_s: float = SETTLE_S) -> int:
    """How many more messages the ``queued`` and ``processing`` records need than are on their
    way: the smaller of two looks ``settle_s`` apart. A worker counts the messages its threads
    hold in its heartbeat, so ``settle_s`` should span one heartbeat: a message taken since the
    last beat is not a lost one."""

    def short() -> int:
        counts = store.counts()
        return counts[Status.QUEUED.value] + counts[Status.PROCESSING.value] - tickets()

    first = short()
    if first <= 0:
        return 0
    time.sleep(settle_s)
    return max(0, min(first, short()))


def _publish_permits(store: RecordStore, publish: Publish, count: int) -> int:
    """Publish ``count`` messages, named for the most urgent ready records (a message sends
    whichever is most urgent when its turn comes; the name is for the logs)."""
    if count <= 0:
        return 0
    names = store.ready.ids(count) or store.ids_by_score(Status.QUEUED, limit=count)
    if not names:
        return 0
    return sum(bool(publish(names[i % len(names)])) for i in range(count))


def _remember(store: RecordStore, report: ReconcileReport) -> None:
    """Keep the last run's time and counts for the metrics (an alert if runs stop)."""
    fields: dict[str | bytes, str | float] = {"finished_at": time.time()}
    fields.update({k: float(v) for k, v in report.to_dict().items() if isinstance(v, int | float)})
    store.client.hset(keys.last_reconcile(store.prefix), mapping=fields)  # type: ignore[arg-type]


def _expire_closed_windows(store: RecordStore, now: datetime, batch: int) -> int:
    """Expire live records past their window; one a worker holds a live lease on is left to it.
    Besides those with a known window, a record queued for more than 24 h is past its
    window whatever its receipt time was."""
    day_ago = to_ms(now) - CANCEL_WINDOW_S * 1000
    ids = store.deadline_due(now, limit=batch)
    ids += store.ids_by_score(Status.QUEUED, high_ms=day_ago, limit=batch)
    records = store.get_many(list(dict.fromkeys(ids)))
    # A compensation (a 35-day window of its own) may wait longer than a day.
    closed = [r for r in records if r.deadline <= now]
    return sum(bool(lifecycle.expire_window(store, record, now=now)) for record in closed)


ORPHANS_LOCK = "orphans"
ORPHAN_ROUNDS = 12  # about a minute of looks at the default heartbeat: reconciliation's grace


def republish_orphans(
    *,
    store: RecordStore,
    publish: Publish,
    tickets: Tickets,
    settle_s: float = SETTLE_S,
    limit: int = BATCH,
) -> int:
    """After a lost connection to Redis: publish the messages that vanished with it (Redis
    executed a worker's BRPOP, then died before the reply arrived), found by count as in
    ``reconcile``; one worker does it per outage (a short lock). Runs when a worker
    (re)connects."""
    lock = store.try_lock(ORPHANS_LOCK, ttl_s=10)
    if lock is None:
        return 0
    try:
        missing = min(missing_tickets(store, tickets, settle_s), limit)
        sent = _publish_permits(store, publish, missing)
    finally:
        store.unlock(lock)
    if missing:
        log.warning("queue.orphans_republished", count=sent, failures=missing - sent)
    return sent


def watch_for_orphans(
    *,
    store: RecordStore,
    publish: Publish,
    tickets: Tickets,
    settle_s: float = SETTLE_S,
    rounds: int = ORPHAN_ROUNDS,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """``republish_orphans`` again, ``settle_s`` apart, while the workers are busy: a busy
    worker's count of the messages it holds runs ahead of its records (a task that finished
    since its last heartbeat is still counted), which can hide a lost message. Stops at the
    first publish, or after a look taken while nothing was on its way (the count is exact
    then); after ``rounds`` looks, reconciliation's grace period covers the rest."""
    for _ in range(rounds):
        quiet = tickets() == 0
        sent = republish_orphans(store=store, publish=publish, tickets=tickets, settle_s=settle_s)
        if sent or quiet:
            return sent
        sleep(settle_s)
    return 0
