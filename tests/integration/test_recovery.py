"""Recovery against real parts: SIGKILLed workers, lost messages, replay, import, beat."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from adjustments.config import Durability, Settings
from adjustments.models import CancelRequest, Status
from adjustments.producer import Producer
from adjustments.reconcile import reconcile
from adjustments.sandbox import SandboxServer
from adjustments.store import RecordStore
from tests.helpers import Settle, WorkerProcess, start_worker, stop_worker, wait_until
from tests.helpers import run_cli as cli


def side_producer(worker_env: dict[str, str], queue: str) -> Producer:
    """A producer on its own queue (a worker of the test's own, or none at all)."""
    env = {**worker_env, "ADJUSTMENTS_QUEUE": queue}
    return Producer(env["REDIS_URL"], settings=Settings.from_env(env))


def reconcile_now(producer: Producer, grace_s: float = 0.2) -> None:
    producer.operations.reconcile(grace_s=grace_s)


class TestWorkerKilled:
    def test_sigkill_mid_call_loses_nothing_and_executes_once(
        self, clean: None, worker_env: dict[str, str], sandbox: SandboxServer, tmp_path: Path
    ) -> None:
        """SIGKILL a worker while it is calling Stripe; reconciliation and a fresh worker finish
        every request, and the sandbox executed each exactly once."""
        queue = "adjustments-kill"
        env = {**worker_env, "ADJUSTMENTS_QUEUE": queue}
        sandbox.logic.configure({"latency_ms": 400})
        victim = start_worker(env, tmp_path / "victim.log", concurrency=4)
        producer = side_producer(worker_env, queue)
        try:
            ids = [
                producer.cancel("ev", f"kill_{n}", api="v2" if n % 2 else "v1").id
                for n in range(16)
            ]
            wait_until(lambda: producer.counts()["processing"] >= 3, what="calls in flight")
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait(timeout=10)
            assert producer.counts()["processing"] >= 1  # killed mid-call
            successor = start_worker(env, tmp_path / "successor.log", concurrency=4)
            try:

                def all_done() -> bool:
                    reconcile_now(producer)
                    return all(producer.get(i).status.terminal for i in ids)

                wait_until(all_done, timeout_s=60, what="every request to settle")
            finally:
                stop_worker(successor)
            records = [producer.get(i) for i in ids]
            assert {r.status for r in records} == {Status.PENDING}
            assert all(sandbox.logic.executions[r.identifier] == 1 for r in records)
        finally:
            producer.close()
            if victim.process.poll() is None:
                victim.process.kill()


class TestLostMessage:
    def test_reconciliation_redrives_a_lost_message(
        self,
        producer: Producer,
        settle: Settle,
        worker_env: dict[str, str],
        redis_client: redis.Redis,
        sandbox: SandboxServer,
    ) -> None:
        """The record was written but its message vanished from the broker."""
        with side_producer(worker_env, "adjustments-void") as lost:
            record = lost.cancel("ev", "lost_msg", api="v2")
        redis_client.delete("adjustments-void")  # the message is gone
        time.sleep(0.3)
        assert producer.get(record.id).status is Status.QUEUED
        reconcile_now(producer)
        assert settle(record.id).status is Status.PENDING
        assert sandbox.logic.executions["lost_msg"] == 1


class TestReplay:
    def test_failures_then_replay_after_the_fault_is_gone(
        self, producer: Producer, settle: Settle, sandbox: SandboxServer
    ) -> None:
        """Records failed by a sandbox fault complete after replay, each executed once."""
        idents = [f"replay_{n}" for n in range(6)]
        for ident in idents:
            sandbox.logic.script(ident, ["400"])
        ids = [
            producer.cancel("meter_x", ident, api="v1" if n % 2 else "v2").id
            for n, ident in enumerate(idents)
        ]
        assert {settle(i).status for i in ids} == {Status.FAILED}
        assert sum(sandbox.logic.executions.values()) == 0
        report = producer.operations.replay(status=Status.FAILED, event_name="meter_x")
        assert sorted(report.replayed) == sorted(ids)
        again = producer.operations.replay(ids=ids)  # a second replay in a row enqueues nothing
        assert again.replayed == []
        done = [settle(i) for i in ids]
        assert {r.status for r in done} == {Status.PENDING}
        assert {r.generation for r in done} == {1} and {r.replays for r in done} == {1}
        assert all(sandbox.logic.executions[i] == 1 for i in idents)
        history = producer.get(ids[0], with_history=True).history
        assert [h["outcome"] for h in history] == ["permanent", "replayed", "accepted"]


class TestCliRecovery:
    def test_replay_dry_run_then_json(
        self, producer: Producer, settle: Settle, sandbox: SandboxServer, worker_env: dict[str, str]
    ) -> None:
        """replay --dry-run selects by error code and changes nothing; replay --id re-drives it."""
        sandbox.logic.script("cli_replay", ["404"])
        record_id = producer.cancel("ev", "cli_replay").id
        assert settle(record_id).status is Status.FAILED
        dry = cli(["replay", "--error-code", "resource_missing", "--dry-run", "--json"], worker_env)
        assert dry.returncode == 0, dry.stderr
        assert json.loads(dry.stdout)["ids"] == [record_id]
        assert producer.get(record_id).status is Status.FAILED
        real = cli(["replay", "--id", record_id, "--json"], worker_env)
        assert json.loads(real.stdout)["replayed"] == 1
        assert settle(record_id).status is Status.PENDING
        shown = json.loads(cli(["status", record_id, "--json"], worker_env).stdout)
        assert [h["outcome"] for h in shown["history"]] == ["permanent", "replayed", "accepted"]

    def test_import_reports_bad_lines_and_enqueues_good_ones_once(
        self,
        producer: Producer,
        settle: Settle,
        sandbox: SandboxServer,
        worker_env: dict[str, str],
        tmp_path: Path,
    ) -> None:
        """import enqueues the good lines once each and reports every bad line by number."""
        lines = [
            {"event_name": "ev", "identifier": "imp_1"},
            {"event_name": "ev", "identifier": "imp_2", "api": "v1"},
            {"event_name": "ev", "identifier": ""},
            {"event_name": "ev", "identifier": "imp_1"},  # a duplicate of line 1
            {"event_name": "ev", "identifier": "imp_3", "api": "v9"},
            {"event_name": "ev", "identifier": "imp_4", "stripe_account": "acct_9"},
        ]
        path = tmp_path / "cancellations.jsonl"
        path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
        out = cli(["import", str(path), "--json"], worker_env)
        assert out.returncode == 1, out.stderr
        summary = json.loads(out.stdout)
        assert (summary["created"], summary["duplicates"], summary["bad_lines"]) == (3, 1, 3)
        assert [b["line"] for b in summary["bad"]] == [3, 5, 7]
        assert "line 5: api must be 'v1' or 'v2'" in out.stderr
        for record in producer.latest(limit=10):
            assert settle(record.id).status is Status.PENDING
        assert dict(sandbox.logic.executions) == {"imp_1": 1, "imp_2": 1, "imp_4": 1}

    def test_import_csv_from_stdin_all_good(
        self, producer: Producer, worker_env: dict[str, str]
    ) -> None:
        """A CSV on stdin is imported whole and summarised."""
        out = cli(
            ["import", "-", "--format", "csv"],
            worker_env,
            stdin="event_name,identifier\nev,csv_1\nev,csv_2\n",
        )
        assert out.returncode == 0, out.stderr
        assert "enqueued 2 (2 new, 0 already known), 0 bad lines" in out.stdout


class TestReconcileLock:
    def test_two_runs_at_once_one_runs(self, redis_url: str, clean: None) -> None:
        """On a real Redis: while one run is in progress another started at once does nothing."""
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        store = RecordStore(client, prefix="adj", retention_s=3600, durability=Durability("memory"))
        store.create(CancelRequest("v2", "ev", "lock_1"), now=datetime.now(UTC))
        inside, release = threading.Event(), threading.Event()
        ran: list[bool] = []

        def slow_publish(_: str) -> bool:
            inside.set()
            release.wait(timeout=10)
            return True

        def first() -> None:
            ran.append(
                reconcile(
                    store=store,
                    publish=slow_publish,
                    now=datetime.now(UTC),
                    grace_s=0,
                    tickets=lambda: 0,  # its message is lost: the run publishes one
                ).ran
            )

        thread = threading.Thread(target=first)
        thread.start()
        assert inside.wait(timeout=10)
        second = reconcile(store=store, publish=lambda _: True, now=datetime.now(UTC), grace_s=0)
        release.set()
        thread.join(timeout=10)
        client.close()
        assert ran == [True] and second.ran is False


class TestBeat:
    @pytest.fixture
    def beat(self, worker_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
        env = {
            **worker_env,
            "ADJUSTMENTS_RECONCILE_INTERVAL_S": "1",
            "ADJUSTMENTS_DATA_DIR": str(tmp_path),
        }
        with open(tmp_path / "beat.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "adjustments.cli", "beat"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        yield proc
        proc.terminate()
        proc.wait(timeout=15)

    def test_beat_schedules_reconciliation_on_the_workers(
        self,
        producer: Producer,
        settle: Settle,
        worker: WorkerProcess,
        worker_env: dict[str, str],
        redis_client: redis.Redis,
        beat: subprocess.Popen[bytes],
    ) -> None:
        """With beat running, a record whose message was lost completes by itself."""
        with side_producer(worker_env, "adjustments-void") as lost:
            record = lost.cancel("ev", "beat_lost", api="v1")
        redis_client.delete("adjustments-void")
        # grace is the default 60 s for the worker, so make the record look old enough (two
        # minutes: a day would be a record past any window, expired without a call)
        redis_client.zadd("adj:idx:queued", {record.id: int((time.time() - 120) * 1000)})
        assert settle(record.id, timeout_s=30).status is Status.PENDING
        # The record can finish before the run that re-published it writes its line.
        wait_until(lambda: '"event": "reconcile.run"' in worker.log_text(), what="reconcile.run")
        assert beat.poll() is None
