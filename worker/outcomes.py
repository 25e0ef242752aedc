"""What one Stripe call came to, in plain data (no stripe import, so decisions stay pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Record


@dataclass(frozen=True)
class Accepted:
    """Stripe created the adjustment (or replayed the stored success)."""

    stripe_status: str
    http_status: int
    request_id: str | None
    adjustment_id: str | None = None  # v2 only
    created: str | None = None  # v2 only, ISO 8601
    livemode: bool | None = None
    replayed: bool = False


@dataclass(frozen=True)
class Rejected:
    """The call failed: an error answer from Stripe, or no answer at all (http_status None)."""

    http_status: int | None
    error_type: str | None
    code: str | None
    message: str
    request_id: str | None = None
    should_retry: bool | None = None  # the Stripe-Should-Retry header, when present
    retry_after_s: float | None = None
    idempotent_replayed: bool = False
    # Stripe-Rate-Limited-Reason (global-rate, endpoint-concurrency, ...): set only on a rate
    # limiter's 429. A 429 without it (lock_timeout: one concurrent call per customer and
    # meter) says nothing about the account's budget.
    rate_limited_reason: str | None = None

    @property
    def connection_error(self) -> bool:
        return self.http_status is None

    @property
    def rate_limited(self) -> bool:
        """A Stripe rate limiter refused the call: the shared budget is spent."""
        return self.http_status == 429 and bool(self.rate_limited_reason)


@dataclass(frozen=True)
class Unsound:
    """A compensation that must not be sent (the meter does not sum raw events, the payload
    lacks its keys, ...): nothing went to Stripe, and ``reason`` says why."""

    reason: str
    http_status: None = None
    request_id: None = None


Outcome = Accepted | Rejected
Answer = Outcome | Unsound  # what a sender gives back: a call's outcome, or no call
# What sends one record to Stripe (``stripe_api.send``, bound to its clients): an answer each.
Sender = Callable[["Record"], Answer]
