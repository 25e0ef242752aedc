"""The record store on fakeredis: create/dedupe, leases, atomic transitions, indexes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import fakeredis
import pytest

from adjustments import lifecycle
from adjustments.errors import RecordNotFound
from adjustments.models import CancelRequest, ErrorInfo, Status
from adjustments.outcomes import Accepted
from adjustments.retry import Decision
from adjustments.store import RecordStore

from .conftest import RETENTION_S

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
REQ = CancelRequest("v2", "ai_search_api", "idmp_1")


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class TestCreate:
    def test_new_record_is_queued_and_indexed(self, store: RecordStore) -> None:
        """A new record is queued, indexed and readable back as written."""
        record, created = store.create(REQ, now=T0)
        assert created and record.status is Status.QUEUED and record.attempts == 0
        assert record.idempotency_key.endswith("-g0") and record.id.startswith("adj_")
        assert store.get(record.id) == record
        assert store.counts()["queued"] == 1

    def test_same_request_returns_existing(self, store: RecordStore) -> None:
        """Cancelling the same (api, account, event, identifier) again finds the first record."""
        first, _ = store.create(REQ, now=T0)
        again, created = store.create(REQ, now=later(5))
        assert not created and again.id == first.id
        assert store.counts()["queued"] == 1

    def test_other_api_or_account_is_another_request(self, store: RecordStore) -> None:
        """Another API version or account makes another request."""
        a, _ = store.create(REQ, now=T0)
        b, _ = store.create(CancelRequest("v1", "ai_search_api", "idmp_1"), now=T0)
        c, _ = store.create(CancelRequest("v2", "ai_search_api", "idmp_1", "acct_1"), now=T0)
        assert len({a.id, b.id, c.id}) == 3

    def test_identifier_not_in_key_names(
        self, store: RecordStore, client: fakeredis.FakeRedis
    ) -> None:
        """No key name carries the identifier or event name."""
        store.create(REQ, now=T0)
        assert not [k for k in client.keys("*") if "idmp_1" in k or "ai_search_api" in k]

    def test_unknown_id(self, store: RecordStore) -> None:
        """get() of an unknown id raises RecordNotFound."""
        with pytest.raises(RecordNotFound):
            store.get("adj_nope")


class TestClaim:
    def test_claim_takes_lease_and_counts_attempt(self, store: RecordStore) -> None:
        """A claim leases the record, counts the attempt and moves its index entry."""
        record, _ = store.create(REQ, now=T0)
        claim = store.claim(record.id, now=later(1), lease_s=60)
        assert claim.kind == "claimed" and claim.token and claim.record is not None
        assert claim.record.status is Status.PROCESSING and claim.record.attempts == 1
        assert store.counts()["processing"] == 1 and store.counts()["queued"] == 0

    def test_duplicate_delivery_is_refused_while_leased(self, store: RecordStore) -> None:
        """A second delivery of the same task cannot claim while the lease holds."""
        record, _ = store.create(REQ, now=T0)
        store.claim(record.id, now=later(1), lease_s=60)
        assert store.claim(record.id, now=later(2), lease_s=60).kind == "leased"

    def test_lapsed_lease_can_be_reclaimed(self, store: RecordStore) -> None:
        """A worker that died mid-call leaves a lease that another may take after it lapses."""
        record, _ = store.create(REQ, now=T0)
        first = store.claim(record.id, now=later(1), lease_s=60)
        second = store.claim(record.id, now=later(62), lease_s=60)
        assert second.kind == "claimed" and second.token != first.token
        assert second.record is not None and second.record.attempts == 2
        # the first worker's late finish is refused: its lease is no longer the record's
        late = lifecycle.finish(
            store, record, Decision(Status.PENDING, ""), token=first.token, now=later(63)
        )
        assert not late and (late.reason, late.before) == ("lost_lease", "processing")

    def test_a_refused_finish_says_why(self, store: RecordStore) -> None:
        """A finish on a record that has moved on is refused as such, not as a lost lease;
        on a record that is gone, as missing."""
        record, _ = store.create(REQ, now=T0)
        claim = store.claim(record.id, now=later(1), lease_s=60)
        assert lifecycle.finish(
            store, record, Decision(Status.PENDING, ""), token=claim.token, now=later(2)
        )
        again = lifecycle.finish(
            store, record, Decision(Status.FAILED, ""), token=claim.token, now=later(3)
        )
        assert (again.reason, again.before) == ("refused", "pending")
        store.client.delete(store.record_key(record.id))
        gone = lifecycle.finish(
            store, record, Decision(Status.FAILED, ""), token=claim.token, now=later(4)
        )
        assert gone.reason == "missing"

    def test_retry_not_due_is_refused(self, store: RecordStore) -> None:
        """A retrying record cannot be claimed before it is due."""
        record, _ = store.create(REQ, now=T0)
        claim = store.claim(record.id, now=T0, lease_s=60)
        lifecycle.finish(
            store, record, Decision(Status.RETRYING, "", retry_in_s=30), token=claim.token, now=T0
        )
        assert store.claim(record.id, now=later(10), lease_s=60).kind == "not_due"
        assert store.claim(record.id, now=later(30), lease_s=60).kind == "claimed"

    def test_terminal_is_refused(self, store: RecordStore) -> None:
        """A terminal record cannot be claimed."""
        record, _ = store.create(REQ, now=T0)
        claim = store.claim(record.id, now=T0, lease_s=60)
        lifecycle.finish(store, record, Decision(Status.COMPLETE, ""), token=claim.token, now=T0)
        assert store.claim(record.id, now=later(1), lease_s=60).kind == "terminal"

    def test_closed_window_is_reported(self, store: RecordStore) -> None:
        """A claim on a record past its window reports the closed window."""
        old = CancelRequest("v1", "ev", "old", None, T0 - timedelta(hours=25))
        record, _ = store.create(old, now=T0)
        assert store.claim(record.id, now=T0, lease_s=60).kind == "window_closed"
        assert lifecycle.expire_window(store, record, now=T0)
        assert store.get(record.id).status is Status.EXPIRED

    def test_missing(self, store: RecordStore) -> None:
        """A claim on an unknown record reports it missing."""
        assert store.claim("adj_missing", now=T0, lease_s=60).kind == "missing"


class TestFinish:
    def test_accepted_fields_recorded(self, store: RecordStore) -> None:
        """Stripe's accepted answer is kept on the record."""
        record, _ = store.create(REQ, now=T0)
        claim = store.claim(record.id, now=T0, lease_s=60)
        accepted = Accepted(
            "pending", 200, "req_1", "mtr_event_adj_1", "2026-11-21T12:00:00Z", False
        )
        assert lifecycle.finish(
            store,
            record,
            Decision(Status.PENDING, "accepted"),
            accepted,
            token=claim.token,
            now=later(1),
        )
        got = store.get(record.id)
        assert (got.status, got.stripe_status, got.adjustment_id) == (
            Status.PENDING,
            "pending",
            "mtr_event_adj_1",
        )
        assert got.livemode is False and got.stripe_request_id == "req_1"
        assert store.counts() == {**dict.fromkeys(store.counts(), 0), "pending": 1}

    def test_error_and_generation_bump(self, store: RecordStore) -> None:
        """A retry keeps the error and moves to the next key generation when told."""
        record, _ = store.create(REQ, now=T0)
        claim = store.claim(record.id, now=T0, lease_s=60)
        error = ErrorInfo("api_error", "api_error", "boom", 500)
        lifecycle.finish(
            store,
            record,
            Decision(Status.RETRYING, "", retry_in_s=4, bump_generation=True, error=error),
            token=claim.token,
            now=T0,
        )
        got = store.get(record.id)
        assert got.last_error == error and got.generation == 1
        assert got.idempotency_key.endswith("-g1") and got.next_attempt_at == later(4)

    def test_late_duplicate_cannot_overwrite_complete(self, store: RecordStore) -> None:
        """An illegal move is refused inside Redis."""
        record, _ = store.create(REQ, now=T0)
        claim = store.claim(record.id, now=T0, lease_s=60)
        lifecycle.finish(store, record, Decision(Status.COMPLETE, ""), token=claim.token, now=T0)
        assert not lifecycle.finish(
            store, record, Decision(Status.FAILED, ""), token=claim.token, now=later(1)
        )
        assert store.get(record.id).status is Status.COMPLETE

    def test_terminal_records_expire_after_retention(
        self, store: RecordStore, client: fakeredis.FakeRedis
    ) -> None:
        """Live records never expire; terminal ones expire after the retention."""
        record, _ = store.create(REQ, now=T0)
        assert client.ttl(store.record_key(record.id)) == -1  # live records never expire
        claim = store.claim(record.id, now=T0, lease_s=60)
        lifecycle.finish(store, record, Decision(Status.FAILED, ""), token=claim.token, now=T0)
        assert 0 < client.ttl(store.record_key(record.id)) <= RETENTION_S
        assert 0 < client.ttl(store.dedupe_key(record)) <= RETENTION_S


class TestListing:
    def test_list_by_status_newest_first(self, store: RecordStore) -> None:
        """latest() lists newest first, per status or across all."""
        ids = [
            store.create(CancelRequest("v2", "ev", f"i{n}"), now=later(n))[0].id for n in range(3)
        ]
        listed = store.latest(Status.QUEUED, limit=2)
        assert [r.id for r in listed] == [ids[2], ids[1]]
        assert [r.id for r in store.latest(limit=10)] == ids[::-1]
