"""Mapping the SDK's exceptions to outcome data (the headers that decide retries)."""

from __future__ import annotations

import stripe

from adjustments.stripe_api import to_rejected


class TestToRejected:
    def test_headers_and_body_are_read(self) -> None:
        """Status, type, code, Stripe-Should-Retry, Retry-After and replay flag are kept."""
        exc = stripe.RateLimitError(
            "Too many requests",
            http_body="{}",
            http_status=429,
            json_body={
                "error": {
                    "type": "invalid_request_error",
                    "code": "rate_limit",
                    "message": "Too many requests",
                }
            },
            headers={"Stripe-Should-Retry": "true", "Retry-After": "3", "Request-Id": "req_9"},
            code="rate_limit",
        )
        out = to_rejected(exc)
        assert (out.http_status, out.error_type, out.code) == (
            429,
            "invalid_request_error",
            "rate_limit",
        )
        assert out.should_retry is True and out.retry_after_s == 3.0
        assert out.request_id == "req_9" and not out.idempotent_replayed
        assert out.rate_limited_reason is None and not out.rate_limited  # no reason header

    def test_a_rate_limiters_429_carries_its_reason(self) -> None:
        """A rate limiter's 429 keeps its Stripe-Rate-Limited-Reason."""
        exc = stripe.RateLimitError(
            "Too many requests",
            http_body="{}",
            http_status=429,
            json_body={"error": {"type": "invalid_request_error", "code": "rate_limit"}},
            headers={"Stripe-Rate-Limited-Reason": "global-concurrency"},
            code="rate_limit",
        )
        out = to_rejected(exc)
        assert out.rate_limited and out.rate_limited_reason == "global-concurrency"

    def test_connection_error_has_no_status(self) -> None:
        """A connection error has no HTTP status and a one-line message."""
        error = stripe.APIConnectionError("Network error: timed out\n\nmore")  # type: ignore[no-untyped-call]
        out = to_rejected(error)
        assert out.http_status is None and out.connection_error
        assert out.error_type == "api_connection_error" and "\n" not in out.message

    def test_key_in_message_is_redacted(self) -> None:
        """An error message quoting a key is stored without it."""
        exc = stripe.AuthenticationError(
            "Invalid API Key provided: sk_test_abcdef123456",
            http_status=401,
            json_body={"error": {"message": "Invalid API Key provided: sk_test_abcdef123456"}},
            headers={"Idempotent-Replayed": "true"},
        )
        out = to_rejected(exc)
        assert "sk_test" not in out.message and out.idempotent_replayed
