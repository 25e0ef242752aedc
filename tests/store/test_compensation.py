"""Compensation on fakeredis (issue 20): the original event's validation, the phase's
transitions, soundness by meter, the negation and the dry-run plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from adjustments import compensation
from adjustments.attempt import run_attempt
from adjustments.compensation import MeterInfo, Plan, negated, unsound
from adjustments.errors import InvalidInput
from adjustments.models import CancelRequest, OriginalEvent, Record, Status
from adjustments.outcomes import Accepted, Answer, Rejected, Unsound
from adjustments.retry import Policy
from adjustments.store import RecordStore

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
EVENT = {"payload": {"stripe_customer_id": "cus_A", "value": "5"}, "timestamp": T0.isoformat()}
SUM = MeterInfo("mtr_1", "api_sum", "sum", None, "stripe_customer_id", "value")


def expiring(store: RecordStore, name: str = "e1", event: object = EVENT) -> Record:
    """A record whose window closed a second after T0, with its original event."""
    received = T0 - timedelta(hours=24) + timedelta(seconds=1)
    req = CancelRequest.build(
        "api_sum", name, api="v2", event_received_at=received, original_event=event, now=T0
    )
    return store.create(req, now=T0)[0]


def attempt(store: RecordStore, record_id: str, answer: Answer, at: datetime) -> list[str]:
    """One attempt at ``at`` answering ``answer``; the ids its hook was told expired."""
    told: list[str] = []

    def hook(expired_id: str) -> None:
        told.append(expired_id)
        compensation.start(store, expired_id, lambda _i: True, now=at, timestamp_mode="original")

    run_attempt(
        record_id,
        store=store,
        send=lambda _r: answer,
        policy=Policy(3, 0.01, 0.1),
        lease_s=30,
        clock=lambda: at,
        on_expired=hook,
    )
    return told


class TestOriginalEvent:
    def test_a_valid_event_is_kept_as_given(self) -> None:
        """A valid original event keeps its payload as given and its timestamp in UTC."""
        event = OriginalEvent.build(EVENT, now=T0)
        assert event is not None and event.payload["value"] == "5" and event.timestamp == T0

    @pytest.mark.parametrize(
        ("event", "says"),
        [
            ({"payload": {"value": 5}, "timestamp": 1}, "must be a string"),
            ({"payload": {}, "timestamp": 1}, "non-empty"),
            ({"payload": {"value": "5"}}, "timestamp is required"),
            ({"payload": {"value": "5"}, "timestamp": "2026-11-21T12:00:00"}, "timezone-aware"),
            (
                {"payload": {"value": "5"}, "timestamp": (T0 + timedelta(hours=1)).isoformat()},
                "in the future",
            ),
            (
                {"payload": {"value": "5"}, "timestamp": (T0 - timedelta(days=36)).isoformat()},
                "35 days",
            ),
            (
                {
                    "payload": {f"k{i:099d}": "x" * 100 for i in range(12)},
                    "timestamp": 1,
                },
                "bytes",
            ),
            ({"payload": {"value": "5"}, "timestamp": T0.isoformat(), "extra": 1}, "unknown"),
            ("cus_A:5", "must be an object"),
        ],
    )
    def test_bad_events_are_refused_with_one_line(self, event: object, says: str) -> None:
        """Each malformed original event is refused with one line naming the problem."""
        with pytest.raises(InvalidInput, match=says):
            OriginalEvent.build(event, now=T0)

    def test_reason_and_requested_by_are_checked(self) -> None:
        """reason keeps newlines but is capped at 500 characters; requested_by is one clean line."""
        with pytest.raises(InvalidInput, match="at most 500"):
            CancelRequest.build("ev", "i", api="v1", reason="x" * 501, now=T0)
        with pytest.raises(InvalidInput, match="control"):
            CancelRequest.build("ev", "i", api="v1", requested_by="a\x07b", now=T0)
        req = CancelRequest.build(
            "ev", "i", api="v1", reason="dup\nline", requested_by="ops", now=T0
        )
        assert (req.reason, req.requested_by) == ("dup\nline", "ops")

    def test_stored_with_the_record(self, store: RecordStore) -> None:
        """The original event is stored on the record and read back, also in its JSON view."""
        record = expiring(store)
        back = store.get(record.id)
        assert back.original_event == OriginalEvent.build(EVENT, now=T0)
        assert back.to_dict()["original_event"]["payload"] == EVENT["payload"]


class TestSoundness:
    def test_only_a_raw_sum_meter_with_the_keys_is_sound(self, store: RecordStore) -> None:
        """Only a raw sum meter whose customer and value keys are in the payload is sound; the
        reason names what is not."""
        record = expiring(store)
        assert unsound(SUM, record) is None
        count = MeterInfo("m", "api_sum", "count", None, "stripe_customer_id", "value")
        assert "aggregates by count" in str(unsound(count, record))
        hourly = MeterInfo("m", "api_sum", "sum", "hour", "stripe_customer_id", "value")
        assert "pre-aggregated per hour" in str(unsound(hourly, record))
        other_key = MeterInfo("m", "api_sum", "sum", None, "customer", "value")
        assert "no 'customer'" in str(unsound(other_key, record))
        assert "no active meter" in str(unsound(None, record))

    def test_negation(self) -> None:
        """Values are negated as decimal text; zero and non-numbers are not compensable."""
        assert [negated(v) for v in ("5", "2.5", "-3", "0", "x", "NaN")] == [
            "-5", "-2.5", "3", None, None, None,
        ]  # fmt: skip


class TestPhase:
    def test_an_expired_record_is_compensated_once(self, store: RecordStore) -> None:
        """The window closed before its slot: expired without a call and its compensation
        begun, which the same slot then sends (the next ready record): compensated."""
        record = expiring(store)
        later = T0 + timedelta(seconds=5)
        sent: list[Record] = []

        def send(r: Record) -> Answer:
            sent.append(r)
            return Accepted("recorded", 200, "req_1")

        told: list[str] = []

        def hook(expired_id: str) -> None:
            told.append(expired_id)
            compensation.start(store, expired_id, lambda _i: True, now=later,
                               timestamp_mode="original")  # fmt: skip

        run_attempt(record.id, store=store, send=send, policy=Policy(3, 0.01, 0.1), lease_s=30,
                    clock=lambda: later, on_expired=hook)  # fmt: skip
        assert told == [record.id] and len(sent) == 1
        assert sent[0].phase == "compensate"
        assert sent[0].compensation_identifier == compensation.identifier_for(record.id)
        assert sent[0].idempotency_key == compensation.idempotency_key(record.id, 0)
        done = store.get(record.id, with_history=True)
        assert done.status is Status.COMPENSATED and done.status.terminal
        assert [h["outcome"] for h in done.history] == [
            "window_closed",
            "compensating",
            "compensated",
        ]
        # A second start (a stale reader, reconciliation) changes nothing.
        assert not compensation.begin(store, record, now=later, timestamp_mode="original")
        assert store.get(record.id).status is Status.COMPENSATED

    def test_an_unsound_meter_leaves_it_expired_with_the_reason(self, store: RecordStore) -> None:
        """An unsound meter: nothing is sent, the record stays expired with the reason, never due
        again."""
        record = expiring(store)
        later = T0 + timedelta(seconds=5)
        attempt(store, record.id, Unsound("meter api_sum aggregates by count"), later)
        back = store.get(record.id)
        assert back.status is Status.EXPIRED
        assert back.compensation_error == "meter api_sum aggregates by count"
        assert not compensation.due(back)

    def test_a_refused_meter_event_leaves_it_expired_with_stripes_message(
        self, store: RecordStore
    ) -> None:
        """Stripe refusing the meter event for good leaves it expired with Stripe's message."""
        record = expiring(store)
        later = T0 + timedelta(seconds=5)
        refused = Rejected(400, "invalid_request_error", "parameter_invalid", "Missing value.",
                           should_retry=False)  # fmt: skip
        attempt(store, record.id, refused, later)
        back = store.get(record.id)
        assert back.status is Status.EXPIRED
        assert "Missing value." in str(back.compensation_error)

    def test_without_an_original_event_nothing_begins(self, store: RecordStore) -> None:
        """A record without its original event stays expired: there is nothing to negate."""
        record = expiring(store, "plain", event=None)
        later = T0 + timedelta(seconds=5)
        attempt(store, record.id, Accepted("recorded", 200, "r"), later)
        back = store.get(record.id)
        assert back.status is Status.EXPIRED and back.phase == ""


class TestPlan:
    def test_totals_per_customer_and_event_name(self, store: RecordStore) -> None:
        """The plan sums the negative values per customer and event name and skips what it cannot
        compensate."""
        plan = Plan()
        for i, (customer, value) in enumerate([("cus_A", "5"), ("cus_A", "2.5"), ("cus_B", "1")]):
            event = {"payload": {"stripe_customer_id": customer, "value": value},
                     "timestamp": T0.isoformat()}  # fmt: skip
            plan.add(expiring(store, f"p{i}", event), "stripe_customer_id", "value")
        plan.add(expiring(store, "none", None), "stripe_customer_id", "value")
        assert plan.totals == {
            ("cus_A", "api_sum"): Decimal("-7.5"),
            ("cus_B", "api_sum"): Decimal("-1"),
        }
        assert len(plan.records) == 3 and len(plan.skipped) == 1


class TestMeterCache:
    def test_a_meter_created_after_the_cache_filled_is_found(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Known names are served from the cache; an unknown one looks the meters up again
        (at most once a second), so a new meter is not taken for a missing one for minutes."""
        from adjustments.compensation import MeterCache

        meters: list[dict[str, object]] = [
            {"id": "mtr_1", "event_name": "a", "default_aggregation": {"formula": "sum"}}
        ]
        calls: list[str | None] = []

        def fetch(account: str | None) -> list[dict[str, object]]:
            calls.append(account)
            return list(meters)

        clock = [1000.0]
        import time

        monkeypatch.setattr(time, "monotonic", lambda: clock[0])
        cache = MeterCache(fetch=fetch)
        assert cache.find(None, "a") is not None and cache.find(None, "a") is not None
        assert len(calls) == 1
        meters.append({"id": "mtr_2", "event_name": "b", "default_aggregation": {"formula": "sum"}})
        assert cache.find(None, "b") is None and len(calls) == 1  # looked up a moment ago
        clock[0] += 2
        found = cache.find(None, "b")
        assert found is not None and found.id == "mtr_2" and len(calls) == 2
