"""Deadline-first under faults (issue 19): a worker killed while it holds urgent records, and
Redis restarted mid-drain. Nothing is lost, each identifier is executed once, and the urgent
records still go before the fresh ones that were waiting with them."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adjustments.models import Status
from adjustments.producer import Producer
from adjustments.sandbox import SandboxServer
from tests.helpers import WorkerProcess, stop_worker, store_of, wait_until

from .conftest import (
    Deploy,
    RedisProcess,
    assert_all_done_once,
    fault_env,
    producer_for,
    start_fault_worker,
)

pytestmark = pytest.mark.slow
FRESH, URGENT = 200, 40


def closing_in(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=24) + timedelta(seconds=seconds)).isoformat()


def enqueue(producer: Producer, urgent_left_s: float) -> tuple[list[str], list[str]]:
    """FRESH records with 24 h left, then URGENT ones closing in ``urgent_left_s``."""
    fresh = producer.cancel_many(
        [{"event_name": "ev", "identifier": f"fresh_{i}"} for i in range(FRESH)]
    )
    received = closing_in(urgent_left_s)
    urgent = producer.cancel_many(
        [
            {"event_name": "ev", "identifier": f"urgent_{i}", "event_received_at": received}
            for i in range(URGENT)
        ]
    )
    return [str(i) for i in fresh.ids], [str(i) for i in urgent.ids]


def first_requests(sandbox: SandboxServer, prefix: str) -> dict[str, float]:
    """When the sandbox first heard of each identifier starting with ``prefix``."""
    return {
        ident: rows[0]["at"]
        for ident, rows in list(sandbox.logic.requests.items())
        if ident.startswith(prefix) and rows
    }


def accepted_at(sandbox: SandboxServer, prefix: str) -> dict[str, float]:
    """When the sandbox executed each identifier starting with ``prefix`` (its 200)."""
    return {
        ident: next(r["at"] for r in rows if r["http_status"] == 200)
        for ident, rows in list(sandbox.logic.requests.items())
        if ident.startswith(prefix) and any(r["http_status"] == 200 for r in rows)
    }


def assert_urgent_went_first(
    sandbox: SandboxServer, since: float, held: frozenset[str] = frozenset()
) -> None:
    """Every urgent record first sent after ``since`` was accepted before any fresh record
    first sent after ``since`` was even asked. The ``held`` identifiers (leased by a worker
    that died) are left out: :func:`assert_held_ones_came_back` covers them."""
    urgent_first = first_requests(sandbox, "urgent_")
    waiting = [i for i, at in urgent_first.items() if at >= since and i not in held]
    done = accepted_at(sandbox, "urgent_")
    fresh_after = [at for at in first_requests(sandbox, "fresh_").values() if at >= since]
    assert waiting, "no urgent record was still waiting: the fault came too late"
    if fresh_after:
        assert max(done[i] for i in waiting) <= min(fresh_after), "a fresh record went first"


def assert_held_ones_came_back(
    sandbox: SandboxServer, held: frozenset[str], deadline: float
) -> None:
    """The urgent records the dead worker had leased (mid-call, or waiting for the rate
    limiter) were sent again once their lease lapsed, and accepted before their window
    closed."""
    done = accepted_at(sandbox, "urgent_")
    for ident in held:
        assert done[ident] < deadline, f"{ident} was accepted after its window closed"


def test_a_worker_killed_while_holding_urgent_records(
    redis_proc: RedisProcess, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """kill -9 of a worker whose threads hold urgent records (some mid-call): reconciliation
    readies the mid-call ones again at their deadline once their lease lapses and publishes the
    messages the dead worker held; a new worker sends every urgent one that was waiting before
    any fresh one, and the held ones in time once their lease is over (until then nobody
    may tell a dead worker from a slow call), each executed once."""
    env = fault_env(
        redis_proc.url,
        fault_sandbox,
        tmp_path / "data",
        ADJUSTMENTS_RATE_LIMIT="40",
        ADJUSTMENTS_RATE_BURST="1",
        ADJUSTMENTS_LEASE_S="3",
        ADJUSTMENTS_STRIPE_TIMEOUT_S="2",
        ADJUSTMENTS_HEARTBEAT_S="0.5",
    )
    fault_sandbox.logic.configure({"latency_ms": 600})
    victim = start_fault_worker(env, tmp_path / "victim.log", concurrency=16)
    producer = producer_for(env)
    successor: WorkerProcess | None = None
    try:
        fresh, urgent = enqueue(producer, urgent_left_s=25)
        deadline = time.monotonic() + 25
        wait_until(lambda: producer.counts()["processing"] >= 8, what="calls in flight")
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        killed_at = time.monotonic()
        assert producer.counts()["processing"] >= 1  # killed mid-call
        held = frozenset(
            r.identifier
            for r in store_of(producer).get_many(urgent)
            if r.status is Status.PROCESSING
        )
        successor = start_fault_worker(env, tmp_path / "successor.log", concurrency=16)

        def urgent_done() -> bool:
            producer.operations.reconcile(grace_s=1)  # beat's job, every minute in production
            return all(r.status.terminal for r in store_of(producer).get_many(urgent))

        wait_until(urgent_done, timeout_s=40, what="the urgent records")
        assert_all_done_once(producer, urgent + fresh, fault_sandbox, timeout_s=60)
        assert_urgent_went_first(fault_sandbox, killed_at, held)
        assert_held_ones_came_back(fault_sandbox, held, deadline)
    finally:
        producer.close()
        if successor is not None:
            stop_worker(successor)
        if victim.process.poll() is None:
            victim.process.kill()


def test_redis_restarted_mid_drain_keeps_the_order(
    redis_proc: RedisProcess,
    fault_sandbox: SandboxServer,
    tmp_path: Path,
    deploy: Deploy,
) -> None:
    """Redis killed and started again while urgent records drain ahead of fresh ones: the
    worker rides it out, the ready set survives in the append-only file, and the urgent
    records still go first; nothing is lost, each executed once."""
    fault_sandbox.logic.configure({"latency_ms": 50})
    deployment = deploy(ADJUSTMENTS_RATE_LIMIT="20", ADJUSTMENTS_RATE_BURST="1")
    producer, worker = deployment.producer, deployment.worker
    fresh, urgent = enqueue(producer, urgent_left_s=30)
    wait_until(lambda: len(accepted_at(fault_sandbox, "urgent_")) >= 5, what="the first urgent")
    redis_proc.kill()
    time.sleep(1)
    redis_proc.start()
    restarted_at = time.monotonic()
    assert_all_done_once(producer, urgent + fresh, fault_sandbox, timeout_s=60, worker=worker)
    assert_urgent_went_first(fault_sandbox, restarted_at)
    assert worker.process.poll() is None, worker.log_text()[-2000:]
