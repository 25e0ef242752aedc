"""CLI commands on requests and records: cancel, status, list, stats, health, workers."""

from __future__ import annotations

import getpass
import socket
import time
from datetime import datetime
from typing import Any

import click

from ..config import APIS
from ..errors import InvalidInput, Unhealthy
from ..intake import Intake
from ..models import Status
from .common import emit, printable, producer_for, record_line, record_view, settings


@click.command()
@click.argument("event_name")
@click.argument("identifier")
@click.option(
    "--api", type=click.Choice(APIS), help="Stripe endpoint (default: ADJUSTMENTS_STRIPE_API)."
)
@click.option(
    "--account",
    "stripe_account",
    help="Connected account: acct_... (v1 sends Stripe-Account), or for v2 acct_... or "
    "acct_.../acct_... (sent as Stripe-Context).",
)
@click.option("--received-at", help="When Stripe received the event (ISO 8601 with offset).")
@click.option(
    "--payload",
    "payload",
    multiple=True,
    metavar="KEY=VALUE",
    help="The original event's payload, as sent to Stripe (repeatable): what a compensation "
    "negates if the window is missed.",
)
@click.option(
    "--event-timestamp", help="The original event's timestamp (ISO 8601 or epoch seconds)."
)
@click.option("--reason", help="Why it is cancelled (up to 500 characters), for finance.")
@click.option("--requested-by", help="Who asked (default: the OS user).")
@click.option(
    "--platform", help="Which Stripe account of ADJUSTMENTS_PLATFORMS (default: the first)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the record as one JSON object.")
def cancel(
    event_name: str,
    identifier: str,
    api: str | None,
    stripe_account: str | None,
    received_at: str | None,
    payload: tuple[str, ...],
    event_timestamp: str | None,
    reason: str | None,
    requested_by: str | None,
    platform: str | None,
    as_json: bool,
) -> None:
    """Enqueue the cancellation of one meter event and print its record (a request already
    known is not enqueued again: its record is printed, marked as a duplicate)."""
    cfg = settings()
    now = datetime.now().astimezone()
    original = _original_event(payload, event_timestamp)
    who = requested_by if requested_by is not None else _os_user()
    # Validate before touching Redis, so bad input writes nothing (and starts nothing).
    Intake(cfg).request(
        event_name,
        identifier,
        api,
        stripe_account,
        received_at,
        now=now,
        extra={
            "original_event": original,
            "reason": reason,
            "requested_by": who,
            "platform": platform,
        },
    )
    with producer_for(cfg) as producer:
        record = producer.cancel(
            event_name,
            identifier,
            api=api,
            stripe_account=stripe_account,
            event_received_at=received_at,
            original_event=original,
            reason=reason,
            requested_by=who,
            platform=platform,
            now=now,
        )
    if as_json:
        emit({**record.to_dict(), "created": record.created}, True)
    else:
        note = "" if record.created else "  (duplicate: this request was already known)"
        click.echo(record_line(record) + note)


def _original_event(pairs: tuple[str, ...], timestamp: str | None) -> dict[str, Any] | None:
    """--payload KEY=VALUE and --event-timestamp as an original event (None: neither)."""
    if not pairs and timestamp is None:
        return None
    payload: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--payload takes KEY=VALUE, got {pair!r}")
        payload[key] = value
    stamp: object = timestamp
    if timestamp is not None and timestamp.strip().isdigit():
        stamp = int(timestamp)  # epoch seconds
    return {"payload": payload, "timestamp": stamp}


def _os_user() -> str | None:
    """The OS user running the command (None when it has no name)."""
    try:
        return getpass.getuser() or None
    except (KeyError, OSError):
        return None


@click.command()
@click.argument("request", nargs=-1, required=True, metavar="REQUEST_ID | EVENT_NAME IDENTIFIER")
@click.option("--api", type=click.Choice(APIS), help="With EVENT_NAME IDENTIFIER: the API.")
@click.option("--account", "stripe_account", help="With EVENT_NAME IDENTIFIER: the account.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as one JSON object.")
def status(
    request: tuple[str, ...], api: str | None, stripe_account: str | None, as_json: bool
) -> None:
    """Show one request's record: by the id `cancel` printed, or by what was cancelled
    (EVENT_NAME IDENTIFIER, with --api and --account as given to `cancel`)."""
    if len(request) > 2:
        raise click.UsageError("give a request id, or an event name and an identifier")
    with producer_for(settings(), read_only=True) as producer:
        if len(request) == 1:
            record = producer.get(request[0], with_history=True)
        else:
            record = producer.find(
                request[0], request[1], api=api, stripe_account=stripe_account, with_history=True
            )
    if as_json:
        emit(record.to_dict(), True)
        return
    for line in record_view(record):
        click.echo(line)


@click.command(name="list")
@click.option("--status", "status_", type=click.Choice([s.value for s in Status]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--platform", help="Only this platform's records (ADJUSTMENTS_PLATFORMS).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of records.")
def list_(status_: str | None, limit: int, platform: str | None, as_json: bool) -> None:
    """List records, newest first."""
    with producer_for(settings(), read_only=True) as producer:
        status = Status(status_) if status_ else None
        records = producer.latest(status, limit=limit, platform=platform)
    if as_json:
        emit([r.to_dict() for r in records], True)
    elif not records:
        click.echo(f"no {status_} records" if status_ else "no records")
    else:
        for record in records:
            click.echo(record_line(record))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(as_json: bool) -> None:
    """Records per status, the queue (waiting, held by workers, retries scheduled), live
    workers and the shared Stripe rate as the workers use it."""
    with producer_for(settings(), read_only=True) as producer:
        data = producer.stats()
    if as_json:
        emit(data.to_dict(), True)
        return
    records, queue = data.records, data.queue
    for name, count in records.items():
        click.echo(f"{name:<11} {count}")
    click.echo(
        f"{'queue':<11} {queue.waiting} waiting, {queue.held_by_workers} held by "
        f"workers, {queue.scheduled_retries} retries scheduled"
    )
    click.echo(f"{'dead letters':<11} {data.dead_letters}")
    click.echo(f"{'workers':<11} {data.workers_alive} alive")
    live = sum(records[s] for s in ("queued", "processing", "retrying"))
    oldest = f"{data.oldest_live_age_s:.1f} s" if live else "none live"
    click.echo(f"{'oldest live':<11} {oldest}")
    expiring, first = data.expiry_forecast, data.expiry_forecast_first_miss
    click.echo(
        f"{'forecast':<11} "
        + (
            f"{expiring} will expire at the current rate, the first at {first}"
            if expiring
            else "nothing will expire at the current rate"
        )
    )
    rate = data.rate_limit
    click.echo(
        f"{'stripe rate':<11} {rate.current_per_s}/s (limit {rate.configured_per_s}/s, "
        f"from {rate.source})"
    )
    for name, one in (data.platforms or {}).items():
        pr = one.rate_limit
        click.echo(
            f"{'platform':<11} {name}: {one.ready} ready, {pr.current_per_s}/s (limit "
            f"{pr.configured_per_s}/s), {one.expiry_forecast} will expire at that rate"
        )


@click.command()
@click.option("--node", help="A worker's node name (default: any worker on this host).")
def health(node: str | None) -> None:
    """Exit 0 when Redis answers and a worker on this host (or NODE) is alive and consuming,
    else 1 with one line: a container health check. A worker counts as dead three heartbeats
    after its last (ADJUSTMENTS_HEARTBEAT_S, default 5 s), and as not consuming when its
    consumer is stopped, disconnected from the broker or its event loop has stalled."""
    with producer_for(settings(), read_only=True) as producer:
        alive = producer.readouts.workers()
    host = socket.gethostname()
    where = f"as {node}" if node else f"on {host}"
    mine = [w for w in alive if (w.node == node if node else w.host == host)]
    if not mine:
        where = f"named {node}" if node else f"on {host}"
        raise Unhealthy(f"no live worker {where} ({len(alive)} alive elsewhere)")
    consuming = [w for w in mine if not w.problem]
    if not consuming:
        raise Unhealthy(f"worker {mine[0].node} alive but not consuming: {mine[0].problem}")
    click.echo(f"ok: {len(consuming)} worker(s) alive and consuming {where}")


@click.command(name="workers")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def workers_cmd(as_json: bool) -> None:
    """The workers alive now, from their heartbeats in Redis."""
    with producer_for(settings(), read_only=True) as producer:
        alive = producer.readouts.workers()
    if as_json:
        emit([w.to_dict() for w in alive], True)
        return
    if not alive:
        click.echo("no workers alive (no heartbeat in Redis)")
        return
    now = time.time()
    for w in alive:
        last = f"{now - w.last_task_at:.0f} s ago" if w.last_task_at else "none yet"
        click.echo(
            printable(
                f"{w.node}  pid {w.pid}  v{w.version}  threads {w.concurrency}  "
                f"in flight {w.in_flight}  last task {last}"
            )
        )
