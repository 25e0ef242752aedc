"""Enqueue → Celery worker → stripe SDK over HTTP → sandbox → Redis record, for real."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis

from adjustments.config import Settings
from adjustments.errors import InvalidInput
from adjustments.models import CancelRequest, Record, Status
from adjustments.producer import Producer
from adjustments.sandbox import SandboxServer
from tests.helpers import SECRET, WorkerProcess, create_record, written_keys

Settle = Callable[[str], Record]


def sandbox_requests(sandbox: SandboxServer, identifier: str) -> list[dict[str, object]]:
    return list(sandbox.logic.requests.get(identifier, []))


class TestSuccess:
    @pytest.mark.parametrize("api", ["v1", "v2"])
    def test_cancellation_is_accepted(
        self, producer: Producer, settle: Settle, sandbox: SandboxServer, api: str
    ) -> None:
        """A cancellation goes through the worker to Stripe and records Stripe's answer."""
        record = producer.cancel("ai_search_api", f"ok_{api}", api=api)
        assert record.status is Status.QUEUED
        done = settle(record.id)
        assert done.status is Status.PENDING and done.stripe_status == "pending"
        assert done.attempts == 1 and done.stripe_request_id and done.livemode is False
        assert (done.adjustment_id or "").startswith("mtr_event_adj_") == (api == "v2")
        assert (done.adjustment_created is not None) == (api == "v2")
        assert sandbox.logic.executions[f"ok_{api}"] == 1

    @pytest.mark.parametrize(
        ("api", "account"),
        [("v1", "acct_1TEST"), ("v2", "acct_1TEST"), ("v2", "acct_1PARENT/acct_1CHILD")],
    )
    def test_connected_account_is_sent_in_the_versions_header(
        self, producer: Producer, settle: Settle, sandbox: SandboxServer, api: str, account: str
    ) -> None:
        """v1 sends stripe_account as Stripe-Account, v2 as Stripe-Context (which supersedes
        it there); the sandbox refuses the other header, so a pending record proves it."""
        identifier = f"acct_case_{api}_{account.count('/')}"
        record = producer.cancel("ev", identifier, api=api, stripe_account=account)
        assert settle(record.id).status is Status.PENDING
        assert [r["account"] for r in sandbox_requests(sandbox, identifier)] == [account]


class TestRetries:
    @pytest.mark.parametrize("api", ["v1", "v2"])
    def test_429_500_timeout_then_success(
        self, producer: Producer, settle: Settle, sandbox: SandboxServer, api: str
    ) -> None:
        """Retries keep one Idempotency-Key per generation; a replayed 500 moves to the next.

        429 (not stored) → 500 (stored) → the 500 replayed → next generation: a timeout
        (executed, answered too late) → the stored success replayed. Executed once.
        """
        ident = f"flaky_{api}"
        sandbox.logic.script(ident, ["429", "500", "timeout"])
        record = producer.cancel("ev", ident, api=api)
        done = settle(record.id)
        assert done.status is Status.PENDING
        seen = sandbox_requests(sandbox, ident)
        assert [r["outcome"] for r in seen] == ["429", "500", "replayed", "timeout", "replayed"]
        keys = [str(r["idempotency_key"]) for r in seen]
        assert keys[0] == keys[1] == keys[2] and keys[0].endswith("-g0")
        assert keys[3] == keys[4] and keys[3].endswith("-g1")
        assert (done.attempts, done.generation) == (5, 1)
        assert sandbox.logic.executions[ident] == 1

    def test_should_retry_true_429(
        self, producer: Producer, settle: Settle, sandbox: SandboxServer
    ) -> None:
        """A 429 with Stripe-Should-Retry true, then a dropped connection, are retried to success.
        A 429 with Stripe-Should-Retry true, then a dropped connection, are retried to success."""
        sandbox.logic.script("retry_true", ["429_retry", "drop"])
        done = settle(producer.cancel("ev", "retry_true", api="v2").id)
        assert done.status is Status.PENDING and done.attempts == 3

    def test_attempts_exhausted(
        self, producer: Producer, settle: Settle, sandbox: SandboxServer
    ) -> None:
        """With every answer a 429, the record fails after ADJUSTMENTS_MAX_ATTEMPTS (6 here)."""
        sandbox.logic.script("always_429", ["429"] * 6)
        done = settle(producer.cancel("ev", "always_429", api="v1").id)
        assert done.status is Status.FAILED and done.attempts == 6
        assert done.last_error is not None and done.last_error.http_status == 429


class TestPermanent:
    def test_400_fails_after_one_attempt(
        self, producer: Producer, settle: Settle, sandbox: SandboxServer
    ) -> None:
        """A 400 fails the record at once: one request sent, the error kept."""
        sandbox.logic.script("bad_one", ["400"])
        done = settle(producer.cancel("ev", "bad_one", api="v2").id)
        assert done.status is Status.FAILED and done.attempts == 1
        assert done.last_error is not None and done.last_error.http_status == 400
        assert len(sandbox_requests(sandbox, "bad_one")) == 1

    def test_closed_window_expires_without_a_call(
        self, producer: Producer, settle: Settle, sandbox: SandboxServer
    ) -> None:
        """A queued record whose 24 h window closed before a worker took it (cancel() refuses
        such a request; the store can still hold one that waited too long) is never sent."""
        now = datetime.now(UTC)
        old = CancelRequest("v1", "ev", "too_old", None, now - timedelta(hours=25))
        record = create_record(producer, old, now=now)
        done = settle(record.id)
        assert done.status is Status.EXPIRED and sandbox_requests(sandbox, "too_old") == []


class TestExactlyOnce:
    def test_duplicate_enqueue_executes_once(
        self, producer: Producer, settle: Settle, sandbox: SandboxServer
    ) -> None:
        """Cancelling the same request twice returns one record, executed once."""
        first = producer.cancel("ev", "twice", api="v1")
        second = producer.cancel("ev", "twice", api="v1")
        assert second.id == first.id
        assert settle(first.id).status is Status.PENDING
        assert sandbox.logic.executions["twice"] == 1
        assert len(sandbox_requests(sandbox, "twice")) == 1

    def test_duplicate_delivery_executes_once(
        self, producer: Producer, settle: Settle, sandbox: SandboxServer
    ) -> None:
        """The same task message delivered four times at once: one Stripe call."""
        sandbox.logic.configure({"latency_ms": 300})
        record = producer.cancel("ev", "redelivered", api="v2")
        for _ in range(3):
            assert producer.publish(record.id)
        done = settle(record.id)
        time.sleep(0.5)  # let any straggling duplicate run (it must be refused)
        assert done.status is Status.PENDING and producer.get(record.id).attempts == 1
        assert len(sandbox_requests(sandbox, "redelivered")) == 1
        assert sandbox.logic.executions["redelivered"] == 1


class TestInputAndSecrets:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"event_name": "", "identifier": "x"},
            {"event_name": "e", "identifier": "x" * 101},
            {"event_name": "e", "identifier": "x", "api": "v3"},
            {"event_name": "e", "identifier": "x", "stripe_account": "bogus"},
            {"event_name": "e", "identifier": "x", "event_received_at": "not a time"},
        ],
    )
    def test_bad_input_writes_nothing(
        self, producer: Producer, redis_client: redis.Redis, kwargs: dict[str, str]
    ) -> None:
        """Invalid input raises InvalidInput and writes no key and no message."""
        with pytest.raises(InvalidInput):
            producer.cancel(**kwargs)  # type: ignore[arg-type]
        assert written_keys(redis_client) == []
        assert producer.readouts.queue_depth() == 0

    def test_key_never_in_redis_or_logs(
        self,
        producer: Producer,
        settle: Settle,
        sandbox: SandboxServer,
        redis_client: redis.Redis,
        worker: WorkerProcess,
    ) -> None:
        """Even when Stripe's error quotes the key, neither the record nor a log line holds it."""
        sandbox.logic.script("auth_fail", ["401"])
        done = settle(producer.cancel("ev", "auth_fail", api="v1").id)
        assert done.status is Status.FAILED and done.last_error is not None
        assert "[REDACTED]" in (done.last_error.message or "")
        stored = json.dumps([redis_client.hgetall(k) for k in redis_client.scan_iter("adj:rec:*")])
        assert "auth_fail" in stored and SECRET not in stored and "sk_test" not in stored
        time.sleep(0.3)  # the log line is flushed after the record is written
        log = worker.log_text()
        assert "cancellation.attempt" in log and "auth_fail" not in log  # identifiers stay out too
        assert SECRET not in log and "sk_test" not in log


class TestRoundTrips:
    def test_cancel_is_one_round_trip_even_after_a_script_flush(
        self, own_redis_url: str, worker_env: dict[str, str]
    ) -> None:
        """Each cancel() sends one EVALSHA and nothing else (no SCRIPT EXISTS first); after
        SCRIPT FLUSH the next one loads the script once and still enqueues."""
        settings = Settings.from_env({**worker_env, "REDIS_URL": own_redis_url})
        client = redis.Redis.from_url(own_redis_url)
        try:
            with Producer(own_redis_url, settings=settings) as producer:
                producer.cancel("ev", "rt_warm", api="v1")
                client.config_resetstat()
                for i in range(5):
                    producer.cancel("ev", f"rt_{i}", api="v1")
                stats = client.info("commandstats")
                assert stats["cmdstat_evalsha"]["calls"] == 5
                assert not any(name.startswith("cmdstat_script") for name in stats)
                client.script_flush()
                assert producer.cancel("ev", "rt_after_flush", api="v1").created
                assert client.llen(settings.queue) == 7
        finally:
            client.close()

    def test_cancel_async_batches_concurrent_calls_and_keeps_cancels_answers(
        self, own_redis_url: str, worker_env: dict[str, str]
    ) -> None:
        """200 concurrent cancel_async() calls on one loop: each a new record with its own id
        and message; a repeat returns the same record as a duplicate; bad input raises
        InvalidInput before anything is written; a stopped Redis is a StoreError."""
        import asyncio

        from adjustments.errors import StoreError

        settings = Settings.from_env({**worker_env, "REDIS_URL": own_redis_url})
        client = redis.Redis.from_url(own_redis_url)

        async def scenario(producer: Producer) -> None:
            records = await asyncio.gather(
                *(producer.cancel_async("ev", f"as_{i}", api="v1") for i in range(200))
            )
            assert all(r.created for r in records) and len({r.id for r in records}) == 200
            again = await producer.cancel_async("ev", "as_7", api="v1")
            assert (again.id, again.created) == (records[7].id, False)
            with pytest.raises(InvalidInput):
                await producer.cancel_async("ev", "x" * 101)

        try:
            with Producer(own_redis_url, settings=settings) as producer:
                asyncio.run(scenario(producer))
                assert client.llen(settings.queue) == 200
                client.shutdown(nosave=True)
                with pytest.raises(StoreError):
                    asyncio.run(producer.cancel_async("ev", "as_down", api="v1"))
        finally:
            client.close()
