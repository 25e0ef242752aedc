"""Prometheus metrics from a real worker and from Redis, checked against the records; the
shipped alert rules and dashboard use only metrics we export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from adjustments import Producer, Settings, Status
from adjustments.embedded import free_port
from adjustments.sandbox import SandboxServer
from tests.helpers import run_cli, start_worker, stop_worker, wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "adjustments.json"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for every sample line of an exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def exported_names(text: str) -> set[str]:
    """Every series name an exposition can carry, from its TYPE lines and samples."""
    names = {m.group(1) for line in text.splitlines() if (m := SAMPLE.match(line))}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {
                "counter": {f"{name}_total"},
                "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"},
            }.get(kind, {name})
    return names


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\badjustments_[a-z0-9_]+", expr))


@pytest.mark.usefixtures("clean")
class TestMetrics:
    def test_worker_and_deployment_metrics_match_the_records(
        self, own_redis_url: str, tmp_path: Path, worker_env: dict[str, str], sandbox: SandboxServer
    ) -> None:
        """A mix of outcomes (accepted, a permanent 400, a rate limiter's 429 and a lock
        timeout, each then accepted): the worker's counters and the deployment's gauges say
        what the records say, and the rules and dashboard name only exported metrics."""
        url = own_redis_url
        port = free_port()
        env = {**worker_env, "REDIS_URL": url, "ADJUSTMENTS_METRICS_PORT": str(port)}
        sandbox.logic.script("m_bad", ["400"])
        sandbox.logic.script("m_limited", ["rate_limited"])
        sandbox.logic.script("m_locked", ["429"])
        handle = start_worker(env, tmp_path / "worker.log", concurrency=4)
        try:
            with Producer(url, settings=Settings.from_env(env)) as producer:
                ids = [
                    producer.cancel("ev", name, api="v1").id
                    for name in ("m_ok1", "m_ok2", "m_bad", "m_limited", "m_locked")
                ]
                wait_until(lambda: all(producer.get(i).status.terminal for i in ids))
                statuses = [producer.get(i).status for i in ids]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                worker_text = r.read().decode()
            deployment_text = run_cli(["metrics", "--once"], env).stdout
        finally:
            stop_worker(handle)
        assert statuses == [Status.PENDING] * 2 + [Status.FAILED] + [Status.PENDING] * 2
        got = samples(worker_text)
        accepted = (
            'adjustments_attempts_total{api="v1",http_status="200",outcome="accepted",platform=""}'
        )
        assert got[accepted] == 4
        assert sum(v for k, v in got.items() if k.startswith("adjustments_attempts_total")) == 7
        assert got['adjustments_stripe_429_total{platform="",reason="endpoint-rate"}'] == 1
        assert got['adjustments_stripe_429_total{platform="",reason="none"}'] == 1
        assert got['adjustments_retries_scheduled_total{api="v1"}'] == 2
        assert got['adjustments_stripe_call_seconds_count{api="v1"}'] == 7
        assert got["adjustments_enqueue_to_first_call_seconds_count"] == 5
        state = samples(deployment_text)
        assert state['adjustments_records{status="pending"}'] == 4
        assert state['adjustments_records{status="failed"}'] == 1
        assert state['adjustments_queue_messages{state="waiting"}'] == 0
        assert state["adjustments_oldest_live_record_age_seconds"] == 0  # none live

        names = exported_names(worker_text) | exported_names(deployment_text)
        rules = yaml.safe_load(RULES.read_text())
        in_rules = {n for g in rules["groups"] for r in g["rules"] for n in referenced(r["expr"])}
        dashboard = json.loads(DASHBOARD.read_text())
        in_dashboard = {
            n for p in dashboard["panels"] for t in p["targets"] for n in referenced(t["expr"])
        }
        assert in_rules and in_dashboard
        assert in_rules - names == set() and in_dashboard - names == set()


class TestAlertRules:
    def test_rules_pass_promtool(self) -> None:
        """The shipped alert rules pass promtool check rules (skipped, saying so, without
        promtool)."""
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool is not installed (Debian: apt-get install prometheus; CI does)")
        out = subprocess.run(
            [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SUCCESS" in out.stdout


class TestHonestStats:
    def test_oldest_live_age_and_queue_split(self, redis_url: str) -> None:
        """A request enqueued an hour ago (by its own clock) and still waiting is the oldest
        live record; the queue split counts it as waiting."""
        from datetime import UTC, datetime, timedelta

        settings = Settings(queue="oldest-q", key_prefix="oldest")
        with Producer(redis_url, settings=settings) as producer:
            try:
                an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
                producer.cancel("ev", "old_one", now=an_hour_ago)
                producer.cancel("ev", "new_one")
                stats = producer.stats()
                assert 3590 < stats.oldest_live_age_s < 3700
                assert (stats.queue.waiting, stats.queue.scheduled_retries) == (2, 0)
            finally:
                for key in [*producer.client.scan_iter("oldest:*"), "oldest-q"]:
                    producer.client.delete(key)


@pytest.mark.usefixtures("clean")
class TestCeleryEvents:
    def test_events_can_be_switched_on_and_a_permanent_failure_is_a_failed_task(
        self, own_redis_url: str, tmp_path: Path, worker_env: dict[str, str], sandbox: SandboxServer
    ) -> None:
        """`celery control enable_events` works on our worker (so Flower can watch it); a
        cancellation that fails permanently ends its task as FAILURE with our error, once (no
        Celery retry, no redelivery); and twelve tasks finishing together on four threads
        give twelve events (Celery's buffered task events lost some under the threads pool:
        a flush emptied events appended meanwhile, and the flush request could be dropped)."""
        from celery import Celery

        url = own_redis_url
        env = {**worker_env, "REDIS_URL": url}
        handle = start_worker(env, tmp_path / "worker.log", concurrency=4)
        watcher = Celery("watcher", broker=url, set_as_current=False)
        events: list[dict[str, object]] = []
        try:
            replies = watcher.control.enable_events(reply=True, timeout=5)
            assert replies and all("ok" in next(iter(r.values())) for r in replies), replies
            sandbox.logic.script("ev_bad", ["400"])
            with watcher.connection_for_read() as connection:
                receiver = watcher.events.Receiver(
                    connection,
                    handlers={
                        "task-failed": events.append,
                        "task-succeeded": events.append,
                        "task-retried": events.append,
                    },
                )
                # The event queue exists only once the receiver consumes: wait for a first
                # event (the worker's heartbeat, which wakeup asks for) before enqueueing.
                stream = receiver.itercapture(limit=None, timeout=30, wakeup=True)
                next(stream)
                with Producer(url, settings=Settings.from_env(env)) as producer:
                    try:
                        bad = producer.cancel("ev", "ev_bad", api="v1").id
                        wait_for_events(stream, events, 1)
                        result = producer.cancel_many(
                            [{"event_name": "ev", "identifier": f"ev_good_{i}"} for i in range(12)]
                        )
                        wait_for_events(stream, events, 13)
                    finally:
                        stream.close()  # leaves the consumer while the connection is open
                    assert producer.get(bad).status is Status.FAILED
                    good = [producer.get(str(i)) for i in result.ids]
                    assert all(r.status in (Status.PENDING, Status.COMPLETE) for r in good)
        finally:
            stop_worker(handle)
            watcher.close()
        kinds = [str(e["type"]) for e in events]
        assert kinds == ["task-failed"] + ["task-succeeded"] * 12
        failed = next(e for e in events if e["type"] == "task-failed")
        assert "CancellationFailed" in str(failed["exception"]) and bad in str(failed["exception"])
        assert sandbox.logic.executions.get("ev_bad", 0) == 0  # a 400 executes nothing...
        assert len(sandbox.logic.requests["ev_bad"]) == 1  # ...and it was sent once


def wait_for_events(stream: Any, events: list[dict[str, object]], count: int) -> None:
    """Drain events (worker heartbeats keep the stream turning) until ``count`` task events
    have arrived, or fail after a minute."""
    deadline = time.monotonic() + 60
    for _ in stream:
        if len(events) >= count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(events)} of {count} task events in 60 s: {events}")
