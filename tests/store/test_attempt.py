"""One attempt end to end over the store, with the Stripe boundary given as data."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from adjustments.attempt import run_attempt
from adjustments.models import CancelRequest, Record, Status
from adjustments.outcomes import Accepted, Outcome, Rejected
from adjustments.retry import Policy
from adjustments.store import RecordStore

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
POLICY = Policy(max_attempts=3, backoff_base_s=1.0, backoff_cap_s=10.0)


def answering(*outcomes: Outcome):  # type: ignore[no-untyped-def]
    seen: list[Record] = []
    queue = list(outcomes)

    def send(record: Record) -> Outcome:
        seen.append(record)
        return queue.pop(0)

    return send, seen


def attempt(store: RecordStore, record_id: str, send, at: datetime = T0):  # type: ignore[no-untyped-def]
    return run_attempt(
        record_id,
        store=store,
        send=send,
        policy=POLICY,
        lease_s=30,
        clock=lambda: at,
        rng=random.Random(0),
    )


class TestRunAttempt:
    def test_success_logs_one_canonical_line(self, store: RecordStore) -> None:
        """An accepted attempt writes one cancellation.attempt line with its fields."""
        record, _ = store.create(CancelRequest("v1", "ev", "id"), now=T0)
        send, _ = answering(Accepted("pending", 200, "req_ok"))
        with capture_logs() as logs:
            result = attempt(store, record.id, send)
        assert result.status is Status.PENDING and result.retry_in_s is None
        lines = [e for e in logs if e["event"] == "cancellation.attempt"]
        assert len(lines) == 1
        line = lines[0]
        assert {
            k: line[k]
            for k in (
                "request_id",
                "api",
                "event_name",
                "attempt",
                "outcome",
                "status",
                "http_status",
                "stripe_request_id",
            )
        } == {
            "request_id": record.id,
            "api": "v1",
            "event_name": "ev",
            "attempt": 1,
            "outcome": "accepted",
            "status": "pending",
            "http_status": 200,
            "stripe_request_id": "req_ok",
        }
        assert isinstance(line["duration_ms"], float) and "retry_in_s" not in line

    def test_retry_then_success_keeps_key_until_replayed_5xx(self, store: RecordStore) -> None:
        """Same key across plain retries; the next generation after a replayed 5xx."""
        record, _ = store.create(CancelRequest("v2", "ev", "id"), now=T0)
        send, seen = answering(
            Rejected(429, "rate_limit", "rate_limit", "slow down"),
            Rejected(500, "api_error", None, "boom", idempotent_replayed=True),
            Accepted("complete", 200, "req_3"),
        )
        with capture_logs() as logs:
            first = attempt(store, record.id, send)
            assert first.status is Status.RETRYING and first.retry_in_s is not None
            second = attempt(store, record.id, send, T0 + timedelta(seconds=20))
            third = attempt(store, record.id, send, T0 + timedelta(seconds=40))
        assert third.status is Status.COMPLETE and second.status is Status.RETRYING
        assert [r.idempotency_key[-3:] for r in seen] == ["-g0", "-g0", "-g1"]
        assert [e["retry_in_s"] for e in logs if e["status"] == "retrying"]
        assert store.get(record.id).attempts == 3

    def test_exhausted_attempts_fail(self, store: RecordStore) -> None:
        """5xx answers up to the attempt budget end in failed, with the last error kept."""
        record, _ = store.create(CancelRequest("v2", "ev", "id"), now=T0)
        send, _ = answering(*[Rejected(503, "api_error", None, "down")] * 3)
        for n in range(3):
            result = attempt(store, record.id, send, T0 + timedelta(seconds=30 * n))
        assert result.status is Status.FAILED and result.reason == "exhausted"
        assert store.get(record.id).last_error is not None

    def test_duplicate_delivery_is_skipped_without_calling_stripe(self, store: RecordStore) -> None:
        """A delivery of a record another worker holds finds nothing ready: no Stripe call."""
        record, _ = store.create(CancelRequest("v2", "ev", "id"), now=T0)
        store.claim(record.id, now=T0, lease_s=30)  # another worker holds it
        send, seen = answering()
        result = attempt(store, record.id, send)
        assert result.reason == "nothing_ready" and seen == []

    def test_closed_window_expires_without_calling_stripe(self, store: RecordStore) -> None:
        """A record past its 24 h window expires without a Stripe call."""
        old = CancelRequest("v2", "ev", "id", None, T0 - timedelta(hours=24, seconds=1))
        record, _ = store.create(old, now=T0)
        send, seen = answering()
        with capture_logs() as logs:
            attempt(store, record.id, send)
        assert seen == [] and store.get(record.id).status is Status.EXPIRED
        lines = [e for e in logs if e["event"] == "cancellation.attempt"]
        assert [(e["outcome"], e["status"]) for e in lines] == [("window_closed", "expired")]
