"""``adjustments demo``: the whole pipeline on this machine, checked against what it should do.

Embedded Redis (in a fresh temporary directory), the sandbox with faults switched on, one
worker process, COUNT cancellations across v1 and v2. Some are planted to fail (a scripted 400)
or to miss their window (received 24 h minus a few seconds ago, and answered 500 until the
window closes); every other one must end ``pending``, executed exactly once. The worker runs
with ADJUSTMENTS_COMPENSATE=expired and the missed ones carry their original event, so they
end ``compensated``: a negative meter event each on the sandbox's sum meter, and every
customer's usage is back to what it should be. A cancellation for an event received 25 h ago
is refused at enqueue, and the demo shows that too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import click

from .config import Settings
from .embedded import EmbeddedRedis, stop_process
from .errors import InvalidInput
from .models import TERMINAL, Status
from .producer import Producer
from .sandbox import SandboxConfig, SandboxServer

DEMO_KEY = "sk_test_demo_adjustments_0000"
EXPIRES_IN_S = 6  # the planted expiries' window closes this long after they are enqueued
DAY_AND_HOUR = timedelta(hours=25)
TIMEOUT_S = 1.0


EVENT_NAME = "api_requests"
CUSTOMERS = ("cus_demo_a", "cus_demo_b", "cus_demo_c")
RIGHT_USAGE = 100  # each customer's usage that should be billed
EXPIRED_GRACE_S = 20.0  # for the last expired records to be compensated


def _plan(i: int) -> Status:
    if i % 50 in (7, 8):
        return Status.FAILED  # the sandbox answers 400: permanent
    if i % 50 in (13, 14):
        # The window closes while the sandbox answers 500: expired, then compensated.
        return Status.COMPENSATED
    return Status.PENDING


def _worker_env(redis_url: str, sandbox_url: str, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        STRIPE_API_KEY=DEMO_KEY,
        STRIPE_API_BASE=sandbox_url,
        ADJUSTMENTS_DATA_DIR=str(data_dir),
        ADJUSTMENTS_STRIPE_TIMEOUT_S=str(TIMEOUT_S),
        ADJUSTMENTS_LEASE_S="10",
        ADJUSTMENTS_BACKOFF_BASE_S="0.05",
        ADJUSTMENTS_BACKOFF_CAP_S="1",
        # A stored 500 costs two attempts (the 500, then its replay): with ~16 % faults, 25
        # attempts make an exhausted record a one-in-billions event, so every planned
        # outcome is deterministic enough to check.
        ADJUSTMENTS_MAX_ATTEMPTS="25",
        # The sandbox is not Stripe: a faster shared rate than Stripe's 25/s default, and a
        # quick climb back after the injected 429s cut it (they are faults, not overload).
        ADJUSTMENTS_RATE_LIMIT="400",
        ADJUSTMENTS_RATE_RECOVERY_PER_S="400",
        ADJUSTMENTS_COMPENSATE="expired",
    )
    return env


def run_demo(*, count: int, seed: int, deadline_s: float = 300.0) -> int:
    """Run the demo; return 0 when every request reached its planned status."""
    work = Path(tempfile.mkdtemp(prefix="adjustments-demo-"))
    log_path = Path(Settings.from_env().data_dir) / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    redis_server = EmbeddedRedis(work)
    faults = SandboxConfig(
        latency_ms=20,
        error_500=0.04,
        error_429=0.04,
        error_429_retry=0.03,
        slow=0.01,
        slow_s=TIMEOUT_S + 0.5,
        drop=0.02,
        seed=seed,
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        url = redis_server.start()
        with SandboxServer(faults) as sandbox, open(log_path, "wb") as log_file:
            click.echo(
                f"redis   {url} (the bundled server, data in a temporary directory)", err=True
            )
            click.echo(f"sandbox {sandbox.url}  faults: 500 4%, 429 7%, timeout 1%, drop 2%")
            worker = subprocess.Popen(
                [sys.executable, "-m", "adjustments.cli", "worker", "--loglevel", "INFO"],
                env=_worker_env(url, sandbox.url, work),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            click.echo(f"worker  pid {worker.pid}, log lines in {log_path}")
            return _drive(url, sandbox, count=count, deadline_s=deadline_s)
    finally:
        if worker is not None:
            stop_process(worker, timeout_s=15)
        redis_server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _drive(url: str, sandbox: SandboxServer, *, count: int, deadline_s: float) -> int:
    settings = Settings.from_env()
    now = datetime.now(UTC)
    run = now.strftime("%H%M%S")
    plan: dict[str, Status] = {}
    meter = sandbox.logic.meters.define({"event_name": EVENT_NAME})
    stamp = int(now.timestamp()) - 600
    for n, customer in enumerate(CUSTOMERS):  # the usage that is right, already recorded
        _usage(sandbox, customer, str(RIGHT_USAGE), stamp, f"demo_{run}_right_{n}")
    with Producer(url, settings=settings) as producer:
        for i in range(count):
            identifier = f"demo_{run}_{i:05d}"
            expected = _plan(i)
            received = None
            original = None
            if expected is Status.FAILED:
                sandbox.logic.script(identifier, ["400"])
            elif expected is Status.COMPENSATED:
                sandbox.logic.script(identifier, ["500"] * 100)
                received = now - timedelta(hours=24) + timedelta(seconds=EXPIRES_IN_S)
                # The wrong usage this cancellation was meant to undo, billed meanwhile.
                payload = {"stripe_customer_id": CUSTOMERS[i % 3], "value": str(i % 4 + 1)}
                _usage(sandbox, payload["stripe_customer_id"], payload["value"], stamp, identifier)
                original = {"payload": payload, "timestamp": stamp}
            record = producer.cancel(
                EVENT_NAME,
                identifier,
                api="v1" if i % 2 else "v2",
                event_received_at=received,
                original_event=original,
                reason="demo: a duplicate send",
            )
            plan[record.id] = expected
        billed = {c: sandbox.logic.meters.usage(meter.id, c) for c in CUSTOMERS}
        click.echo(
            f"enqueued {count} cancellations in {(datetime.now(UTC) - now).total_seconds():.2f} s"
        )
        try:
            producer.cancel(EVENT_NAME, "demo_too_late", event_received_at=now - DAY_AND_HOUR)
        except InvalidInput as exc:
            click.echo(f"refused one received 25 h ago, as it should be: {exc}")
        else:
            click.echo("FAILED: a cancellation 25 h after the event was accepted")
            return 1
        done = 0
        stop_at = time.monotonic() + deadline_s
        # An expired record with its original event moves on to compensated: the bar counts
        # it once it got there (or, should it stay expired, once the others have settled).
        expired_since: float | None = None
        with click.progressbar(length=count, label="cancelling", file=sys.stderr) as bar:
            while done < count and time.monotonic() < stop_at:
                counts = producer.counts()
                terminal = sum(counts[s.value] for s in TERMINAL)
                settled = terminal - counts[Status.EXPIRED.value]
                if terminal == count:
                    expired_since = expired_since or time.monotonic()
                    if time.monotonic() - expired_since > EXPIRED_GRACE_S:
                        settled = terminal
                bar.update(settled - done)
                done = settled
                time.sleep(0.2)
        records = [producer.get(record_id) for record_id in plan]
    code = _report(records, plan, sandbox)
    return code or _usage_report(sandbox, meter.id, billed)


def _usage(sandbox: SandboxServer, customer: str, value: str, stamp: int, ident: str) -> None:
    """A meter event as the billing service sent it, straight into the sandbox's meter."""
    body = urlencode(
        {
            "event_name": EVENT_NAME,
            "payload[stripe_customer_id]": customer,
            "payload[value]": value,
            "timestamp": stamp,
            "identifier": ident,
        }
    )
    sandbox.logic.meters.record("v1", body.encode(), "")


def _usage_report(sandbox: SandboxServer, meter_id: str, billed: dict[str, Decimal]) -> int:
    """Each customer's usage before the compensations and after, as Stripe's event summaries
    give it (the SDK against the sandbox): back to what is right."""
    import stripe

    client = stripe.StripeClient(DEMO_KEY, base_addresses={"api": sandbox.url})
    now = int(time.time())
    click.echo("")
    click.echo(f"{'customer':<13}{'billed':>8}{'now':>8}{'right':>8}")
    wrong = 0
    for customer in CUSTOMERS:
        summary = client.v1.billing.meters.event_summaries.list(
            meter_id, params={"customer": customer, "start_time": now - 86400, "end_time": now}
        )
        after = Decimal(str(summary.data[0].aggregated_value))
        wrong += after != RIGHT_USAGE
        shown = format(after.normalize(), "f")
        click.echo(f"{customer:<13}{billed[customer]:>8}{shown:>8}{RIGHT_USAGE:>8}")
    if wrong:
        click.echo(f"FAILED: {wrong} customer(s) still billed for usage that was cancelled")
        return 1
    click.echo("OK: every missed window was compensated; each customer's usage is right again")
    return 0


def _report(records: list, plan: dict[str, Status], sandbox: SandboxServer) -> int:  # type: ignore[type-arg]
    by_status: Counter[tuple[str, str]] = Counter()
    attempts: Counter[str] = Counter()
    for r in records:
        by_status[(r.status.value, r.api)] += 1
        attempts[
            "1" if r.attempts <= 1 else "2" if r.attempts == 2 else "3" if r.attempts == 3 else "4+"
        ] += 1
    click.echo("")
    click.echo(f"{'status':<11}{'v1':>7}{'v2':>7}{'total':>8}")
    for status in Status:
        v1, v2 = by_status[(status.value, "v1")], by_status[(status.value, "v2")]
        if v1 or v2:
            click.echo(f"{status.value:<11}{v1:>7}{v2:>7}{v1 + v2:>8}")
    click.echo("")
    click.echo("attempts   " + "  ".join(f"{k}: {attempts[k]}" for k in ("1", "2", "3", "4+")))
    stats = sandbox.logic.stats()
    executions: dict[str, int] = stats["executions"]
    click.echo(
        f"sandbox    {stats['requests_total']} requests, {stats['executed_total']} executed, "
        f"most executions of one event: {max(executions.values(), default=0)}"
    )
    wrong = [r for r in records if r.status is not plan[r.id]]
    twice = [k for k, v in executions.items() if v > 1]
    missing = [
        r for r in records if plan[r.id] is Status.PENDING and executions.get(r.identifier) != 1
    ]
    if wrong or twice or missing:
        for r in wrong[:10]:
            click.echo(
                f"MISMATCH {r.id} {r.identifier}: {r.status.value}, expected {plan[r.id].value}"
            )
        click.echo(
            f"FAILED: {len(wrong)} wrong status, {len(twice)} executed twice, "
            f"{len(missing)} not executed"
        )
        return 1
    click.echo(f"OK: all {len(records)} requests reached the status the sandbox's faults call for")
    return 0
