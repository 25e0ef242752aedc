"""The shared limiter on fakeredis (its Lua reads Redis's TIME), and how attempts use it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
from fakeredis.commands_mixins import server_mixin

from adjustments.attempt import run_attempt
from adjustments.models import CancelRequest, Record, Status
from adjustments.outcomes import Accepted, Outcome, Rejected
from adjustments.ratelimit import DENIED, GO, RESERVED, RatePolicy, SharedRateLimiter
from adjustments.retry import Policy
from adjustments.store import RecordStore

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class ServerClock:
    """The fake Redis server's clock, still unless advanced: the limiter reads TIME, so a
    test on a busy machine sees the same schedule as on an idle one."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


CLOCK = ServerClock()


@pytest.fixture(autouse=True)
def server_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    CLOCK.now = 1_800_000_000.0
    monkeypatch.setattr(server_mixin, "time", CLOCK)


def limiter(client: fakeredis.FakeRedis, **kw: float) -> SharedRateLimiter:
    return SharedRateLimiter(
        client, RatePolicy(**{"limit_per_s": 10.0, "burst": 2.0, **kw}), prefix="t"
    )


class TestLimiter:
    def test_burst_then_spacing(self, client: fakeredis.FakeRedis) -> None:
        """The first `burst` requests go at once; then each waits one interval more."""
        lim = limiter(client, max_sleep_s=1.0)
        grants = [lim.acquire() for _ in range(5)]
        assert all(g.go for g in grants)
        assert [round(g.wait_s, 1) for g in grants] == [0, 0, 0.1, 0.2, 0.3]

    def test_far_slots_are_reserved_then_denied_past_the_horizon(
        self, client: fakeredis.FakeRedis
    ) -> None:
        """Near slots go, far ones are reserved, and beyond the horizon callers are denied."""
        lim = limiter(client, max_sleep_s=0.15, horizon_s=0.45)
        grants = [lim.acquire() for _ in range(7)]
        assert [g.verdict for g in grants] == [GO, GO, GO, RESERVED, RESERVED, RESERVED, DENIED]
        assert grants[3].slot is not None and grants[3].wait_s == pytest.approx(0.2, abs=0.02)
        assert grants[-1].slot is None

    def test_penalize_cuts_once_per_cooldown(self, client: fakeredis.FakeRedis) -> None:
        """A burst of 429s cuts the shared rate once per cooldown."""
        lim = limiter(client, cut_factor=0.5, cooldown_s=60)
        assert lim.penalize() == 5.0
        assert lim.penalize() == 5.0  # same cooldown: a burst of 429s is one signal
        assert lim.current_rate() == pytest.approx(5.0, abs=0.1)
        assert lim.acquire().rate_per_s == pytest.approx(5.0, abs=0.1)

    def test_rate_recovers_linearly_never_above_the_limit(
        self, client: fakeredis.FakeRedis
    ) -> None:
        """After a cut the rate climbs back linearly and stops at the limit."""
        lim = limiter(client, recovery_per_s=1.0)
        seconds, micros = client.time()
        now_us = seconds * 1_000_000 + micros
        client.hset(lim.key, mapping={"rate": "4", "cut_us": str(now_us - 3_000_000)})
        assert lim.current_rate() == pytest.approx(7.0, abs=0.1)
        client.hset(lim.key, mapping={"rate": "4", "cut_us": str(now_us - 60_000_000)})
        assert lim.current_rate() == 10.0

    def test_disabled_with_zero(self, client: fakeredis.FakeRedis) -> None:
        """A limit of 0 disables the limiter: every call goes."""
        lim = limiter(client, limit_per_s=0)
        assert not lim.enabled and all(lim.acquire().go for _ in range(100))

    def test_reservations_are_redeemed_early_late_and_void_after_a_cut(
        self, client: fakeredis.FakeRedis
    ) -> None:
        """A reservation is honoured when its holder comes back, even late, yet sends stay
        spaced; one made before a cut of the rate is void and the caller queues again."""
        lim = limiter(client, limit_per_s=10.0, burst=1.0, max_sleep_s=0.05, horizon_s=60)
        grants = [lim.acquire() for _ in range(4)]  # go now; slots 0.1, 0.2, 0.3 s ahead
        assert [g.verdict for g in grants] == [GO, RESERVED, RESERVED, RESERVED]
        early = lim.acquire(reserved=grants[3].slot)
        assert early.verdict == RESERVED and early.wait_s == pytest.approx(0.3, abs=0.03)
        CLOCK.sleep(0.2)
        seconds, micros = client.time()
        overdue = (seconds * 1_000_000 + micros - 5_000_000, 1)  # its holder is 5 s late
        assert lim.acquire(reserved=overdue).go  # late: goes now (its slot was never used)
        also_late = lim.acquire(reserved=overdue)
        assert also_late.verdict == RESERVED  # ...but two late ones are still spaced
        assert also_late.wait_s == pytest.approx(0.1, abs=0.02)
        lim.penalize()  # restarts the schedule; reservations made before it are void
        assert lim.acquire(reserved=grants[1].slot).slot != grants[1].slot


class TestAttemptsUseTheLimiter:
    def run(
        self,
        store: RecordStore,
        lim: SharedRateLimiter,
        record_id: str,
        outcome: Outcome,
        slept: list[float],
        **kw: Any,
    ) -> Any:
        def wait(seconds: float) -> bool:
            slept.append(seconds)
            CLOCK.sleep(seconds)  # the limiter keeps time on the (fake) Redis server's clock
            return True

        return run_attempt(
            record_id,
            store=store,
            send=lambda _r: outcome,
            policy=Policy(5, 1, 10),
            lease_s=30,
            limiter=lim,
            clock=lambda: T0,
            **{"wait": wait, **kw},
        )

    def test_a_long_wait_holds_the_message_until_its_reserved_slot(
        self, store: RecordStore, client: fakeredis.FakeRedis
    ) -> None:
        """Backpressure: past max_sleep_s the thread keeps its message and waits for the slot
        it reserved, then sends it; nothing is re-published or deferred."""
        lim = limiter(client, limit_per_s=4.0, burst=1.0, max_sleep_s=0.1)
        ok = Accepted("pending", 200, "req")
        ids = [store.create(CancelRequest("v2", "ev", f"l{n}"), now=T0)[0].id for n in range(3)]
        slept: list[float] = []
        results = [self.run(store, lim, record_id, ok, slept) for record_id in ids]
        assert all(r.status is Status.PENDING and r.retry_in_s is None for r in results)
        assert sum(slept) == pytest.approx(0.5, abs=0.1)  # three sends at 4/s span 0.5 s
        assert max(slept) > 0.1  # a reserved slot was waited for, not deferred

    def test_a_stopping_worker_gives_the_message_back(
        self, store: RecordStore, client: fakeredis.FakeRedis
    ) -> None:
        """Shutdown while waiting for a slot: nothing claimed or sent, the message goes back,
        and the record stays ready for the next message."""
        lim = limiter(client, limit_per_s=1.0, burst=1.0, max_sleep_s=0.1)
        ok = Accepted("pending", 200, "req")
        first, second = (
            store.create(CancelRequest("v2", "ev", f"s{n}"), now=T0)[0].id for n in range(2)
        )
        assert self.run(store, lim, first, ok, []).status is Status.PENDING
        left = store.ready.ids(10)  # the two share a deadline: either may have gone first
        assert len(left) == 1 and left[0] in (first, second)
        result = self.run(store, lim, second, ok, [], wait=lambda _s: False)
        assert result.requeue and result.status is None
        record = store.get(left[0])
        assert record.status is Status.QUEUED and record.attempts == 0
        assert store.ready.ids(10) == left

    @pytest.mark.parametrize(
        ("reason", "rate_after"),
        [("endpoint-rate", 14.0), ("global-concurrency", 14.0), (None, 20.0)],
        ids=["marked-rate", "marked-concurrency", "unmarked-lock-timeout"],
    )
    def test_only_a_rate_limiters_429_cuts_the_shared_rate(
        self,
        store: RecordStore,
        client: fakeredis.FakeRedis,
        reason: str | None,
        rate_after: float,
    ) -> None:
        """A 429 marked with Stripe-Rate-Limited-Reason cuts the shared rate and the reason is
        recorded on the attempt; an unmarked 429 (lock_timeout) is only retried."""
        lim = limiter(client, limit_per_s=20.0)
        record: Record = store.create(CancelRequest("v2", "ev", "busy"), now=T0)[0]
        answer = Rejected(
            429,
            "invalid_request_error",
            "rate_limit" if reason else "lock_timeout",
            "busy",
            rate_limited_reason=reason,
        )
        result = self.run(store, lim, record.id, answer, [])
        assert result.status is Status.RETRYING
        assert lim.current_rate() == pytest.approx(rate_after, abs=0.2)
        entry = store.get(record.id, with_history=True).history[-1]
        assert entry.get("rate_limited_reason") == reason
