"""Redis goes away under a busy worker (crash, SHUTDOWN, refused connections, a stall) and
comes back: the worker stays up, resumes by itself, and nothing is lost or executed twice."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from adjustments.sandbox import SandboxServer
from tests.helpers import stop_worker, wait_until

from .conftest import (
    Deploy,
    RedisProcess,
    assert_all_done_once,
    fault_env,
    producer_for,
    start_fault_worker,
)

COUNT = 120

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("how", ["kill", "shutdown", "refused", "stall"])
def test_worker_rides_out_redis_outage(
    how: str,
    redis_proc: RedisProcess,
    fault_sandbox: SandboxServer,
    tmp_path: Path,
    deploy: Deploy,
) -> None:
    """kill -9, SHUTDOWN, 4 s of refused connections, or a 4 s stall while 16 threads hold work:
    the worker does not exit, and every accepted request ends terminal, each executed once,
    with no reconciliation run."""
    # Long calls on many threads: the outage finds many messages delivered and unacked, the
    # state in which Celery 5.7.0 crashed (restore_unacked on a closed connection).
    fault_sandbox.logic.configure({"latency_ms": 1000})
    deployment = deploy(concurrency=64)
    producer, worker = deployment.producer, deployment.worker
    ids = [
        producer.cancel("ev", f"{how}_{n}", api="v1" if n % 2 else "v2").id for n in range(COUNT)
    ]
    wait_until(lambda: producer.counts()["processing"] >= 32, what="calls in flight")
    if how == "kill":
        redis_proc.kill()
    elif how == "shutdown":
        redis_proc.shutdown()
    elif how == "refused":
        redis_proc.kill()
        time.sleep(4)  # nothing listens on the port: connections are refused
    if how == "stall":
        redis_proc.pause()
        time.sleep(4)
        redis_proc.resume()
    else:
        time.sleep(1)
        redis_proc.start()
    assert_all_done_once(producer, ids, fault_sandbox, worker=worker)
    assert worker.process.poll() is None, worker.log_text()[-2000:]
    stop_worker(worker)
    assert worker.process.returncode == 0  # a requested shutdown is a clean exit


def test_worker_exits_nonzero_when_redis_stays_away(
    redis_proc: RedisProcess, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Past ADJUSTMENTS_REDIS_OUTAGE_LIMIT_S without Redis, the worker stops with a non-zero
    exit code (so `Restart=on-failure` acts), and says why in its last lines."""
    env = fault_env(
        redis_proc.url, fault_sandbox, tmp_path / "data", ADJUSTMENTS_REDIS_OUTAGE_LIMIT_S="3"
    )
    worker = start_fault_worker(env, tmp_path / "worker.log")
    redis_proc.kill()
    worker.process.wait(timeout=60)
    assert worker.process.returncode not in (0, None)
    assert "stopped with exit code" in worker.log_text()


def test_beat_rides_out_an_outage_and_stops_cleanly(
    redis_proc: RedisProcess, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Beat keeps running through a Redis restart, schedules reconciliation again after it,
    and exits 0 on SIGTERM (a requested shutdown)."""
    env = fault_env(
        redis_proc.url, fault_sandbox, tmp_path / "data", ADJUSTMENTS_RECONCILE_INTERVAL_S="1"
    )
    worker = start_fault_worker(env, tmp_path / "worker.log")
    log_path = tmp_path / "beat.log"
    with open(log_path, "wb") as out:
        beat = subprocess.Popen(
            [sys.executable, "-m", "adjustments.cli", "beat"], env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: worker.log_text().count('"reconcile.run"') >= 1, what="a first run")
        redis_proc.kill()
        time.sleep(3)
        redis_proc.start()
        before = worker.log_text().count('"reconcile.run"')
        wait_until(
            lambda: worker.log_text().count('"reconcile.run"') > before + 1,
            timeout_s=30,
            what="runs scheduled after the outage",
        )
        assert beat.poll() is None, log_path.read_text()[-2000:]
    finally:
        beat.terminate()
        beat.wait(timeout=15)
        stop_worker(worker)
    assert beat.returncode == 0


def test_a_message_lost_in_flight_is_found_when_the_worker_connects(
    redis_proc: RedisProcess, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """A request whose message vanished (Redis executed a BRPOP and died before answering) is
    published again by the worker itself when it connects, not after the reconciliation grace
    period (an hour here)."""
    env = fault_env(redis_proc.url, fault_sandbox, tmp_path / "data")
    producer = producer_for(env)
    try:
        lost = producer.cancel("ev", "lost_in_flight")
        kept = producer.cancel("ev", "still_queued")
        with redis_proc.client() as client:
            client.rpop("adjustments")  # the oldest message: the lost one's
        worker = start_fault_worker(env, tmp_path / "worker.log")
        try:
            assert_all_done_once(producer, [lost.id, kept.id], fault_sandbox, worker=worker)
            assert '"event": "queue.orphans_republished"' in worker.log_text()
        finally:
            stop_worker(worker)
    finally:
        producer.close()
