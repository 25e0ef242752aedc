"""Deadline-first: which ready record a worker takes next (issue 19), over fakeredis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from adjustments import lifecycle
from adjustments.config import Durability
from adjustments.forecast import walk
from adjustments.models import CancelRequest, Status, to_ms
from adjustments.retry import Decision
from adjustments.store import RecordStore

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


def received(seconds_left: float) -> datetime:
    """A receipt time whose 24 h window closes ``seconds_left`` after T0."""
    return T0 - DAY + timedelta(seconds=seconds_left)


def take(store: RecordStore, at: datetime = T0) -> str | None:
    claim = store.claim_next(now=at, lease_s=30)
    return claim.record.identifier if claim.record else None


class TestDeadlineFirst:
    def test_the_window_that_closes_first_goes_first_whatever_the_arrival_order(
        self, store: RecordStore
    ) -> None:
        """Arrival order is the opposite of the deadlines: the claims follow the deadlines;
        a record without a receipt time counts as received when it was enqueued."""
        for name, left_s in (("fresh", 86_000), ("unknown", None), ("soon", 600), ("now", 60)):
            req = CancelRequest("v2", "ev", name, None, received(left_s) if left_s else None)
            store.create(req, now=T0)
        assert [take(store) for _ in range(5)] == ["now", "soon", "fresh", "unknown", None]

    def test_a_due_retry_takes_its_place_by_deadline(self, store: RecordStore) -> None:
        """A retry whose time has come goes before a fresher record; before its time it
        waits."""
        urgent = store.create(CancelRequest("v2", "ev", "u", None, received(300)), now=T0)[0]
        store.create(CancelRequest("v2", "ev", "f", None, received(80_000)), now=T0)
        claim = store.claim_next(now=T0, lease_s=30)
        assert claim.record is not None and claim.record.id == urgent.id
        lifecycle.finish(
            store, claim.record, Decision(Status.RETRYING, "", retry_in_s=10),
            token=claim.token, now=T0,
        )  # fmt: skip
        assert take(store, T0 + timedelta(seconds=1)) == "f"  # the retry is not due yet
        store.create(CancelRequest("v2", "ev", "g", None, received(80_000)), now=T0)
        assert take(store, T0 + timedelta(seconds=11)) == "u"  # due: ahead of g

    def test_a_retry_is_never_taken_before_its_time(self, store: RecordStore) -> None:
        """Backoff holds to the millisecond: a retry half a second away is not claimed, even
        within the second a message may come early; a message that early waits for it."""
        record = store.create(CancelRequest("v2", "ev", "r", None, received(300)), now=T0)[0]
        claim = store.claim_next(now=T0, lease_s=30)
        assert claim.record is not None
        lifecycle.finish(
            store, claim.record, Decision(Status.RETRYING, "", retry_in_s=0.5),
            token=claim.token, now=T0,
        )  # fmt: skip
        early = T0 + timedelta(milliseconds=100)
        assert store.claim_next(now=early, lease_s=30).kind == "empty"
        assert store.ready.due_in(early) == pytest.approx(0.4)
        assert store.ready.due_in(T0 + timedelta(seconds=5)) == 0.0
        due = store.claim_next(now=T0 + timedelta(milliseconds=500), lease_s=30)
        assert due.record is not None and due.record.id == record.id

    def test_a_closed_window_is_handed_back_not_claimed(self, store: RecordStore) -> None:
        """A record whose window closed while it waited is handed back to be expired, and
        the next claim takes the next record."""
        late = store.create(CancelRequest("v2", "ev", "late", None, received(5)), now=T0)[0]
        store.create(CancelRequest("v2", "ev", "ok", None, received(3600)), now=T0)
        claim = store.claim_next(now=T0 + timedelta(seconds=10), lease_s=30)
        assert (claim.kind, claim.record_id) == ("window_closed", late.id)
        assert take(store, T0 + timedelta(seconds=10)) == "ok"

    def test_fifo_order_is_arrival_order(self, client: fakeredis.FakeRedis) -> None:
        """With order=fifo the oldest ready record goes first, deadlines aside."""
        store = RecordStore(
            client, prefix="f", retention_s=3600, durability=Durability("memory"), order="fifo"
        )
        for n, left_s in enumerate((80_000, 60)):
            at = T0 + timedelta(milliseconds=n)
            store.create(CancelRequest("v2", "ev", f"r{n}", None, received(left_s)), now=at)
        assert [take(store), take(store)] == ["r0", "r1"]

    def test_a_replayed_record_is_ready_again_at_its_deadline(self, store: RecordStore) -> None:
        """A replay puts the record back among the ready, in its deadline's place."""
        record = store.create(CancelRequest("v2", "ev", "rp", None, received(900)), now=T0)[0]
        claim = store.claim_next(now=T0, lease_s=30)
        assert claim.record is not None
        lifecycle.finish(
            store, claim.record, Decision(Status.FAILED, ""), token=claim.token, now=T0
        )
        store.create(CancelRequest("v2", "ev", "other", None, received(3600)), now=T0)
        assert lifecycle.requeue_for_replay(store, store.get(record.id), now=T0)
        assert store.ready.ids(2)[0] == record.id
        assert store.client.zscore(f"{store.prefix}:ready", record.id) == to_ms(received(900) + DAY)


class TestForecast:
    def test_everything_fits(self) -> None:
        """Ten records, a minute each at 1/s: nothing expires."""
        deadlines = [60_000.0 + i for i in range(10)]
        forecast = walk(deadlines, now_ms=0, rate_per_s=1.0)
        assert (forecast.expiring, forecast.first_miss_ms) == (0, None)

    def test_an_overload_expires_what_cannot_fit_and_skips_it(self) -> None:
        """2,000 closing in 30 s at 40/s: 1,200 go, 800 expire; the first miss is the
        1,201st deadline."""
        deadlines = [30_000.0 + i * 0.001 for i in range(2000)]
        forecast = walk(deadlines, now_ms=0, rate_per_s=40.0)
        assert forecast.expiring == 800
        assert forecast.first_miss_ms == deadlines[1200]

    def test_lost_causes_take_no_slot(self) -> None:
        """Two that cannot make it do not push back the ones after them."""
        forecast = walk([100.0, 200.0, 5_000.0, 6_000.0], now_ms=0, rate_per_s=1.0)
        assert (forecast.expiring, forecast.first_miss_ms) == (2, 100.0)

    def test_no_rate_means_every_waiting_record_expires(self) -> None:
        """No live worker (rate 0): all of them, the nearest first."""
        forecast = walk([5.0, 9.0], now_ms=0, rate_per_s=0.0, buckets=[(100.0, 3)])
        assert (forecast.expiring, forecast.first_miss_ms) == (5, 5.0)

    def test_buckets_continue_the_walk(self) -> None:
        """Past the exact deadlines, counts per bucket: 10 due within 5 s at 1/s, 5 miss."""
        forecast = walk([], now_ms=0, rate_per_s=1.0, buckets=[(5_000.0, 10), (1e9, 3)])
        assert (forecast.expiring, forecast.first_miss_ms) == (5, 5_000.0)


class TestClaimsSentAgain:
    def test_a_claim_sent_again_gets_the_record_it_took(
        self, store: RecordStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The same claim (same lease token) run twice, as after a lost answer: the second
        run answers with the record the first took, and takes no other."""
        import secrets

        for name in ("a", "b"):
            store.create(CancelRequest("v2", "ev", name), now=T0)
        token = secrets.token_hex(8)
        monkeypatch.setattr(secrets, "token_hex", lambda _n=None: token)
        first = store.claim_next(now=T0, lease_s=30)
        again = store.claim_next(now=T0, lease_s=30)
        monkeypatch.undo()
        assert first.record is not None and again.record is not None
        assert again.record.id == first.record.id and again.token == first.token
        assert store.counts()["processing"] == 1 and len(store.ready.ids(10)) == 1

    def test_the_messages_own_record_goes_when_its_deadline_is_as_near(
        self, store: RecordStore
    ) -> None:
        """Two records whose deadlines are a millisecond apart: the message's own goes (its
        trace continues in its own attempt); one an hour later does not jump ahead."""
        first = store.create(CancelRequest("v2", "ev", "first"), now=T0)[0]
        second = store.create(
            CancelRequest("v2", "ev", "second"), now=T0 + timedelta(milliseconds=1)
        )[0]
        later = store.create(CancelRequest("v2", "ev", "later"), now=T0 + timedelta(hours=1))[0]
        claim = store.claim_next(now=T0, lease_s=30, hint=second.id)
        assert claim.record is not None and claim.record.id == second.id
        claim = store.claim_next(now=T0, lease_s=30, hint=later.id)
        assert claim.record is not None and claim.record.id == first.id

    def test_a_forced_replay_is_sent_although_its_window_closed(self, store: RecordStore) -> None:
        """An expired record replayed with force goes first and is claimed (Stripe decides)."""
        old = CancelRequest("v2", "ev", "old", None, received(-10))
        record = store.create(old, now=T0)[0]
        assert store.claim_next(now=T0, lease_s=30).kind == "window_closed"
        lifecycle.expire_window(store, store.get(record.id), now=T0)
        assert lifecycle.requeue_for_replay(store, store.get(record.id), now=T0, force=True)
        claim = store.claim_next(now=T0, lease_s=30)
        assert claim.kind == "claimed" and claim.record is not None
        assert claim.record.id == record.id
