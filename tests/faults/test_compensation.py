"""Compensation end to end (issue 20): real Redis, real workers, the sandbox's meters. Records
whose window closed before any worker ran end ``compensated`` exactly once on a raw sum meter
(v1 and v2), with a worker killed -9 in the middle; on a count meter and an hourly
pre-aggregated one they stay ``expired`` with the reason and nothing is sent; without their
original event they stay ``expired``. Each customer's usage is back to what it should be."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import pytest

from adjustments.compensation import identifier_for
from adjustments.models import Record, Status
from adjustments.sandbox import SandboxServer
from tests.helpers import WorkerProcess, stop_worker, store_of, wait_until

from .conftest import RedisProcess, fault_env, producer_for, start_fault_worker

pytestmark = pytest.mark.slow
CUSTOMERS = [f"cus_{c}" for c in "ABCDEF"]


def record_usage(sandbox: SandboxServer, event_name: str, customer: str, value: str, ts: int,
                 ident: str) -> None:  # fmt: skip
    """The billing service's original meter event, straight into the sandbox."""
    body = urlencode({"event_name": event_name, "payload[stripe_customer_id]": customer,
                      "payload[value]": value, "timestamp": ts, "identifier": ident})  # fmt: skip
    sandbox.logic.meters.record("v1", body.encode(), "")


def build_items(sandbox: SandboxServer, received: datetime) -> list[dict[str, object]]:
    """30 on the raw sum meter (their usage recorded first), 10 on the count meter, 5 on the
    hourly one, 10 without an original event; every event received at ``received``."""
    ts = int(time.time()) - 3600
    items: list[dict[str, object]] = []
    for i in range(30):
        customer, value = CUSTOMERS[i % 6], str(i % 4 + 1)
        record_usage(sandbox, "api_sum", customer, value, ts, f"sum_{i}")
        items.append(
            {
                "event_name": "api_sum",
                "identifier": f"sum_{i}",
                "api": "v1" if i % 2 else "v2",
                "event_received_at": received,
                "original_event": {
                    "payload": {"stripe_customer_id": customer, "value": value},
                    "timestamp": ts,
                },
                "reason": "duplicate send",
            }
        )
    for name, count in (("api_count", 10), ("api_hourly", 5)):
        for i in range(count):
            event = {"payload": {"stripe_customer_id": "cus_A", "value": "1"}, "timestamp": ts}
            items.append({"event_name": name, "identifier": f"{name}_{i}",
                          "event_received_at": received, "original_event": event})  # fmt: skip
    for i in range(10):
        items.append({"event_name": "api_sum", "identifier": f"bare_{i}",
                      "event_received_at": received})  # fmt: skip
    return items


def check(
    records: list[Record], sandbox: SandboxServer, meter_id: str, before: dict[str, Decimal]
) -> None:
    """Compensated once each where sound, nothing sent elsewhere, usage back to zero."""
    executions = sandbox.logic.executions
    for record in records[:30]:
        assert executions[identifier_for(record.id)] == 1, record.id  # exactly once
        assert record.compensation_identifier == identifier_for(record.id)
        assert record.reason == "duplicate send"
    for record in records[30:40]:
        assert "aggregates by count" in str(record.compensation_error)
    for record in records[40:45]:
        assert "pre-aggregated per hour" in str(record.compensation_error)
    for record in records[45:]:
        assert record.compensation_error is None and record.phase == ""
    for record in records[30:]:
        assert executions.get(identifier_for(record.id), 0) == 0  # nothing sent
    assert not any(executions.get(r.identifier) for r in records)  # no cancellation call
    for customer in CUSTOMERS:
        assert before[customer] > 0
        assert sandbox.logic.meters.usage(meter_id, customer) == Decimal(0), customer


def test_missed_windows_are_compensated_once_where_sound(
    redis_proc: RedisProcess, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """55 records past their window, one worker killed -9 mid-way: 30 compensated once each,
    the 25 others expired (with the reason where a compensation was possible to ask for)."""
    env = fault_env(
        redis_proc.url,
        fault_sandbox,
        tmp_path / "data",
        ADJUSTMENTS_COMPENSATE="expired",
        ADJUSTMENTS_RATE_LIMIT="10",
        ADJUSTMENTS_RATE_BURST="1",
        ADJUSTMENTS_LEASE_S="3",
        ADJUSTMENTS_STRIPE_TIMEOUT_S="2",
        ADJUSTMENTS_HEARTBEAT_S="0.5",
    )
    book = fault_sandbox.logic.meters
    raw_sum = book.define({"event_name": "api_sum"})
    book.define({"event_name": "api_count", "formula": "count"})
    book.define({"event_name": "api_hourly", "event_time_window": "hour"})
    closes = datetime.now(UTC) + timedelta(seconds=3)
    items = build_items(fault_sandbox, closes - timedelta(hours=24))
    before = {c: book.usage(raw_sum.id, c) for c in CUSTOMERS}
    producer = producer_for(env)
    result = producer.cancel_many(items)
    ids = [str(i) for i in result.ids]
    assert len(ids) == 55 and result.created == 55
    # Every window closes before any worker runs.
    time.sleep(max(0.0, (closes - datetime.now(UTC)).total_seconds()) + 0.2)
    victim = start_fault_worker(env, tmp_path / "victim.log", concurrency=8)
    successor: WorkerProcess | None = None
    try:

        def compensated() -> int:
            return sum(fault_sandbox.logic.executions.get(identifier_for(i), 0) for i in ids[:30])

        wait_until(lambda: compensated() >= 8, timeout_s=30, what="compensations under way")
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        assert compensated() < 30, "the kill came too late"
        successor = start_fault_worker(env, tmp_path / "successor.log", concurrency=8)

        def settled() -> bool:
            producer.operations.reconcile(grace_s=1)  # beat's job, every minute in production
            records = store_of(producer).get_many(ids)
            return all(
                r.status is (Status.COMPENSATED if n < 30 else Status.EXPIRED)
                for n, r in enumerate(records)
            )

        wait_until(settled, timeout_s=60, what="every record settled")
        check(store_of(producer).get_many(ids), fault_sandbox, raw_sum.id, before)
    finally:
        producer.close()
        if successor is not None:
            stop_worker(successor)
        if victim.process.poll() is None:
            victim.process.kill()
