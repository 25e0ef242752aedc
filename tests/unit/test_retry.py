"""Pure retry decisions: classification of outcomes and backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from adjustments.models import Status
from adjustments.outcomes import Accepted, Rejected
from adjustments.retry import Policy, compute_backoff_s, decide

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
POLICY = Policy(max_attempts=10, backoff_base_s=2.0, backoff_cap_s=300.0)


def rejected(status: int | None, **kw: object) -> Rejected:
    error_type, code = kw.pop("error_type", None), kw.pop("code", None)
    return Rejected(status, error_type, code, "boom", **kw)  # type: ignore[arg-type]


def run(outcome: Accepted | Rejected, *, attempt: int = 1, expires_at: datetime | None = None):  # type: ignore[no-untyped-def]
    return decide(
        outcome,
        attempt=attempt,
        now=NOW,
        expires_at=expires_at,
        policy=POLICY,
        rng=random.Random(1),
    )


class TestAccepted:
    @pytest.mark.parametrize(
        ("stripe_status", "status"),
        [("pending", Status.PENDING), ("complete", Status.COMPLETE), ("queued_v3", Status.PENDING)],
    )
    def test_stripe_status_maps(self, stripe_status: str, status: Status) -> None:
        """Stripe's word decides; an unknown value is accepted as pending."""
        decision = run(Accepted(stripe_status=stripe_status, http_status=200, request_id="req_1"))
        assert decision.status is status and decision.reason == "accepted"

    def test_already_canceled_is_complete(self) -> None:
        """v2's already_canceled means the event is cancelled: complete."""
        decision = run(rejected(400, error_type="already_canceled", code="already_canceled"))
        assert decision.status is Status.COMPLETE


class TestRetryable:
    @pytest.mark.parametrize(
        "outcome",
        [
            rejected(None, error_type="api_connection_error"),
            rejected(500),
            rejected(502),
            rejected(503),
            rejected(409),
            rejected(429, code="rate_limit"),
            rejected(400, should_retry=True),
        ],
        ids=["connection", "500", "502", "503", "409", "429", "should-retry-true"],
    )
    def test_retries_with_backoff(self, outcome: Rejected) -> None:
        """Network errors, 409, 429, 5xx and Stripe-Should-Retry: true are retried later."""
        decision = run(outcome, attempt=3)
        assert decision.status is Status.RETRYING
        assert decision.retry_in_s is not None and 0 <= decision.retry_in_s <= 8.0
        assert decision.error is not None and decision.error.http_status == outcome.http_status

    def test_retry_after_is_honoured(self) -> None:
        """A Retry-After longer than the jittered backoff wins."""
        decision = run(rejected(429, retry_after_s=42.0))
        assert decision.retry_in_s == 42.0

    def test_replayed_5xx_bumps_generation(self) -> None:
        """A 5xx replayed from the idempotency store moves to the next key generation."""
        assert run(rejected(500, idempotent_replayed=True)).bump_generation
        assert not run(rejected(500)).bump_generation
        assert not run(rejected(429, idempotent_replayed=True)).bump_generation

    def test_attempts_exhausted_fail(self) -> None:
        """The last allowed attempt failing retryably ends in failed."""
        decision = run(rejected(500), attempt=10)
        assert (decision.status, decision.reason) == (Status.FAILED, "exhausted")

    def test_window_closing_before_retry_expires(self) -> None:
        """If the next attempt would land after the 24 h window, the record expires now."""
        decision = run(rejected(500, retry_after_s=60.0), expires_at=NOW + timedelta(seconds=30))
        assert (decision.status, decision.reason) == (Status.EXPIRED, "window_closed")


class TestPermanent:
    @pytest.mark.parametrize(
        "outcome",
        [
            rejected(400, code="invalid_cancel_configuration"),
            rejected(401),
            rejected(403),
            rejected(404),
            rejected(429, should_retry=False),
            rejected(500, should_retry=False),
        ],
        ids=["400", "401", "403", "404", "429-should-retry-false", "500-should-retry-false"],
    )
    def test_fails_without_retry(self, outcome: Rejected) -> None:
        """Client errors and Stripe-Should-Retry: false fail at once, keeping the error."""
        decision = run(outcome)
        assert decision.status is Status.FAILED and decision.retry_in_s is None
        assert decision.error is not None and decision.error.http_status == outcome.http_status


class TestBackoff:
    @pytest.mark.parametrize(
        ("attempt", "ceiling"), [(1, 2.0), (2, 4.0), (5, 32.0), (9, 300.0), (40, 300.0)]
    )
    def test_full_jitter_within_ceiling(self, attempt: int, ceiling: float) -> None:
        """Delays are uniform in [0, min(cap, base * 2**(attempt-1))]."""
        rng = random.Random(attempt)
        delays = [compute_backoff_s(attempt, base_s=2.0, cap_s=300.0, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # the whole range is used, not a fixed step
