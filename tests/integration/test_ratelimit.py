"""The shared Stripe rate limit across two real worker processes, against the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from adjustments.config import Settings
from adjustments.models import Status
from adjustments.producer import Producer
from adjustments.sandbox import SandboxServer
from tests.helpers import start_worker, stop_worker, wait_until

LIMIT = 10.0
BURST = 1
JITTER_S = 0.25  # how much later than its grant a request may reach the sandbox (see below)


@pytest.fixture(scope="module")
def limited(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Two worker processes sharing one limit of 10 requests/s (own prefix and queue)."""
    env = {
        **worker_env,
        "ADJUSTMENTS_KEY_PREFIX": "rl",
        "ADJUSTMENTS_QUEUE": "rl",
        "ADJUSTMENTS_RATE_LIMIT": str(LIMIT),
        "ADJUSTMENTS_RATE_BURST": str(BURST),
        "ADJUSTMENTS_RATE_RECOVERY_PER_S": "0.5",
        "ADJUSTMENTS_MAX_ATTEMPTS": "50",
    }
    logs = tmp_path_factory.mktemp("rl")
    workers = [start_worker(env, logs / f"w{n}.log", concurrency=8) for n in range(2)]
    yield env
    for w in workers:
        stop_worker(w)


@pytest.fixture
def rl_producer(limited: dict[str, str], clean: None) -> Iterator[Producer]:
    with Producer(limited["REDIS_URL"], settings=Settings.from_env(limited)) as producer:
        for key in producer.client.scan_iter("rl:*"):
            producer.client.delete(key)
        yield producer


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))


class TestSharedLimit:
    def test_two_workers_stay_within_one_limit(
        self, rl_producer: Producer, sandbox: SandboxServer
    ) -> None:
        """However the two processes split the work, the sends keep to the limit.

        The limiter spaces the *grants*; the sandbox sees each request a little later, by
        however long the thread took to be scheduled and the request to arrive (tens of ms
        on a busy 2-core machine running tests three at a time). So the bound on arrivals is
        the grants' bound over a window widened by that lag, JITTER_S: at most
        limit * (1 + JITTER_S) + burst in any second, and the 30 span at least
        (30 - burst) / limit - JITTER_S. Without the shared limit, two workers of 8 threads
        send all 30 in well under half a second."""
        ids = [rl_producer.cancel("ev", f"rl_{n}", api="v2").id for n in range(30)]
        wait_until(lambda: all(rl_producer.get(i).status.terminal for i in ids), timeout_s=60)
        assert {rl_producer.get(i).status for i in ids} == {Status.PENDING}
        rows = [r for n in range(30) for r in sandbox.logic.requests[f"rl_{n}"]]
        assert len(rows) == 30  # one request each: nothing was rate-limited by "Stripe"
        times = sorted(float(r["at"]) for r in rows)
        assert busiest_second(times) <= int(LIMIT * (1 + JITTER_S) + BURST)
        assert times[-1] - times[0] >= (len(times) - BURST) / LIMIT - JITTER_S

    def test_429s_cut_the_shared_rate(self, rl_producer: Producer, sandbox: SandboxServer) -> None:
        """When "Stripe" allows less than our limit, its 429s lower the rate all workers use."""
        sandbox.logic.configure({"rps_limit": 3, "burst": 1})
        ids = [rl_producer.cancel("ev", f"ad_{n}", api="v1").id for n in range(15)]
        wait_until(lambda: all(rl_producer.get(i).status.terminal for i in ids), timeout_s=90)
        assert {rl_producer.get(i).status for i in ids} == {Status.PENDING}
        assert sandbox.logic.stats()["rate_limited_total"] >= 1
        rate = rl_producer.stats().rate_limit
        assert rate.configured_per_s == LIMIT and rate.current_per_s < LIMIT


@pytest.mark.usefixtures("clean")  # the sandbox back to its defaults (no rps_limit)
class TestBackpressure:
    def test_a_backlog_waits_in_redis_and_no_message_cycles(
        self, own_redis_url: str, tmp_path: Path, sandbox: SandboxServer, worker_env: dict[str, str]
    ) -> None:
        """A backlog ten times the worker's concurrency at a low limit: the worker holds at
        most one message per thread (the rest wait in the Redis list), no message goes back to
        the broker (no LPUSH, no requeue), and each request is delivered and executed once."""
        url = own_redis_url
        env = {
            **worker_env,
            "REDIS_URL": url,
            "ADJUSTMENTS_RATE_LIMIT": "8",
            "ADJUSTMENTS_RATE_BURST": "1",
        }
        client = redis.Redis.from_url(url, decode_responses=True)
        handle = None
        try:
            handle = start_worker(env, tmp_path / "worker.log", concurrency=4)
            with Producer(url, settings=Settings.from_env(env)) as producer:
                result = producer.cancel_many(
                    [{"event_name": "ev", "identifier": f"bp_{n}"} for n in range(40)]
                )
                pushes_before = push_calls(client)  # the enqueue's own pushes are done
                ids = [i for i in result.ids if i]
                held: list[int] = []
                waiting: list[int] = []

                def drained() -> bool:
                    held.append(int(client.hlen("unacked")))
                    waiting.append(int(client.llen("adjustments")))
                    return all(producer.get(i).status.terminal for i in ids)

                wait_until(drained, timeout_s=90, what="the backlog to drain")
                assert {producer.get(i).status for i in ids} == {Status.PENDING}
                assert push_calls(client) == pushes_before  # nothing went back to the broker
        finally:
            if handle is not None:
                stop_worker(handle)
            client.close()
        assert max(held) <= 4  # prefetch 1 x 4 threads: the worker never took more
        assert max(waiting) >= 30  # the backlog waited in Redis
        log = handle.log_text()
        assert log.count('"event": "cancellation.attempt"') == 40
        assert '"cancellation.skipped"' not in log  # no duplicate delivery
        assert all(sandbox.logic.executions[f"bp_{n}"] == 1 for n in range(40))


def push_calls(client: redis.Redis) -> int:
    """How many LPUSH commands the server has run: kombu publishes, restores and requeues
    with LPUSH (the store's history lists use RPUSH)."""
    return int(client.info("commandstats").get("cmdstat_lpush", {}).get("calls", 0))


@pytest.mark.usefixtures("clean")
class TestShutdownWhileWaiting:
    def test_a_warm_shutdown_gives_waiting_messages_back(
        self, own_redis_url: str, tmp_path: Path, sandbox: SandboxServer, worker_env: dict[str, str]
    ) -> None:
        """SIGTERM while threads wait for their rate-limit slots: the worker stops at once
        with exit code 0, the held messages go back to the queue untouched, and a new worker
        carries every request out exactly once."""
        url = own_redis_url
        env = {**worker_env, "REDIS_URL": url, "ADJUSTMENTS_RATE_LIMIT": "2"}
        env["ADJUSTMENTS_RATE_BURST"] = "1"
        first = start_worker(env, tmp_path / "first.log", concurrency=4)
        with Producer(url, settings=Settings.from_env(env)) as producer:
            ids = [producer.cancel("ev", f"sd_{n}").id for n in range(12)]
            wait_until(
                lambda: producer.stats().records["pending"] >= 2,
                what="a first few to be sent",
            )
            first.process.terminate()
            first.process.wait(timeout=30)
            assert first.process.returncode == 0, first.log_text()[-2000:]
            left = [i for i in ids if not producer.get(i).status.terminal]
            assert left  # some were still waiting when it stopped...
            assert all(producer.get(i).attempts == 0 for i in left)  # ...untouched
            second = start_worker(env, tmp_path / "second.log", concurrency=4)
            try:
                wait_until(
                    lambda: all(producer.get(i).status.terminal for i in ids),
                    timeout_s=60,
                    what="the second worker to finish",
                )
            finally:
                stop_worker(second)
            assert {producer.get(i).status for i in ids} == {Status.PENDING}
        assert all(sandbox.logic.executions[f"sd_{n}"] == 1 for n in range(12))
