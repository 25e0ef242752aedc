"""Pure retry decisions: backoff, and what an outcome means for a record's status."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.models import ErrorInfo, Status
from worker.outcomes import Accepted, Outcome, Rejected

RETRYABLE_HTTP = frozenset({409, 429})
ALREADY_CANCELED = "already_canceled"


def compute_backoff_s(
    attempt: int, *, base_s: float, cap_s: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(0.0, ceiling)


@dataclass(frozen=True)
class Policy:
    """The retry knobs a decision needs (from Settings)."""

    max_attempts: int
    backoff_base_s: float
    backoff_cap_s: float


@dataclass(frozen=True)
class Decision:
    """What to do with a record after one attempt."""

    status: Status
    reason: str  # accepted, already_canceled, retryable, permanent, exhausted, window_closed
    retry_in_s: float | None = None
    bump_generation: bool = False
    error: ErrorInfo | None = None


def is_retryable(outcome: Rejected) -> bool:
    """Stripe-Should-Retry wins; then no answer, 409, 429 and 5xx retry; other 4xx do not."""
    if outcome.should_retry is not None:
        return outcome.should_retry
    if outcome.connection_error:
        return True
    status = outcome.http_status or 0
    return status in RETRYABLE_HTTP or status >= 500


def decide(
    outcome: Outcome,
    *,
    attempt: int,
    now: datetime,
    expires_at: datetime | None,
    policy: Policy,
    rng: random.Random | None = None,
) -> Decision:
    """Classify one attempt's outcome into the record's next status."""
    if isinstance(outcome, Accepted):
        # Stripe's status is an open enum: anything other than complete is "accepted, pending".
        status = Status.COMPLETE if outcome.stripe_status == "complete" else Status.PENDING
        return Decision(status, "accepted")
    error = ErrorInfo(outcome.error_type, outcome.code, outcome.message, outcome.http_status)
    if ALREADY_CANCELED in (outcome.error_type, outcome.code):
        return Decision(Status.COMPLETE, "already_canceled", error=error)
    if not is_retryable(outcome):
        return Decision(Status.FAILED, "permanent", error=error)
    if attempt >= policy.max_attempts:
        return Decision(Status.FAILED, "exhausted", error=error)
    delay = compute_backoff_s(
        attempt, base_s=policy.backoff_base_s, cap_s=policy.backoff_cap_s, rng=rng
    )
    if outcome.retry_after_s is not None:
        # Retry-After is honoured, up to the cap (a longer wait belongs to reconciliation).
        delay = min(max(delay, outcome.retry_after_s), max(policy.backoff_cap_s, delay))
    if expires_at is not None and now + timedelta(seconds=delay) >= expires_at:
        return Decision(Status.EXPIRED, "window_closed", error=error)
    # A 5xx replayed from the idempotency store was never executed: retrying the same key would
    # only replay it again, so the next attempt uses the next key generation.
    bump = outcome.idempotent_replayed and (outcome.http_status or 0) >= 500
    return Decision(
        Status.RETRYING, "retryable", retry_in_s=delay, bump_generation=bump, error=error
    )
