"""Pure retry decisions: backoff, and what an outcome means for a record's status."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from .models import ErrorInfo, Status
from .outcomes import Accepted, Outcome, Rejected

RETRYABLE_HTTP = frozenset({409, 429})
ALREADY_CANCELED = "already_canceled"
# What Stripe's idempotency layer has said under a record's current key:
KEY_UNKNOWN = "unknown"  # a call got no answer (timeout, dropped connection): may have executed
KEY_REJECTED = "rejected"  # a definite error answer: stored and replayed, nothing executed
# Answers that come before the idempotency layer (or while another request holds the key) and
# so say nothing about what the key did: 429 (rate limiters run first), 409 (key in use).
SAYS_NOTHING_OF_KEY = frozenset({409, 429})
UNKNOWN_NOTE = (
    "attempts ran out after an attempt whose outcome is unknown (no answer from Stripe): the "
    "cancellation may have been executed; a replay reuses the same idempotency key, so Stripe "
    "answers with what happened. Last error: "
)


def key_outcome_after(previous: str, outcome: Outcome) -> str:
    """What the current idempotency key is known to have done after ``outcome``."""
    if isinstance(outcome, Accepted):
        return ""
    if outcome.connection_error:
        return KEY_UNKNOWN
    if (outcome.http_status or 0) in SAYS_NOTHING_OF_KEY:
        return previous
    return KEY_REJECTED


def replay_needs_new_key(key_outcome: str) -> bool:
    """A replay moves to the next key only when Stripe's stored answer proves the current one
    executed nothing; after an unknown outcome (or none at all) it reuses the key, so Stripe
    replays the truth instead of executing a second time."""
    return key_outcome == KEY_REJECTED


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
    key_outcome: str = "",
) -> Decision:
    """Classify one attempt's outcome into the record's next status (``key_outcome``: what the
    current key is known to have done, after this attempt)."""
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
        if key_outcome == KEY_UNKNOWN:
            error = replace(
                error, message=UNKNOWN_NOTE + (error.message or ""), outcome_unknown=True
            )
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
