"""The record's life cycle, as transitions on the store: end of an attempt, window closed,
replay. Each is one atomic ``RecordStore.transition`` that refuses an illegal move."""

from __future__ import annotations

from datetime import datetime, timedelta

from .config import CANCEL_WINDOW_S
from .models import Record, Status, iso, to_ms
from .outcomes import Accepted, Outcome, Rejected
from .retry import KEY_UNKNOWN, Decision, replay_needs_new_key
from .store import LIVE, Moved, RecordStore


def finish(
    store: RecordStore,
    record: Record,
    decision: Decision,
    outcome: Outcome | None = None,
    *,
    token: str,
    now: datetime,
    key_outcome: str | None = None,
    extra: dict[str, str | int] | None = None,
) -> Moved:
    """End the attempt that holds ``token`` as ``decision`` says (status, reason, error, a
    retry's delay, a new key generation), keeping Stripe's answer ``outcome`` (None: no call
    was made). ``key_outcome``: what the record's key is now known to have done; ``extra``:
    more fields to write with it. An accepted answer's adjustment fields are kept only for a
    cancellation, not for a compensating meter event."""
    to = decision.status
    retry_at = (
        now + timedelta(seconds=decision.retry_in_s) if decision.retry_in_s is not None else None
    )
    fields: dict[str, str | int] = {
        **(extra or {}),
        "next_attempt_at": iso(retry_at),
        "next_attempt_ms": to_ms(retry_at) if retry_at else "",
        # A retry takes its place among the ready by its deadline (see claim_next.lua).
        "deadline_ms": to_ms(record.deadline) if retry_at else "",
    }
    if key_outcome is not None:
        fields["key_outcome"] = key_outcome
    if isinstance(outcome, Accepted) and record.phase != "compensate":
        fields.update(
            stripe_status=outcome.stripe_status,
            adjustment_id=outcome.adjustment_id or "",
            adjustment_created=outcome.created or "",
            livemode="" if outcome.livemode is None else int(outcome.livemode),
        )
    error = decision.error
    if error is not None:
        fields["last_error"] = error.to_json()
    if outcome is not None and outcome.request_id:
        fields["stripe_request_id"] = outcome.request_id
    if decision.bump_generation:
        generation = record.generation + 1
        fields.update(generation=generation, idempotency_key=store.key_for(record, generation))
        fields["key_outcome"] = ""  # a new key has done nothing yet
    entry = {
        "attempt": record.attempts,
        "outcome": decision.reason or to.value,
        "status": to.value,
        "http_status": outcome.http_status if outcome is not None else None,
        "error_code": error.code if error else None,
        "generation": record.generation,
    }
    if isinstance(outcome, Rejected) and outcome.rate_limited_reason:
        entry["rate_limited_reason"] = outcome.rate_limited_reason
    return store.transition(
        record,
        to,
        now=now,
        allowed_from={Status.PROCESSING},
        fields=fields,
        token=token,
        score_ms=to_ms(retry_at) if retry_at else None,
        history=entry,
    )


def expire_window(store: RecordStore, record: Record, *, now: datetime) -> Moved:
    """Mark a live record whose 24 h window closed (not one a worker is calling Stripe for);
    in the compensation phase, the window Stripe takes the negative meter event in."""
    fields: dict[str, str | int] = {"next_attempt_at": "", "next_attempt_ms": ""}
    if record.status is Status.PROCESSING:
        # Its lease lapsed with no outcome written (a worker died mid-call, or a failover lost
        # the outcome): the claimed attempt may have executed. Said so, it is never compensated.
        fields["key_outcome"] = KEY_UNKNOWN
    if record.phase == "compensate":
        fields["compensation_error"] = "the window for a compensating meter event closed"
    return store.transition(
        record,
        Status.EXPIRED,
        now=now,
        allowed_from=LIVE,
        unless_leased=True,
        fields=fields,
        history={
            "attempt": record.attempts,
            "outcome": "window_closed",
            "status": "expired",
            "generation": record.generation,
        },
    )


def requeue_for_replay(
    store: RecordStore, record: Record, *, now: datetime, force: bool = False
) -> Moved:
    """``failed`` (or, forced, ``expired``) back to ``queued`` with a fresh attempt budget.
    Refused for any other status, so a second replay is a no-op.

    The next key generation only when Stripe's stored answer proves the current key executed
    nothing; after an unknown outcome the same key goes again and Stripe replays the truth."""
    generation = (
        record.generation + 1 if replay_needs_new_key(record.key_outcome) else record.generation
    )
    fields: dict[str, str | int] = {
        "generation": generation,
        "idempotency_key": store.key_for(record, generation),
        "key_outcome": "" if generation != record.generation else record.key_outcome,
        "attempts": 0,
        "replays": record.replays + 1,
        "next_attempt_at": "",
        "next_attempt_ms": "",
    }
    if force:
        fields["expires_at_ms"] = ""  # Stripe decides now; we no longer expire it ourselves
        # ...not even by the deadline its ready score still carries (it goes first).
        fields["deadline_ms"] = to_ms(now + timedelta(seconds=CANCEL_WINDOW_S))
    allowed = {Status.FAILED, Status.EXPIRED} if force else {Status.FAILED}
    return store.transition(
        record,
        Status.QUEUED,
        now=now,
        allowed_from=allowed,
        fields=fields,
        history={"outcome": "replayed", "status": "queued", "generation": generation},
        ready_score=store.ready.score(record, now),
    )
