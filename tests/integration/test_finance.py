"""Finance (issue 20) with a real worker, Redis and the sandbox: the compensation plan equals
what is then sent, and the export holds every record once, in both formats, in flat memory."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import cast

import pytest
import redis
import stripe

from adjustments.config import Settings
from adjustments.errors import RecordNotFound
from adjustments.models import Status
from adjustments.producer import Producer
from adjustments.sandbox import SandboxServer
from tests.helpers import SECRET, run_cli, wait_until

EXPORT_RECORDS = 20_000
EXPORT_RSS_LIMIT_KB = 150 * 1024  # the bound for a million records; flat, so it holds here


def expired(
    producer: Producer, worker_env: dict[str, str], items: list[dict[str, object]]
) -> list[str]:
    """Write ``items`` (their windows closing within seconds) with their messages on a queue
    no worker reads, let the windows close, and let reconciliation expire them."""
    env = {**worker_env, "ADJUSTMENTS_QUEUE": "finance-void"}
    with Producer(env["REDIS_URL"], settings=Settings.from_env(env)) as side:
        ids = [str(i) for i in side.cancel_many(items).ids]
    closes = max(producer.get(i).deadline for i in ids)
    time.sleep(max(0.0, (closes - datetime.now(UTC)).total_seconds()) + 0.1)
    producer.operations.reconcile(grace_s=0)
    assert all(producer.get(i).status is Status.EXPIRED for i in ids)
    return ids


def test_the_dry_run_plan_equals_what_is_then_sent(
    producer: Producer, sandbox: SandboxServer, worker_env: dict[str, str]
) -> None:
    """Expired records with their original events on a raw sum meter: the plan's total per
    customer (meters looked up through the SDK, as the worker does) is exactly the sum of the
    negative meter events the worker then sends; nothing is sent by the dry run."""
    meter = sandbox.logic.meters.define({"event_name": "api_sum"})
    closes = datetime.now(UTC) + timedelta(seconds=1)
    ts = int(time.time()) - 600
    items: list[dict[str, object]] = [
        {
            "event_name": "api_sum",
            "identifier": f"plan_{i}",
            "api": "v2" if i % 2 else "v1",
            "event_received_at": closes - timedelta(hours=24),
            "original_event": {
                "payload": {"stripe_customer_id": f"cus_{i % 3}", "value": f"{i % 5 + 1}.5"},
                "timestamp": ts,
            },
        }
        for i in range(12)
    ]
    ids = expired(producer, worker_env, items)
    plan = producer.operations.compensate(dry_run=True, ids=ids).to_dict()
    assert plan["meters_checked"] is True and plan["records"] == 12
    assert not sandbox.logic.meters.events  # a dry run sends nothing
    report = producer.operations.compensate(dry_run=False, ids=ids)
    assert len(report.begun) == 12
    wait_until(
        lambda: all(producer.get(i).status is Status.COMPENSATED for i in ids),
        what="the compensations",
    )
    sent: dict[str, Decimal] = defaultdict(Decimal)
    for event in sandbox.logic.meters.events:
        assert event.meter_id == meter.id and event.value < 0 and event.timestamp == ts
        sent[event.customer] += event.value
    rows = cast(list[dict[str, str]], plan["by_customer"])
    planned = {row["customer"]: Decimal(row["total_value"]) for row in rows}
    assert planned == dict(sent)
    # The customer's summed usage, as Stripe's event summaries give it (through the SDK).
    client = stripe.StripeClient(SECRET, base_addresses={"api": sandbox.url})
    summary = client.v1.billing.meters.event_summaries.list(
        meter.id, params={"customer": "cus_0", "start_time": ts - 60, "end_time": ts + 60}
    )
    assert Decimal(str(summary.data[0].aggregated_value)) == sent["cus_0"]


def test_the_dry_run_command_prints_the_plan_and_refuses_without_yes(
    producer: Producer, sandbox: SandboxServer, worker_env: dict[str, str]
) -> None:
    """`adjustments compensate --dry-run` prints per customer the total; without --dry-run
    and without a terminal to confirm on, it refuses (exit 2) and begins nothing."""
    sandbox.logic.meters.define({"event_name": "api_sum"})
    item = {
        "event_name": "api_sum",
        "identifier": "cli_plan",
        "event_received_at": datetime.now(UTC) - timedelta(hours=24) + timedelta(seconds=1),
        "original_event": {
            "payload": {"stripe_customer_id": "cus_Z", "value": "7"},
            "timestamp": int(time.time()),
        },
    }
    record_id = expired(producer, worker_env, [item])[0]
    out = run_cli(["compensate", "--dry-run"], worker_env)
    assert out.returncode == 0, out.stderr
    assert "cus_Z  api_sum  1 record  total -7" in out.stdout
    assert "would compensate 1 record, skipped 0" in out.stdout
    refused = run_cli(["compensate"], worker_env)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert producer.get(record_id).status is Status.EXPIRED and not sandbox.logic.meters.events


def test_cancel_takes_the_original_event_reason_and_who_asked(
    producer: Producer, worker_env: dict[str, str]
) -> None:
    """The CLI stores --payload/--event-timestamp/--reason/--requested-by; a payload without
    KEY=VALUE is refused with exit 2 and writes nothing."""
    stamp = str(int(time.time()) - 60)
    out = run_cli(
        [
            *("cancel", "ev", "cli_full", "--payload", "stripe_customer_id=cus_1"),
            *("--payload", "value=3", "--event-timestamp", stamp, "--reason", "test call"),
            *("--requested-by", "alice", "--json"),
        ],
        worker_env,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["original_event"]["payload"] == {"stripe_customer_id": "cus_1", "value": "3"}
    assert (data["reason"], data["requested_by"]) == ("test call", "alice")
    bad = run_cli(["cancel", "ev", "cli_bad", "--payload", "novalue"], worker_env)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    with pytest.raises(RecordNotFound):
        producer.find("ev", "cli_bad")


@pytest.fixture
def export_env(worker_env: dict[str, str], redis_url: str) -> Iterator[dict[str, str]]:
    """A prefix and queue of their own, no worker: the records stay as written."""
    env = {**worker_env, "ADJUSTMENTS_KEY_PREFIX": "exp", "ADJUSTMENTS_QUEUE": "exp-q"}
    yield env
    client = redis.Redis.from_url(redis_url)
    written = list(client.scan_iter("exp*", count=10_000))
    for start in range(0, len(written), 10_000):  # in batches: one fsync each, not one a key
        client.delete(*written[start : start + 10_000])
    client.close()


# Runs a command and prints its peak RSS (KiB) and exit code. A child's ru_maxrss counts the
# image it was forked from before it ran exec, so the command is started from this small
# process, not from the test's (which holds the 20,000 items).
PEAK_RSS = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
    "_, status, usage = os.wait4(p.pid, 0); "
    "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))"
)


def _export(env: dict[str, str], fmt: str, path: Path) -> int:
    """Run `adjustments export` to ``path``; its peak RSS in KiB."""
    argv = [sys.executable, "-m", "adjustments.cli", "export", "--format", fmt, "-o", str(path)]
    log = path.with_suffix(".log")
    with open(log, "wb") as err:
        measured = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, *argv],
            env=env, stdout=subprocess.PIPE, stderr=err, text=True, check=False,
        )  # fmt: skip
    stderr = log.read_text()
    rss_kb, code = (int(x) for x in measured.stdout.split())
    assert code == 0, stderr
    assert f"exported {EXPORT_RECORDS} records to" in stderr
    return rss_kb


def test_the_export_holds_every_record_once_in_both_formats(
    export_env: dict[str, str], tmp_path: Path
) -> None:
    """20,000 records with a reason and who asked: the CSV and the JSONL export each hold
    every record exactly once with both, and the process stays within the memory bound."""
    with Producer(export_env["REDIS_URL"], settings=Settings.from_env(export_env)) as producer:
        items = [
            {
                "event_name": "ev",
                "identifier": f"x_{i}",
                "reason": f"=refund {i}" if i == 7 else f"refund {i}",
                "requested_by": "finance-bot",
                "original_event": {
                    "payload": {"stripe_customer_id": "cus_9", "value": "2"},
                    "timestamp": int(time.time()),
                },
            }
            for i in range(EXPORT_RECORDS)
        ]
        result = producer.cancel_many(items)
        assert result.created == EXPORT_RECORDS
    rss = {}
    for fmt in ("csv", "jsonl"):
        path = tmp_path / f"out.{fmt}"
        rss[fmt] = _export(export_env, fmt, path)
        text = path.read_text(encoding="utf-8")
        rows = (
            list(csv.DictReader(io.StringIO(text)))
            if fmt == "csv"
            else [json.loads(line) for line in text.splitlines()]
        )
        assert len(rows) == EXPORT_RECORDS
        assert len({r["id"] for r in rows}) == EXPORT_RECORDS  # each once
        assert {r["requested_by"] for r in rows} == {"finance-bot"}
        assert all(r["reason"].lstrip("'=").startswith("refund") for r in rows)
        assert {(r["customer"], r["value"]) for r in rows} == {("cus_9", "2")}
        formula = next(r for r in rows if r["identifier"] == "x_7")["reason"]
        assert formula == ("'=refund 7" if fmt == "csv" else "=refund 7")  # no CSV injection
    assert max(rss.values()) < EXPORT_RSS_LIMIT_KB, rss
