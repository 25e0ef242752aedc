"""What the queue may hold and what Redis may answer: poison items, a full memory, a refused
start, and a v1 call that timed out after Stripe executed it, then replayed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from adjustments.errors import AcceptanceUnknown, NotAccepted, UnsafeRedis
from adjustments.models import CancelRequest
from adjustments.sandbox import SandboxServer
from tests.helpers import run_cli, stop_worker, store_of, wait_until

from .conftest import (
    Deploy,
    RedisProcess,
    assert_all_done_once,
    fault_env,
    producer_for,
    start_fault_worker,
)

POISON = [
    "not json",
    "[1, 2, 3]",
    json.dumps({"body": "%%%", "properties": {"body_encoding": "base64", "delivery_tag": "x"}}),
]


def test_poison_items_are_dead_lettered_and_the_worker_carries_on(
    redis_proc: RedisProcess,
    fault_sandbox: SandboxServer,
    tmp_path: Path,
    deploy: Deploy,
) -> None:
    """Three items kombu cannot parse sit in the queue before real work: each lands in the
    dead-letter list with its raw text, the worker keeps running, every request completes."""
    with redis_proc.client() as client:
        client.lpush("adjustments", *POISON)
    deployment = deploy()
    producer, worker = deployment.producer, deployment.worker
    ids = [producer.cancel("ev", f"poison_{n}").id for n in range(10)]
    assert_all_done_once(producer, ids, fault_sandbox, worker=worker)
    with redis_proc.client() as client:
        dead = [json.loads(e) for e in client.lrange("adj:deadletter", 0, -1)]
        assert client.get("adj:deadletter:total") == "3"
    assert sorted(d["raw"] for d in dead) == sorted(POISON)
    assert {d["reason"] for d in dead} == {
        "not JSON",
        "a JSON list, not an object",
        "body is not valid base64",
    }
    assert worker.process.poll() is None
    assert worker.log_text().count('"event": "queue.dead_lettered"') == 3
    assert producer.stats().dead_letters == 3


@pytest.mark.slow
def test_full_memory_refuses_new_work_and_loses_nothing(
    redis_proc: RedisProcess, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Redis at maxmemory (noeviction): cancel() raises NotAccepted with nothing written, the
    worker survives the OOM answers to its own writes, and once memory is freed every accepted
    request completes, each executed once."""
    env = fault_env(redis_proc.url, fault_sandbox, tmp_path / "data")
    worker = start_fault_worker(env, tmp_path / "worker.log")
    producer = producer_for(env)
    client = redis_proc.client()
    try:
        fault_sandbox.logic.configure({"latency_ms": 300})
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 400_000)
        accepted: list[str] = []
        refused: list[NotAccepted] = []
        for n in range(5000):
            try:
                accepted.append(producer.cancel("ev", f"oom_{n}").id)
            except NotAccepted as exc:
                refused.append(exc)
                break
        assert refused and accepted and "out of memory" in str(refused[0])
        # Now full for certain (the worker frees memory as it consumes): every write refused.
        client.config_set("maxmemory", 1)
        for n in range(3):
            with pytest.raises(NotAccepted, match="out of memory"):
                producer.cancel("ev", f"oom_refused_{n}")
            # Nothing half-written: no record, no dedupe key for the refused request.
            refused_request = CancelRequest("v2", "ev", f"oom_refused_{n}")
            assert not client.exists(store_of(producer).dedupe_key(refused_request))
        time.sleep(3)  # the worker meets OOM on its own writes meanwhile
        assert worker.process.poll() is None, worker.log_text()[-2000:]
        client.config_set("maxmemory", 0)
        assert_all_done_once(producer, accepted, fault_sandbox, timeout_s=90, worker=worker)
        assert worker.process.poll() is None
    finally:
        client.config_set("maxmemory", 0)
        client.close()
        producer.close()
        stop_worker(worker)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--maxmemory-policy", "allkeys-lru"], "maxmemory-policy is allkeys-lru"),
        (["--appendonly", "no"], "needs the append-only file"),
    ],
)
def test_worker_refuses_a_redis_that_cannot_keep_promises(
    extra: list[str], expected: str, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """An eviction policy, or no append-only file with durability fsync: exit 2, one line."""
    proc = RedisProcess(tmp_path / "redis", extra=extra).start()
    try:
        env = fault_env(proc.url, fault_sandbox, tmp_path / "data")
        result = run_cli(["worker"], env, timeout=60)
        assert result.returncode == 2, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("adjustments: error: ") and expected in last
        if "allkeys" in expected:
            with producer_for(env) as producer, pytest.raises(UnsafeRedis, match="allkeys-lru"):
                producer.cancel("ev", "never_written")
            allowed = {**env, "ADJUSTMENTS_ALLOW_EVICTION": "1"}
            worker = start_fault_worker(allowed, tmp_path / "allowed.log")
            assert "redis.weak_guarantee" in worker.log_text()
            stop_worker(worker)
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("key", "api", "expected"),
    [
        (None, "v2", "not set"),
        ("pk_test_123", "v2", "publishable"),
        ("rk_test_123", "v2", "restricted"),
    ],
)
def test_worker_without_a_usable_key_exits_2(
    key: str | None, api: str, expected: str, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """No key, a publishable key, or a restricted key with v2: exit 2 at start, one line, and
    the key itself never printed."""
    env = fault_env("redis://127.0.0.1:1/0", fault_sandbox, tmp_path, ADJUSTMENTS_STRIPE_API=api)
    env.pop("STRIPE_API_KEY")
    if key:
        env["STRIPE_API_KEY"] = key
    result = run_cli(["worker"], env, timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr
    assert not key or key not in result.stderr


def test_v1_timeout_after_execution_then_replay_executes_once(
    redis_proc: RedisProcess,
    fault_sandbox: SandboxServer,
    tmp_path: Path,
    deploy: Deploy,
) -> None:
    """Stripe executes a v1 call whose answer times out; rate limiting then uses up the
    attempts. The record says its outcome is unknown; the recovery page's `replay --error-code
    rate_limit` reuses the same key, and Stripe's replayed success completes it: one
    execution."""
    fault_sandbox.logic.configure({"slow_s": 1.6})
    deployment = deploy(ADJUSTMENTS_STRIPE_TIMEOUT_S="1", ADJUSTMENTS_MAX_ATTEMPTS="3")
    producer, env = deployment.producer, deployment.env
    fault_sandbox.logic.script("late_v1", ["timeout", "rate_limited", "rate_limited"])
    record = producer.cancel("ev", "late_v1", api="v1")
    wait_until(lambda: producer.get(record.id).status.terminal, what="attempts to run out")
    failed = producer.get(record.id)
    assert failed.status.value == "failed" and failed.last_error is not None
    assert failed.last_error.outcome_unknown and "may have been executed" in (
        failed.last_error.message or ""
    )
    assert fault_sandbox.logic.executions["late_v1"] == 1
    result = run_cli(["replay", "--error-code", "rate_limit"], env)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: producer.get(record.id).status.terminal, what="the replay to finish")
    done = producer.get(record.id)
    assert done.status.value == "pending" and done.generation == failed.generation
    assert fault_sandbox.logic.executions["late_v1"] == 1


def test_cancel_during_a_stall_says_unknown_and_a_second_call_finds_the_first(
    redis_proc: RedisProcess,
    fault_sandbox: SandboxServer,
    tmp_path: Path,
    deploy: Deploy,
) -> None:
    """Redis stalls after cancel() sent its write: cancel() raises AcceptanceUnknown (not "not
    accepted"); once Redis resumes, the write has happened, and calling cancel() again returns
    that same record, executed once."""
    deployment = deploy()
    producer, worker = deployment.producer, deployment.worker
    warm = producer.cancel("ev", "warm")  # the connection and the start checks are done
    redis_proc.pause()
    started = time.monotonic()
    try:
        with pytest.raises(AcceptanceUnknown, match="call cancel\\(\\) again"):
            producer.cancel("ev", "stalled")
    finally:
        redis_proc.resume()
    # Within its 5 s socket timeout, not after hidden client retries (redis-py's default
    # retries made this about a minute): a producer must not block.
    assert time.monotonic() - started < 15
    again = producer.cancel("ev", "stalled")
    assert again.identifier == "stalled"
    # The worker may have been mid-way through "warm" when Redis stalled: wait for both.
    assert_all_done_once(producer, [warm.id, again.id], fault_sandbox, worker=worker)
    assert producer.client.zcard("adj:idx:pending") == 2  # warm + stalled, no twin
