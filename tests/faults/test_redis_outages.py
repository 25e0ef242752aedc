"""Redis goes away under a busy worker (crash, SHUTDOWN, refused connections, a stall) and
comes back: the worker stays up, resumes by itself, and nothing is lost or executed twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.conftest import stop_worker, wait_until
from worker.sandbox import SandboxServer

from .conftest import (
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
    how: str, redis_proc: RedisProcess, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """kill -9, SHUTDOWN, 4 s of refused connections, or a 4 s stall while 16 threads hold work:
    the worker does not exit, and every accepted request ends terminal, each executed once,
    with no reconciliation run."""
    env = fault_env(redis_proc.url, fault_sandbox, tmp_path / "data")
    # Long calls on many threads: the outage finds many messages delivered and unacked, the
    # state in which Celery 5.7.0 crashed (restore_unacked on a closed connection).
    fault_sandbox.logic.configure({"latency_ms": 1000})
    worker = start_fault_worker(env, tmp_path / "worker.log", concurrency=64)
    producer = producer_for(env)
    try:
        ids = [
            producer.cancel("ev", f"{how}_{n}", api="v1" if n % 2 else "v2").id
            for n in range(COUNT)
        ]
        wait_until(lambda: producer.store.counts()["processing"] >= 32, what="calls in flight")
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
    finally:
        producer.close()
        stop_worker(worker)
    assert worker.process.returncode == 0  # a requested shutdown is a clean exit
