"""Sentinel failover on loopback: one master, one replica, one sentinel. The master is killed
under a busy worker; the sentinel promotes the replica and everything carries on there."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from adjustments.embedded import free_port, redis_binary
from adjustments.reconcile import reconcile
from adjustments.sandbox import SandboxServer
from tests.helpers import store_of, wait_until

from .conftest import (
    Deploy,
    RedisProcess,
    assert_all_done_once,
)

pytestmark = pytest.mark.slow
MASTER = "adjmaster"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess, int]]:
    master = RedisProcess(tmp_path / "master").start()
    replica = RedisProcess(
        tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(master.port)]
    ).start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
    )
    sentinel = subprocess.Popen(
        [redis_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL
    )

    def synced() -> bool:
        with replica.client() as c:
            return bool(c.info("replication").get("master_link_status") == "up")

    wait_until(synced, timeout_s=20, what="the replica to sync")
    try:
        yield master, replica, port
    finally:
        sentinel.kill()
        sentinel.wait()
        master.stop()
        replica.stop()


def test_failover_under_a_busy_worker(
    cluster: tuple[RedisProcess, RedisProcess, int],
    fault_sandbox: SandboxServer,
    tmp_path: Path,
    deploy: Deploy,
) -> None:
    """With ADJUSTMENTS_DURABILITY=replicas:1 every accepted request is on the replica before
    cancel() returns. Kill -9 the master mid-work: the worker follows the sentinel to the new
    master, and every accepted request ends terminal, each executed once. (A worker's own
    writes replicate asynchronously: one lost in the failover is repaired by reconciliation,
    which this test runs with a short grace. With replicas:1 a worker's claim must reach a
    replica before it calls Stripe, so the restarted old master, a replica again, is needed
    for the work to go on.)"""
    master, replica, sentinel_port = cluster
    fault_sandbox.logic.configure({"latency_ms": 300})
    deployment = deploy(
        f"sentinel://127.0.0.1:{sentinel_port}/0",
        ADJUSTMENTS_SENTINEL_MASTER=MASTER,
        ADJUSTMENTS_DURABILITY="replicas:1",
        ADJUSTMENTS_LEASE_S="6",
    )
    producer, worker = deployment.producer, deployment.worker
    ids = [producer.cancel("ev", f"failover_{n}").id for n in range(60)]
    wait_until(lambda: producer.counts()["processing"] >= 8, what="calls in flight")
    master.kill()

    def promoted() -> bool:
        with replica.client() as c:
            return bool(c.info("replication").get("role") == "master")

    wait_until(promoted, timeout_s=30, what="the sentinel to promote the replica")
    # The old master comes back and the sentinel makes it the new master's replica: with
    # replicas:1 workers send again only then (a claim must be on a replica first).
    master.start()

    def repaired() -> bool:
        try:
            reconcile(
                store=store_of(producer),
                publish=producer.publish,
                now=datetime.now(UTC),
                grace_s=5,
            )
            return all(r.status.terminal for r in store_of(producer).get_many(ids))
        except redis.RedisError:
            return False

    wait_until(repaired, timeout_s=60, what="every request to settle after the failover")
    assert_all_done_once(producer, ids, fault_sandbox, worker=worker)
    assert worker.process.poll() is None
