"""Each platform's own rate budget (issue 21) on fakeredis: ready sets per platform, the
choice of the platform whose slot comes first, and cuts that stay on their own platform."""

from __future__ import annotations

from datetime import timedelta

import fakeredis
import pytest

from adjustments import keys
from adjustments.attempt import run_attempt
from adjustments.config import Durability, Platform, Settings
from adjustments.models import CancelRequest, Status
from adjustments.outcomes import Accepted, Outcome, Rejected
from adjustments.ratelimit import VOID, Budgets, RatePolicy, policies
from adjustments.retry import Policy
from adjustments.store import RecordStore

from .test_ratelimit import CLOCK, T0, server_clock  # noqa: F401  (the still server clock)

OK = Accepted("pending", 200, "req")
MARKED_429 = Rejected(429, "rate_limit_error", "rate_limit", "slow down", None, True,
                      rate_limited_reason="global-rate")  # fmt: skip


@pytest.fixture
def store(client: fakeredis.FakeRedis) -> RecordStore:
    return RecordStore(
        client,
        prefix="t",
        retention_s=3600,
        durability=Durability("memory"),
        platforms=("us", "eu"),
    )


def budgets(client: fakeredis.FakeRedis, **kw: float) -> Budgets:
    policy = RatePolicy(**{"limit_per_s": 10.0, "burst": 1.0, "max_sleep_s": 0.05, **kw})
    return Budgets.build(client, {"us": policy, "eu": policy}, prefix="t")


def make(store: RecordStore, platform: str, n: int, *, offset_s: float = 0) -> list[str]:
    received = T0 - timedelta(hours=23) + timedelta(seconds=offset_s)
    return [
        store.create(
            CancelRequest("v2", "ev", f"{platform}{i}", event_received_at=received,
                          platform=platform),
            now=T0,
        )[0].id
        for i in range(n)
    ]  # fmt: skip


def attempt(store: RecordStore, b: Budgets, record_id: str, send: dict[str, Outcome],
            sent: list[str]) -> Status | None:  # fmt: skip
    def wait(seconds: float) -> bool:
        CLOCK.sleep(seconds)
        return True

    def sender(record):  # type: ignore[no-untyped-def]
        sent.append(record.platform)
        return send[record.platform]

    return run_attempt(
        record_id,
        store=store,
        send=sender,
        policy=Policy(5, 1, 10),
        lease_s=30,
        limiter=b,
        clock=lambda: T0,
        wait=wait,
    ).status


def test_each_platform_waits_in_its_own_ready_set(store: RecordStore) -> None:
    """A record's platform names its ready set; a claim for a platform takes only its own,
    and a due retry goes back to its own platform's set."""
    us, eu = make(store, "us", 1), make(store, "eu", 1, offset_s=-60)  # eu's is more urgent
    assert store.client.zrange(keys.ready("t", "us"), 0, -1) == us
    assert store.client.zrange(keys.ready("t", "eu"), 0, -1) == eu
    assert store.client.zcard(keys.ready("t")) == 0
    assert set(store.ready.platforms(T0)) == {"us", "eu"}
    claim = store.claim_next(now=T0, lease_s=30, platform="us")
    assert claim.record is not None and claim.record.id == us[0]  # not eu's, though earlier
    assert store.claim_next(now=T0, lease_s=30, platform="us").kind == "empty"
    record = claim.record
    moved = store.transition(record, Status.RETRYING, now=T0, allowed_from={Status.PROCESSING},
                             token=claim.token, score_ms=0,
                             fields={"next_attempt_ms": 0})  # fmt: skip
    assert moved
    assert store.ready.platforms(T0)["us"] == 0  # a due retry counts, by its due time
    again = store.claim_next(now=T0, lease_s=30, platform="eu")  # promotes us's due retry
    assert again.record is not None and again.record.id == eu[0]
    assert store.client.zrange(keys.ready("t", "us"), 0, -1) == us


def test_the_platform_whose_slot_comes_first_is_chosen(
    store: RecordStore, client: fakeredis.FakeRedis
) -> None:
    """With us's slots taken for the next second, eu's free slot is chosen even though us
    holds the more urgent record; with both free, the more urgent record's platform."""
    b = budgets(client)
    make(store, "us", 1, offset_s=-60)
    make(store, "eu", 1)
    ready = store.ready.platforms(T0)
    assert b.choose(ready) == "us"  # both free now: the earliest deadline
    for _ in range(10):
        b.limiter("us").acquire()
    assert b.choose(ready) == "eu"


def test_a_cut_stays_on_its_platform(client: fakeredis.FakeRedis) -> None:
    """A 429 on eu cuts eu's rate only; a reservation on eu made before the cut is void
    (VOID: choose again), never silently replaced by a later eu slot."""
    b = budgets(client, max_sleep_s=0.0)
    b.acquire("eu")
    reserved = b.acquire("eu")
    assert reserved.slot is not None
    assert b.penalize("eu") == pytest.approx(7.0)
    assert b.limiter("us").current_rate() == 10.0
    assert b.limiter("eu").current_rate() == pytest.approx(7.0, abs=0.1)
    assert b.acquire("eu", reserved.slot).verdict == VOID
    assert client.hget(keys.rate_limiter("t", "us"), "cut_us") is None


def test_one_platforms_429s_do_not_slow_the_other(
    store: RecordStore, client: fakeredis.FakeRedis
) -> None:
    """eu answers marked 429s and is cut to its floor; us's records still go at us's full
    rate: 40 us sends at 10/s take 4 s of the server's clock, whatever eu does meanwhile."""
    b = budgets(client, cut_factor=0.1, cooldown_s=0.0, recovery_per_s=0.0, floor_per_s=0.5)
    us = make(store, "us", 40)
    eu = make(store, "eu", 40, offset_s=-60)  # eu's windows close first
    send: dict[str, Outcome] = {"us": OK, "eu": MARKED_429}
    sent: list[str] = []
    start = CLOCK.now
    for record_id in [*eu, *us][:80]:
        attempt(store, b, record_id, send, sent)
        if sent.count("us") == 40:
            break
    assert sent.count("us") == 40
    assert CLOCK.now - start == pytest.approx(40 / 10, abs=0.5)
    assert b.limiter("us").current_rate() == 10.0
    assert b.limiter("eu").current_rate() == 0.5
    assert sent.count("eu") <= 4  # at its floor, a few eu sends fit in those 4 s


def test_one_budget_for_a_single_key_deployment(client: fakeredis.FakeRedis) -> None:
    """No platforms: one limiter under the key it always had; a platform's own limit
    overrides the deployment's."""
    single = Budgets.build(client, policies(Settings(stripe_api_key="sk_test_x")), prefix="t")
    assert single.limiter(None).key == "t:ratelimit" and list(single.limiters) == [""]
    settings = Settings(
        rate_limit_per_s=25,
        platforms=(Platform("us", "sk_test_u"), Platform("eu", "sk_test_e", None, 5.0)),
    )
    chosen = policies(settings)
    assert chosen["us"].limit_per_s == 25 and chosen["eu"].limit_per_s == 5
    several = Budgets.build(client, chosen, prefix="t")
    assert several.limiter(None) is several.limiter("us")  # records without one: the first's
    assert several.limiter("eu").key == "t:ratelimit:eu"
