"""What `make chaos` found, each pinned by the fault sequence that exposed it, on a real Redis.

1. (seed 11, 5 minutes) A worker's "pending" was lost in a failover (a worker's writes
   replicate asynchronously); on the new master the record was still ``processing``, its
   lease lapsed, its window closed, it expired and was compensated: Stripe had cancelled the
   event *and* taken the negative usage, a double correction. Now a record that expires while
   ``processing`` says its outcome is unknown, and such a record is never compensated (the
   reason says to replay it, which asks Stripe with the same idempotency key).
2. The same failover could also lose the claim itself, so that nothing at all said an
   attempt was made. With ADJUSTMENTS_DURABILITY=replicas:N a worker now calls Stripe only
   once its claim is on the connected replicas.
3. The nemesis's clock skew: a worker whose clock ran behind judged windows by its own clock
   and would send a record whose window had closed (pinned here before a soak hit it). A
   worker now goes by the Redis server's clock when that is later than its own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from adjustments import compensation
from adjustments.attempt import run_attempt
from adjustments.config import Durability
from adjustments.errors import ClaimNotDurable
from adjustments.models import CancelRequest, Record, Status
from adjustments.outcomes import Accepted
from adjustments.reconcile import reconcile
from adjustments.replay import ReplayFilter
from adjustments.retry import Policy
from adjustments.sandbox import SandboxServer
from adjustments.store import RecordStore
from benchmarks.harness import ROOT
from tests.helpers import start_celery_process, stop_worker, wait_until

from .conftest import (
    RedisProcess,
    assert_all_done_once,
    fault_env,
    producer_for,
    start_fault_worker,
)

EVENT = {"payload": {"stripe_customer_id": "cus_A", "value": "5"}}


def closing(store: RecordStore, name: str, now: datetime, left_s: float) -> Record:
    received = now - timedelta(hours=24) + timedelta(seconds=left_s)
    event = {**EVENT, "timestamp": received.isoformat()}
    req = CancelRequest.build(
        "api_sum", name, api="v2", event_received_at=received, original_event=event, now=now
    )
    return store.create(req, now=now)[0]


def recorder(into: list[str]) -> Callable[[str], bool]:
    def publish(record_id: str) -> bool:
        into.append(record_id)
        return True

    return publish


def test_an_outcome_lost_mid_call_is_never_compensated(redis_proc: RedisProcess) -> None:
    """Claimed, sent (Stripe executed it), its outcome never written (lost in a failover, or
    the worker killed mid-call); the window closes: reconciliation expires it saying its
    outcome is unknown, and compensation refuses it with the reason instead of sending a
    negative event."""
    store = RecordStore(
        redis_proc.client(), prefix="lost", retention_s=3600, durability=Durability("memory")
    )
    t0 = datetime.now(UTC)
    record = closing(store, "lost_1", t0, left_s=5)
    claim = store.claim_next(now=t0, lease_s=2)
    assert claim.record is not None and claim.record.id == record.id  # ...and Stripe executes
    later = t0 + timedelta(seconds=10)  # the lease and the window have both ended
    begun: list[str] = []
    report = reconcile(
        store=store,
        publish=recorder(begun),
        now=later,
        grace_s=0,
        compensation_timestamp="original",
    )
    found = store.get(record.id)
    assert report.expired == 1 and found.status is Status.EXPIRED
    assert found.key_outcome == "unknown"
    assert begun == [] and found.phase == ""
    assert found.compensation_error == compensation.IN_DOUBT
    outcomes = [h["outcome"] for h in store.get(record.id, with_history=True).history]
    assert outcomes == ["window_closed", "not_compensated"]
    # An operator's compensation run skips it too, with the reason.
    plan = compensation.run(
        store,
        lambda _i: True,
        ReplayFilter(status=Status.EXPIRED),
        now=later,
        timestamp_mode="original",
        dry_run=True,
        meters=None,
    )
    assert plan.plan.records == [] and plan.plan.skipped


def test_a_window_closed_before_any_call_is_still_compensated(redis_proc: RedisProcess) -> None:
    """The other side of the rule: a record that waited (never claimed) until its window
    closed is surely not cancelled, and is compensated as before."""
    store = RecordStore(
        redis_proc.client(), prefix="waited", retention_s=3600, durability=Durability("memory")
    )
    t0 = datetime.now(UTC)
    record = closing(store, "waited_1", t0, left_s=1)
    later = t0 + timedelta(seconds=5)
    begun: list[str] = []
    reconcile(
        store=store,
        publish=recorder(begun),
        now=later,
        grace_s=0,
        compensation_timestamp="original",
    )
    found = store.get(record.id)
    assert begun == [record.id] and found.phase == "compensate" and found.key_outcome == ""


def replicas(client: redis.Redis) -> int:
    return int(client.info("replication")["connected_slaves"])


def test_no_call_before_the_claim_is_on_a_replica(redis_proc: RedisProcess, tmp_path: Path) -> None:
    """ADJUSTMENTS_DURABILITY=replicas:1 with the replica connected but silent (stopped),
    then with no replica at all (as right after a failover): the claim is not confirmed, so
    nothing is sent and the attempt ends with ClaimNotDurable (the task retries it later).
    With the replica back, the call goes."""
    replica = RedisProcess(
        tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(redis_proc.port)]
    ).start()
    client = redis_proc.client()
    wait_until(lambda: replicas(client) == 1, what="the replica")
    with replica.client() as c:
        wait_until(lambda: c.info("replication")["master_link_status"] == "up", what="sync")
    store = RecordStore(
        client,
        prefix="nd",
        retention_s=3600,
        durability=Durability.parse("replicas:1"),
        durability_timeout_ms=300,
    )
    t0 = datetime.now(UTC)
    plain = RecordStore(
        client, prefix="nd", retention_s=3600, durability=Durability("memory")
    )  # the producer's part
    first, second, third = (
        plain.create(CancelRequest.build("ev", f"nd_{i}", api="v2", now=t0), now=t0)[0]
        for i in range(3)
    )
    sent: list[str] = []

    def send(r: Record) -> Accepted:
        sent.append(r.id)
        return Accepted("pending", 200, "req")

    def attempt(record_id: str) -> None:
        run_attempt(record_id, store=store, send=send, policy=Policy(3, 0.01, 0.1), lease_s=30)

    try:
        replica.pause()
        with pytest.raises(ClaimNotDurable, match="nothing is sent"):
            attempt(first.id)
        assert sent == []
    finally:
        replica.stop()
    wait_until(lambda: replicas(client) == 0, what="the replica gone")
    with pytest.raises(ClaimNotDurable):
        attempt(second.id)
    assert sent == []
    replica.start()
    with replica.client() as c:
        wait_until(lambda: c.info("replication")["master_link_status"] == "up", what="sync")
    try:
        attempt(third.id)  # (the first two wait for their leases: they are processing)
    finally:
        replica.stop()
    assert sent == [third.id]


def test_a_worker_whose_clock_is_behind_sends_nothing_past_its_window(
    redis_proc: RedisProcess, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Clock skew (the soak's nemesis): a record whose window closed while no worker ran,
    then a worker whose clock is 30 s behind. It goes by the Redis server's clock when that
    is later than its own, so the record expires unsent instead of being sent 30 s late."""
    env = fault_env(
        redis_proc.url, fault_sandbox, tmp_path / "data", CHAOS_SKEW_S="-30", PYTHONPATH=str(ROOT)
    )
    producer = producer_for(env)
    received = datetime.now(UTC) - timedelta(hours=24) + timedelta(seconds=1)
    record = producer.cancel("ev", "skewed_1", api="v2", event_received_at=received)
    time.sleep(2)  # its window closes with no worker running
    argv = [sys.executable, "-m", "benchmarks.chaos_skew", "worker", "--concurrency", "2"]
    worker = start_celery_process(argv, env, tmp_path / "worker.log", cwd=ROOT)
    try:
        wait_until(lambda: producer.get(record.id).status.terminal, what="the record to end")
        assert producer.get(record.id).status is Status.EXPIRED
        assert fault_sandbox.logic.requests.get("skewed_1") is None  # never sent
    finally:
        stop_worker(worker)
        producer.close()


def test_the_server_clock_corrects_a_clock_behind_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """ServerClock: 30 s behind the server gives the server's time; ahead keeps its own."""
    import fakeredis

    from adjustments import attempt
    from adjustments.runtime import ServerClock

    local = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    monkeypatch.setattr(attempt, "utcnow", lambda: local)
    client = fakeredis.FakeRedis()
    monkeypatch.setattr(client, "time", lambda: (int(local.timestamp()) + 30, 0))
    assert ServerClock(client)() == local + timedelta(seconds=30)
    monkeypatch.setattr(client, "time", lambda: (int(local.timestamp()) - 30, 0))
    assert ServerClock(client)() == local


def test_retried_attempts_leave_the_workers_in_flight_count(
    redis_proc: RedisProcess, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """A worker whose claims are never confirmed (replicas:1, no replica) retries every
    attempt: its heartbeat's in-flight count must fall back to 0 between them, or
    reconciliation would take a lost message for one on its way (the soak's finding: it only
    grew). A worker that can confirm then finishes every request, each executed once, and the
    first one stopped cleanly (exit 0)."""
    waiting = fault_env(
        redis_proc.url, fault_sandbox, tmp_path / "data",
        ADJUSTMENTS_DURABILITY="replicas:1", ADJUSTMENTS_DURABILITY_TIMEOUT_MS="200",
        ADJUSTMENTS_LEASE_S="3", ADJUSTMENTS_STRIPE_TIMEOUT_S="1", ADJUSTMENTS_HEARTBEAT_S="0.5",
    )  # fmt: skip
    able = {**waiting, "ADJUSTMENTS_DURABILITY": "memory"}
    producer = producer_for(able)
    stuck = start_fault_worker(waiting, tmp_path / "stuck.log", concurrency=4)
    successor = None
    try:
        ids = [producer.cancel("ev", f"unconfirmed_{n}").id for n in range(6)]

        def retried() -> int:
            return stuck.log_text().count('"event": "cancellation.redis_unavailable"')

        wait_until(lambda: retried() >= len(ids), what="every attempt to be retried")
        assert fault_sandbox.logic.requests == {}  # nothing was sent without a replica
        wait_until(
            lambda: [w.in_flight for w in producer.readouts.workers()] == [0],
            timeout_s=10,
            what="the in-flight count back at 0 between retries",
        )
        stop_worker(stuck)
        assert stuck.process.returncode == 0
        successor = start_fault_worker(able, tmp_path / "successor.log", concurrency=4)

        def settled() -> bool:
            producer.operations.reconcile(grace_s=0)  # beat's job: the leases have lapsed
            return all(producer.get(i).status.terminal for i in ids)

        wait_until(settled, timeout_s=45, what="every request to settle")
        assert_all_done_once(producer, ids, fault_sandbox, worker=successor)
    finally:
        producer.close()
        stop_worker(stuck)
        if successor is not None:
            stop_worker(successor)
