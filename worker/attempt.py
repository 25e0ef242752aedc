"""One attempt at one record: claim, call Stripe, decide, record, log. No Celery here."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from . import lifecycle, metrics
from .logging import get_logger
from .models import Record, Status
from .outcomes import Accepted, Outcome, Rejected, Sender, Unsound
from .ratelimit import VOID, Budgets, Reservation, SharedRateLimiter
from .retry import Decision, Policy, decide, key_outcome_after
from .store import Claim, RecordStore

log = get_logger("adjustments.attempt")

# Told the id of each record this attempt expired (the compensation hook: see tasks.py).
Expired = Callable[[str], None]
Clock = Callable[[], datetime]
# Sleeps up to the given seconds; False when the worker is shutting down (stop waiting).
Waiter = Callable[[float], bool]


def plain_wait(seconds: float) -> bool:
    time.sleep(seconds)
    return True


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AttemptResult:
    """What the task must do next: nothing, or publish a retry after ``retry_in_s``."""

    reason: str  # the decision's reason (accepted, retry, exhausted, ...), or why nothing was done
    status: Status | None
    retry_in_s: float | None = None
    requeue: bool = False  # the worker is stopping: put the message back, untouched


def run_attempt(
    record_id: str,
    *,
    store: RecordStore,
    send: Sender,
    policy: Policy,
    lease_s: float,
    limiter: Budgets | SharedRateLimiter | None = None,
    clock: Clock = utcnow,
    wait: Waiter = plain_wait,
    rng: random.Random | None = None,
    on_expired: Expired | None = None,
) -> AttemptResult:
    """Carry out one attempt and emit one ``cancellation.attempt`` line.

    A task message is a permit for one attempt, not an order for one record: the attempt
    sends the record that is ready and whose window closes first (``store.claim_next``),
    which is ``record_id`` only when nothing more urgent waits. Every ready record has a
    message of its own, so none waits for ever; a message with nothing left to send (its
    record went with another's message) ends without a slot or a call.

    With a ``limiter`` (each platform's budget), the attempt first chooses the platform whose
    slot comes first among those with a record ready and waits for that slot, holding its one
    message; the record is chosen when the slot comes, so one that became urgent meanwhile
    goes first. ``wait`` returning False (the worker is stopping) ends the wait: the message
    goes back to the queue.
    """
    budgets = Budgets({"": limiter}) if isinstance(limiter, SharedRateLimiter) else limiter
    ready_in = store.ready.due_in(clock())
    if ready_in is None:
        log.info("cancellation.skipped", request_id=record_id, reason="nothing_ready")
        return AttemptResult("nothing_ready", None)
    if ready_in > 0 and not wait(ready_in):  # a retry's message, a moment early
        return AttemptResult("shutting_down", None, requeue=True)
    claim = _slot_and_claim(record_id, store, budgets, lease_s, clock, wait, on_expired)
    if isinstance(claim, _Stopping):
        return AttemptResult("shutting_down", None, requeue=True)
    if claim.kind != "claimed" or claim.record is None:
        log.info("cancellation.skipped", request_id=record_id, reason="nothing_ready")
        return AttemptResult("nothing_ready", None)

    record = claim.record
    _observe_first_call(record, clock())
    started = time.perf_counter()
    answer = send(record)
    duration_ms = (time.perf_counter() - started) * 1000
    if isinstance(answer, Unsound):
        return _not_compensated(store, record, claim.token, answer, clock(), on_expired)
    outcome: Outcome = answer
    _observe(record, outcome, duration_ms, budgets)
    now = clock()
    key_outcome = key_outcome_after(record.key_outcome, outcome)
    decision = decide(
        outcome,
        attempt=record.attempts,
        now=now,
        expires_at=record.deadline,
        policy=policy,
        rng=rng,
        key_outcome=key_outcome,
    )
    extra: dict[str, str | int] = {}
    if record.phase == "compensate":
        decision, extra = _as_compensation(decision, outcome)
    written = lifecycle.finish(
        store,
        record,
        decision,
        outcome,
        token=claim.token,
        now=now,
        key_outcome=key_outcome,
        extra=extra,
    )
    if not written:
        # Nothing was written, and the log says why: our lease lapsed and another claim took
        # the record over ("lost_lease": it owns the outcome now), or the record moved on or
        # went away meanwhile ("refused", "missing").
        name = "lease_lost" if written.reason == "lost_lease" else f"finish_{written.reason}"
        if written.reason == "lost_lease":
            metrics.LEASE_LOST.inc()
        _log_line(record, name, decision.status, outcome, duration_ms, decision=decision,
                  found_status=written.before)  # fmt: skip
        return AttemptResult(name, None)
    metrics.ATTEMPTS.labels(
        record.api, decision.reason, str(outcome.http_status or "none"), record.platform or ""
    ).inc()
    if decision.retry_in_s is not None:
        metrics.RETRIES.labels(record.api).inc()
    _log_line(record, decision.reason, decision.status, outcome, duration_ms, decision=decision)
    if decision.status is Status.EXPIRED and on_expired is not None:
        on_expired(record.id)
    return AttemptResult(decision.reason, decision.status, decision.retry_in_s)


def _observe_first_call(record: Record, now: datetime) -> None:
    if record.attempts == 1 and record.replays == 0:  # this request's first Stripe call
        waited = now - record.created_at
        metrics.FIRST_CALL_SECONDS.observe(max(0.0, waited.total_seconds()))


def _observe(record: Record, outcome: Outcome, duration_ms: float, budgets: Budgets | None) -> None:
    metrics.STRIPE_SECONDS.labels(record.api).observe(duration_ms / 1000)
    if isinstance(outcome, Rejected) and outcome.http_status == 429:
        metrics.STRIPE_429.labels(
            outcome.rate_limited_reason or "none", record.platform or ""
        ).inc()
    if budgets is not None and isinstance(outcome, Rejected) and outcome.rate_limited:
        # A rate limiter's 429 (marked with its reason): someone else spent the account's
        # budget, so slow everyone down on that account (the record's platform), only there.
        # An unmarked 429 (lock_timeout) is only retried.
        budgets.penalize(record.platform)


def _as_compensation(decision: Decision, outcome: Outcome) -> tuple[Decision, dict[str, str | int]]:
    """A decision about a compensating meter event: recorded → ``compensated``; given up
    (failed, or its window closed) → ``expired`` again, with the reason; a retry stays one."""
    if decision.status in (Status.PENDING, Status.COMPLETE):
        extra: dict[str, str | int] = {"compensation_request_id": outcome.request_id or ""}
        return replace(decision, status=Status.COMPENSATED, reason="compensated"), extra
    if decision.status in (Status.FAILED, Status.EXPIRED):
        error = decision.error
        why = (error.message or error.code or "") if error else ""
        extra = {"compensation_error": f"the compensating meter event failed: {why}".strip()}
        return replace(decision, status=Status.EXPIRED, reason="compensation_failed"), extra
    return decision, {}


def _not_compensated(
    store: RecordStore,
    record: Record,
    token: str,
    answer: Unsound,
    now: datetime,
    on_expired: Expired | None,
) -> AttemptResult:
    """A compensation that must not be sent: the record ends ``expired`` with the reason."""
    written = lifecycle.finish(
        store,
        record,
        Decision(Status.EXPIRED, "not_compensated"),
        token=token,
        now=now,
        extra={"compensation_error": answer.reason},
    )
    if not written:
        return AttemptResult("lease_lost" if written.reason == "lost_lease" else "refused", None)
    log.info("cancellation.not_compensated", request_id=record.id, reason=answer.reason,
             event_name=record.event_name)  # fmt: skip
    return AttemptResult("not_compensated", Status.EXPIRED)


MAX_EXPIRED_PER_CLAIM = 1000  # lost causes expired on the way to one record to send


def _claim_next(
    store: RecordStore,
    *,
    lease_s: float,
    clock: Clock,
    hint: str,
    on_expired: Expired | None,
    platform: str,
) -> Claim:
    """``platform``'s next ready record, claimed; each record whose window closed while it
    waited is expired on the way (never sent, and the slot goes to the next one)."""
    for _ in range(MAX_EXPIRED_PER_CLAIM):
        now = clock()
        claim = store.claim_next(now=now, lease_s=lease_s, hint=hint, platform=platform)
        if claim.kind != "window_closed":
            return claim
        record = store.find(claim.record_id)
        if record is not None and lifecycle.expire_window(store, record, now=now):
            _log_line(record, "window_closed", Status.EXPIRED, None, 0.0, attempt=record.attempts)
            if on_expired is not None:
                on_expired(record.id)
    return Claim("empty")


class _Stopping:
    """``_take_slot``'s answer when the worker is stopping."""


STOPPING = _Stopping()
MAX_CHOICES = 4  # platforms chosen by one message, at most (see run_attempt)


def _slot_and_claim(
    record_id: str,
    store: RecordStore,
    budgets: Budgets | None,
    lease_s: float,
    clock: Clock,
    wait: Waiter,
    on_expired: Expired | None,
) -> Claim | _Stopping:
    """A rate slot, then the chosen platform's most urgent record claimed. A platform found
    empty when its slot came (another thread took its last record) is not the end of this
    message: it is a permit, and another platform may still have work."""
    claim = Claim("empty")
    for _ in range(MAX_CHOICES):
        platform = _take_slot(record_id, store, budgets, clock, wait)
        if isinstance(platform, _Stopping):
            return platform
        if platform is None:
            break
        claim = _claim_next(store, lease_s=lease_s, clock=clock, hint=record_id,
                            on_expired=on_expired, platform=platform)  # fmt: skip
        if claim.kind == "claimed" or len(store.ready.names) == 1:
            break
    return claim


def _take_slot(
    record_id: str,
    store: RecordStore,
    budgets: Budgets | None,
    clock: Clock,
    wait: Waiter,
) -> str | _Stopping | None:
    """The platform ("" for records without one) this attempt sends for, once its rate
    slot has come: of the platforms with a record ready, the one whose slot comes first
    (without limits: the most urgent record's). None when no record is ready; STOPPING when
    the worker is stopping.

    Backpressure: the thread keeps its one message while it waits for its reserved slot,
    instead of re-publishing it, so a worker holds at most ``concurrency`` messages (prefetch
    1) and the rest of a backlog waits in Redis at no cost. When the limit is not the
    bottleneck the slot is at most ``max_sleep_s`` away and nothing is held for long. A
    reservation made void by a rate cut, or none free within the horizon, means choosing a
    platform again: one platform's cut never holds a thread another platform could use.
    """

    def ready() -> dict[str, float]:
        # One ready set (no platforms): ready_in has just seen work; no second look.
        return {"": 0.0} if len(store.ready.names) == 1 else store.ready.platforms(clock())

    if budgets is None:
        candidates = ready()
        return min(candidates, key=candidates.__getitem__) if candidates else None
    reserved: Reservation | None = None
    while True:
        if reserved is None:
            candidates = ready()
            if not candidates:
                return None
            platform = budgets.choose(candidates)
            if not budgets.limiter(platform).enabled:
                return platform
            grant = budgets.acquire(platform)
        else:
            platform, slot = reserved
            grant = budgets.acquire(platform, slot)
            if grant.verdict == VOID:
                reserved = None
                continue
        if grant.go:
            return platform if grant.wait_s <= 0 or wait(grant.wait_s) else STOPPING
        reserved = (platform, grant.slot) if grant.slot else None
        horizon_s = budgets.limiter(platform).policy.horizon_s
        pause_s = grant.wait_s if reserved else min(grant.wait_s, horizon_s / 2)
        log.debug(
            "cancellation.waiting_for_slot",
            request_id=record_id,
            platform=platform or None,
            wait_s=round(pause_s, 3),
            rate_per_s=grant.rate_per_s,
            slot_reserved=reserved is not None,
        )
        if not wait(pause_s):
            return STOPPING


def _log_line(
    record: Record,
    outcome_name: str,
    status: Status,
    outcome: Outcome | None,
    duration_ms: float,
    *,
    decision: Decision | None = None,
    attempt: int | None = None,
    found_status: str | None = None,
) -> None:
    """The canonical line: one per attempt, fields not prose. ``found_status``: the status
    a refused finish found the record in."""
    fields: dict[str, object] = {
        "request_id": record.id,
        "api": record.api,
        "event_name": record.event_name,
        "attempt": record.attempts if attempt is None else attempt,
        "generation": record.generation,
        "outcome": outcome_name,
        "status": status.value,
        "http_status": outcome.http_status if outcome else None,
        "stripe_request_id": outcome.request_id if outcome else None,
        "duration_ms": round(duration_ms, 1),
    }
    if found_status:
        fields["found_status"] = found_status
    if isinstance(outcome, Rejected):
        fields["error_type"] = outcome.error_type
        fields["error_code"] = outcome.code
        if outcome.rate_limited_reason:
            fields["rate_limited_reason"] = outcome.rate_limited_reason
    if isinstance(outcome, Accepted):
        fields["stripe_status"] = outcome.stripe_status
    if decision is not None and decision.retry_in_s is not None:
        fields["retry_in_s"] = round(decision.retry_in_s, 3)
    level = "warning" if status is Status.FAILED else "info"
    getattr(log, level)("cancellation.attempt", **fields)
