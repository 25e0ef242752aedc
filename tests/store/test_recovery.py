"""History, replay, reconciliation and bulk writes on fakeredis."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from adjustments import keys, lifecycle
from adjustments.errors import InvalidInput
from adjustments.models import CancelRequest, ErrorInfo, Record, Status
from adjustments.outcomes import Rejected
from adjustments.reconcile import (
    LOCK_MARGIN_S,
    LOCK_NAME,
    ORPHANS_LOCK,
    reconcile,
    republish_orphans,
    watch_for_orphans,
)
from adjustments.replay import ReplayFilter, replay
from adjustments.retry import KEY_REJECTED, KEY_UNKNOWN, Decision
from adjustments.store import HISTORY_CAP, RecordStore

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def failed(
    store: RecordStore,
    ident: str,
    *,
    code: str = "parameter_invalid",
    when: datetime = T0,
    event: str = "ev",
    key_outcome: str = KEY_REJECTED,
) -> Record:
    record, _ = store.create(CancelRequest("v2", event, ident), now=when)
    claim = store.claim(record.id, now=when, lease_s=30)
    lifecycle.finish(
        store,
        record,
        Decision(
            Status.FAILED, "permanent", error=ErrorInfo("invalid_request_error", code, "bad", 400)
        ),
        Rejected(400, "invalid_request_error", code, "bad"),
        token=claim.token,
        now=when,
        key_outcome=key_outcome,
    )
    return store.get(record.id)


class Published(list[str]):
    def __call__(self, record_id: str) -> bool:
        self.append(record_id)
        return True


class TestHistory:
    def test_attempts_are_recorded_and_capped(self, store: RecordStore) -> None:
        """Each attempt adds (time, outcome, http status, error code, generation); capped."""
        record, _ = store.create(CancelRequest("v1", "ev", "h"), now=T0)
        for n in range(HISTORY_CAP + 5):
            claim = store.claim(record.id, now=at(n * 10), lease_s=5)
            assert claim.record is not None
            lifecycle.finish(
                store,
                claim.record,
                Decision(
                    Status.RETRYING,
                    "retryable",
                    retry_in_s=0,
                    error=ErrorInfo("api_error", "x", "down", 503),
                ),
                Rejected(503, "api_error", "x", "down"),
                token=claim.token,
                now=at(n * 10),
            )
        history = store.get(record.id, with_history=True).history
        assert len(history) == HISTORY_CAP
        assert history[-1] == {
            "at": "2026-11-21T12:04:00.000Z",
            "attempt": HISTORY_CAP + 5,
            "outcome": "retryable",
            "status": "retrying",
            "http_status": 503,
            "error_code": "x",
            "generation": 0,
        }


class TestReplay:
    def test_replay_requeues_with_next_generation(self, store: RecordStore) -> None:
        """Replaying a failed record queues it with the next key generation and a fresh budget."""
        record = failed(store, "r1")
        published = Published()
        report = replay(store, published, ReplayFilter(ids=[record.id]), now=at(60))
        assert report.replayed == [record.id] and published == [record.id]
        got = store.get(record.id, with_history=True)
        assert (got.status, got.generation, got.attempts, got.replays) == (Status.QUEUED, 1, 0, 1)
        assert got.idempotency_key.endswith("-g1") and got.history[-1]["outcome"] == "replayed"
        assert store.client.ttl(store.record_key(record.id)) == -1  # live again: no expiry

    def test_replay_after_an_unknown_outcome_reuses_the_key(self, store: RecordStore) -> None:
        """A record whose last key got no answer (maybe executed) is replayed under that same
        key, so Stripe replays what happened instead of executing a second time."""
        record = failed(store, "r-unknown", code="rate_limit", key_outcome=KEY_UNKNOWN)
        replay(store, Published(), ReplayFilter(ids=[record.id]), now=at(60))
        got = store.get(record.id)
        assert (got.status, got.generation) == (Status.QUEUED, 0)
        assert got.idempotency_key == record.idempotency_key and got.key_outcome == KEY_UNKNOWN

    def test_second_replay_in_a_row_enqueues_once(self, store: RecordStore) -> None:
        """A second replay of the same record is skipped: it is enqueued once."""
        record = failed(store, "r2")
        published = Published()
        replay(store, published, ReplayFilter(ids=[record.id]), now=at(60))
        again = replay(store, published, ReplayFilter(ids=[record.id]), now=at(61))
        assert published == [record.id] and again.replayed == []
        assert again.skipped == [(record.id, "status is queued, not failed")]

    def test_filters(self, store: RecordStore) -> None:
        """--event-name, --error-code, --since/--until and --limit narrow the selection."""
        a = failed(store, "a", code="c1", when=at(10), event="e1")
        b = failed(store, "b", code="c2", when=at(20), event="e1")
        c = failed(store, "c", code="c1", when=at(30), event="e2")

        def pick(**kw: object) -> list[str]:
            flt = ReplayFilter(**kw)  # type: ignore[arg-type]
            return [
                r.id for r in replay(store, Published(), flt, now=at(99), dry_run=True).selected
            ]

        assert pick() == [c.id, b.id, a.id]
        assert pick(event_name="e1") == [b.id, a.id]
        assert pick(error_code="c1") == [c.id, a.id]
        assert pick(since=at(15), until=at(25)) == [b.id]
        assert pick(limit=1) == [c.id]

    def test_dry_run_changes_nothing(self, store: RecordStore) -> None:
        """A dry run selects records and changes none."""
        record = failed(store, "d")
        report = replay(store, Published(), ReplayFilter(), now=at(5), dry_run=True)
        assert [r.id for r in report.selected] == [record.id] and report.replayed == []
        assert store.get(record.id).status is Status.FAILED

    def test_expired_needs_force(self, store: RecordStore) -> None:
        """Expired records are replayed only with force."""
        old = CancelRequest("v1", "ev", "old", None, T0 - timedelta(hours=25))
        record, _ = store.create(old, now=T0)
        lifecycle.expire_window(store, record, now=T0)
        with pytest.raises(InvalidInput, match="force"):
            replay(store, Published(), ReplayFilter(status=Status.EXPIRED), now=at(1))
        skipped = replay(store, Published(), ReplayFilter(ids=[record.id]), now=at(1))
        assert skipped.replayed == [] and "force" in skipped.skipped[0][1]
        forced = replay(store, Published(), ReplayFilter(ids=[record.id]), now=at(1), force=True)
        assert forced.replayed == [record.id]
        # forced: the worker calls Stripe (and records its answer) instead of expiring it again
        assert store.claim(record.id, now=at(2), lease_s=5).kind == "claimed"


class TestReconcile:
    def run(  # type: ignore[no-untyped-def]
        self, store: RecordStore, now: datetime, published: Published | None = None
    ):
        sent = published if published is not None else Published()
        # The messages on their way: here, exactly those the run itself published.
        return reconcile(store=store, publish=sent, now=now, grace_s=60, tickets=lambda: len(sent))

    def test_repairs_each_kind_of_stuck_record(self, store: RecordStore) -> None:
        """Reconciliation republishes lapsed processing and overdue retrying records, makes
        the lapsed one ready again, publishes the messages the live records lack (counted,
        not paired), and expires closed windows."""
        store.create(CancelRequest("v2", "ev", "q"), now=T0)
        fresh, _ = store.create(CancelRequest("v2", "ev", "fresh"), now=at(3680))
        dead, _ = store.create(CancelRequest("v2", "ev", "p"), now=T0)
        store.claim(dead.id, now=T0, lease_s=30)  # the worker died holding the lease
        late, _ = store.create(CancelRequest("v2", "ev", "r"), now=T0)
        claim = store.claim(late.id, now=T0, lease_s=30)
        retry = Decision(Status.RETRYING, "", retry_in_s=10)
        lifecycle.finish(store, late, retry, token=claim.token, now=T0)
        old, _ = store.create(
            CancelRequest("v2", "ev", "o", None, T0 - timedelta(hours=23)), now=T0
        )
        published = Published()
        with capture_logs() as logs:
            report = self.run(store, at(3700), published)
        # queued (2) + processing (1) records, 2 messages published for dead and late: 1 more
        assert (
            report.republished_queued,
            report.republished_processing,
            report.republished_retrying,
            report.expired,
        ) == (1, 1, 1, 1)
        assert published[:2] == [dead.id, late.id] and len(published) == 3
        assert store.get(old.id).status is Status.EXPIRED
        assert store.get(fresh.id).status is Status.QUEUED
        assert dead.id in store.ready.ids(10)  # the next claim takes it over
        lines = [e for e in logs if e["event"] == "reconcile.run"]
        assert len(lines) == 1 and lines[0]["expired"] == 1
        # the same records are not republished again on the very next run
        again = self.run(store, at(3701), published)
        assert (again.republished_queued, again.republished_processing) == (0, 0)

    def test_live_lease_is_left_alone_even_past_the_window(self, store: RecordStore) -> None:
        """A worker mid-call past the deadline finishes with Stripe's answer; we don't expire it."""
        req = CancelRequest(
            "v2", "ev", "mid", None, T0 - timedelta(hours=24) + timedelta(seconds=5)
        )
        record, _ = store.create(req, now=T0)
        store.claim(record.id, now=T0, lease_s=60)
        report = self.run(store, at(10))
        assert report.expired == 0 and store.get(record.id).status is Status.PROCESSING

    def test_only_one_run_at_a_time(self, store: RecordStore) -> None:
        """A reconciliation run holding the lock keeps a second from running."""
        lock = store.try_lock(LOCK_NAME, ttl_s=30)
        assert lock is not None
        assert self.run(store, T0).ran is False
        store.unlock(lock)
        assert self.run(store, T0).ran is True

    def test_a_run_that_dies_holding_the_lock_holds_back_repairs_briefly(
        self, store: RecordStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A worker killed mid-run never releases the run lock (the chaos soak found one that
        stopped reconciliation for five minutes): the lock lasts the run's settle pause and
        half a minute, so repairs resume soon after."""
        monkeypatch.setattr(store, "unlock", lambda lock: None)  # the process died in the run
        assert self.run(store, T0).ran is True
        left_ms = store.client.pttl(keys.lock("t", LOCK_NAME))
        assert 0 < left_ms <= (0.3 + LOCK_MARGIN_S) * 1000
        assert self.run(store, T0).ran is False  # until then, runs are skipped

    def test_concurrent_runs_one_wins(self, store: RecordStore) -> None:
        """Two runs overlapping in time: the second finds the lock and does nothing."""
        store.create(CancelRequest("v2", "ev", "c"), now=T0)
        inside, second_done = threading.Event(), threading.Event()
        first: list[bool] = []

        def slow_publish(record_id: str) -> bool:
            inside.set()
            second_done.wait(timeout=10)
            return True

        thread = threading.Thread(
            target=lambda: first.append(
                reconcile(
                    store=store, publish=slow_publish, now=at(3600), grace_s=60, tickets=lambda: 0
                ).ran
            )
        )
        thread.start()
        assert inside.wait(timeout=10)
        second = self.run(store, at(3600))
        second_done.set()
        thread.join(timeout=10)
        assert first == [True] and second.ran is False
        assert store.client.get(keys.lock("t", LOCK_NAME)) is None  # released after the run


class TestCreateMany:
    def test_pipelined_creates_dedupe(self, store: RecordStore) -> None:
        """Pipelined creates dedupe within one batch."""
        reqs = [CancelRequest("v1", "ev", f"m{n % 3}") for n in range(5)]
        out = store.create_many(reqs, now=T0)
        assert [created for _, created in out] == [True, True, True, False, False]
        assert out[3][0] == out[0][0] and store.counts()["queued"] == 3


class TestOrphans:
    """After a lost connection: the messages that vanished with it are published again."""

    def test_the_missing_messages_are_published_for_the_most_urgent(
        self, store: RecordStore
    ) -> None:
        """Three queued records and two messages on their way: one more is published,
        named for the record whose window closes first."""
        ids = [store.create(CancelRequest("v2", "ev", f"o{n}"), now=at(n))[0].id for n in range(3)]
        published = Published()
        sent = republish_orphans(store=store, publish=published, tickets=lambda: 2)
        assert (sent, published) == (1, [ids[0]])

    def test_a_loss_hidden_by_busy_workers_is_found_once_they_are_quiet(
        self, store: RecordStore
    ) -> None:
        """Busy workers count messages they have finished since their last heartbeat, which
        hides a lost one (a worker's one look after an outage once missed it and the record
        stayed queued): the watch looks again until a look taken while nothing is on its way,
        and publishes the missing message then, once."""
        record, _ = store.create(CancelRequest("v2", "ev", "hidden"), now=at(0))
        counts = iter([3, 3, 3, 3, 3, 3, 0, 0, 0, 0])  # busy for three looks, then quiet
        published = Published()
        sent = watch_for_orphans(
            store=store, publish=published, tickets=lambda: next(counts), settle_s=0,
            sleep=lambda _: None,
        )  # fmt: skip
        assert (sent, published) == (1, [record.id])

    def test_the_watch_stops_when_nothing_is_missing(self, store: RecordStore) -> None:
        """Quiet and nothing lost: one look, nothing published."""
        published = Published()
        looks: list[int] = []

        def tickets() -> int:
            looks.append(0)
            return 0

        sent = watch_for_orphans(
            store=store, publish=published, tickets=tickets, settle_s=0, sleep=lambda _: None
        )
        assert (sent, published) == (0, []) and len(looks) <= 3

    def test_enough_messages_means_nothing_is_published(self, store: RecordStore) -> None:
        """As many messages on their way as live records: nothing to repair."""
        store.create(CancelRequest("v2", "ev", "e0"), now=at(0))
        published = Published()
        assert republish_orphans(store=store, publish=published, tickets=lambda: 1) == 0
        assert published == []

    def test_one_worker_at_a_time(self, store: RecordStore) -> None:
        """While another worker holds the lock, nothing is published twice."""
        store.create(CancelRequest("v2", "ev", "l0"), now=at(0))
        lock = store.try_lock(ORPHANS_LOCK, ttl_s=10)
        assert lock is not None
        assert republish_orphans(store=store, publish=Published(), tickets=lambda: 0) == 0
