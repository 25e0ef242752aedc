"""The ``adjustments`` command: a thin shell over the producer, the worker and the sandbox.

Bad input prints one line on stderr and exits 2, before anything is written.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from datetime import datetime
from typing import Any, cast

import click
import redis
from click.exceptions import NoArgsIsHelpError

from ..config import APIS
from ..embedded import redis_url
from ..errors import AdjustmentsError, ConfigError, InvalidInput, RecordNotFound, Unhealthy
from ..logging import configure as configure_logging
from ..logging import get_logger
from ..models import CancelRequest, Status
from ..redact import redact
from .common import emit, printable, producer_for, record_line, record_view, settings
from .recovery import (
    beat_cmd,
    compensate_cmd,
    export_cmd,
    import_cmd,
    reconcile_cmd,
    replay_cmd,
)

_SURROGATE = re.compile("[\ud800-\udfff]")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="adjustments")
def cli() -> None:
    """Cancel Stripe meter events through a queue, with retries, records and replay."""
    # Log lines go to stderr so that stdout carries only the command's output (--json).
    # The worker and beat re-point them at stdout when Celery sets up logging.
    configure_logging(stream=sys.stderr)


@cli.command()
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
    try:
        chosen = cfg.platform(platform).name or None
    except ConfigError as exc:
        raise InvalidInput(str(exc)) from None
    CancelRequest.build(
        event_name,
        identifier,
        api=api or cfg.default_api,
        stripe_account=stripe_account,
        event_received_at=received_at,
        original_event=original,
        reason=reason,
        requested_by=who,
        platform=chosen,
        now=now,
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


@cli.command()
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


@cli.command(name="list")
@click.option("--status", "status_", type=click.Choice([s.value for s in Status]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--platform", help="Only this platform's records (ADJUSTMENTS_PLATFORMS).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of records.")
def list_(status_: str | None, limit: int, platform: str | None, as_json: bool) -> None:
    """List records, newest first."""
    with producer_for(settings(), read_only=True) as producer:
        if platform is None:
            records = producer.list(Status(status_) if status_ else None, limit=limit)
        else:
            records = producer.records_of(platform, Status(status_) if status_ else None, limit)
    if as_json:
        emit([r.to_dict() for r in records], True)
    elif not records:
        click.echo(f"no {status_} records" if status_ else "no records")
    else:
        for record in records:
            click.echo(record_line(record))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(as_json: bool) -> None:
    """Records per status, the queue (waiting, held by workers, retries scheduled), live
    workers and the shared Stripe rate as the workers use it."""
    with producer_for(settings(), read_only=True) as producer:
        data = producer.stats()
    if as_json:
        emit(data, True)
        return
    records = data["records"]
    assert isinstance(records, dict)
    for name, count in records.items():
        click.echo(f"{name:<11} {count}")
    queue = data["queue"]
    assert isinstance(queue, dict)
    click.echo(
        f"{'queue':<11} {queue['waiting']} waiting, {queue['held_by_workers']} held by "
        f"workers, {queue['scheduled_retries']} retries scheduled"
    )
    click.echo(f"{'dead letters':<11} {data['dead_letters']}")
    click.echo(f"{'workers':<11} {data['workers_alive']} alive")
    oldest = float(cast(float, data["oldest_live_age_s"]))
    live = sum(records[s] for s in ("queued", "processing", "retrying"))
    click.echo(f"{'oldest live':<11} {f'{oldest:.1f} s' if live else 'none live'}")
    expiring, first = data["expiry_forecast"], data["expiry_forecast_first_miss"]
    click.echo(
        f"{'forecast':<11} "
        + (
            f"{expiring} will expire at the current rate, the first at {first}"
            if expiring
            else "nothing will expire at the current rate"
        )
    )
    rate = data["rate_limit"]
    assert isinstance(rate, dict)
    click.echo(
        f"{'stripe rate':<11} {rate['current_per_s']}/s (limit {rate['configured_per_s']}/s, "
        f"from {rate['source']})"
    )
    for name, one in cast(dict[str, dict[str, Any]], data.get("platforms") or {}).items():
        pr = one["rate_limit"]
        click.echo(
            f"{'platform':<11} {name}: {one['ready']} ready, {pr['current_per_s']}/s (limit "
            f"{pr['configured_per_s']}/s), {one['expiry_forecast']} will expire at that rate"
        )


@cli.command()
@click.option("--node", help="A worker's node name (default: any worker on this host).")
def health(node: str | None) -> None:
    """Exit 0 when Redis answers and a worker on this host (or NODE) is alive and consuming,
    else 1 with one line: a container health check. A worker counts as dead three heartbeats
    after its last (ADJUSTMENTS_HEARTBEAT_S, default 5 s), and as not consuming when its
    consumer is stopped, disconnected from the broker or its event loop has stalled."""
    with producer_for(settings(), read_only=True) as producer:
        alive = producer.workers()
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


@cli.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--insecure-local",
    is_flag=True,
    help="Serve without tokens (only on a loopback address): everyone is an operator.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="A Host name to answer besides the loopback names and --host (repeatable; the "
    "name clients use, e.g. adjustments.internal; * answers any).",
)
def serve_cmd(host: str, port: int, insecure_local: bool, allowed_hosts: tuple[str, ...]) -> None:
    """Serve the HTTP API (/api/v1, /openapi.json), the operations console (/console),
    /healthz and /metrics. Tokens come from ADJUSTMENTS_API_TOKENS=role:token[,...] with
    the roles enqueue, read and operate; without any, it refuses to start.

    Starts while Redis is down and answers 503 until it is back; requests for a Host name
    not allowed get 400 (DNS rebinding)."""
    from ..http.auth import Auth, parse_tokens
    from ..http.server import check_exposure, serve

    cfg = settings()
    auth = Auth(parse_tokens(cfg.api_tokens))
    check_exposure(auth, host, insecure_local)
    with producer_for(cfg) as producer:
        try:
            producer.check_server()  # a server that can never keep our promises: exit 2
        except redis.RedisError as exc:  # down for now: checked again at the first write
            get_logger("adjustments.http").warning(
                "redis.unavailable_at_start", error=" ".join(str(exc).split())
            )
        serve(producer, auth, host, port, extra_hosts=allowed_hosts)


@cli.command(name="workers")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def workers_cmd(as_json: bool) -> None:
    """The workers alive now, from their heartbeats in Redis."""
    with producer_for(settings(), read_only=True) as producer:
        alive = producer.workers()
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


@cli.command(name="metrics")
@click.option("--port", type=click.IntRange(1, 65535), default=9808, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (loopback by default, like serve; 0.0.0.0 for a scraper "
    "on another host).",
)
@click.option("--once", is_flag=True, help="Print the metrics once on stdout and exit.")
def metrics_cmd(port: int, host: str, once: bool) -> None:
    """Serve the deployment's Prometheus metrics, read from Redis at each scrape: records by
    status, the queue split, windows about to close, the oldest live record's age, the shared
    rate, live workers, the last reconciliation. (Each worker serves its own attempt metrics on
    ADJUSTMENTS_METRICS_PORT.)"""
    from prometheus_client import CollectorRegistry, generate_latest

    from ..metrics.deployment import DeploymentCollector, serve_deployment_metrics

    with producer_for(settings(), read_only=True) as producer:
        if once:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(DeploymentCollector(producer))
            click.echo(generate_latest(registry).decode(), nl=False)
            return
        serve_deployment_metrics(producer, port, host)
        click.echo(f"metrics on http://{host}:{port}/metrics", err=True)
        with suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


@cli.command(name="worker", context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", type=click.IntRange(1, 1000), help="Threads (default 64).")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option(
    "--hostname",
    "-n",
    help="Node name (default adjustments-PID@HOST: unique for each worker on a host).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_cmd(
    concurrency: int | None, loglevel: str, hostname: str | None, celery_args: tuple[str, ...]
) -> None:
    """Run a Celery worker with our defaults (threads pool, acks late, prefetch 1).

    Any other `celery worker` option is passed through after ours (so it wins), e.g.
    `adjustments worker -- -E --max-tasks-per-child 1000`.

    Exits 2 at start when it could never finish a task (STRIPE_API_KEY, Redis's eviction
    policy); otherwise with Celery's exit code: 0 only for a requested shutdown."""
    from .run import check_redis, check_worker, exit_with, run_celery

    cfg = settings()
    check_worker(cfg)
    with redis_url(cfg.redis_url, cfg.data_dir) as url:
        check_redis(cfg, url, check_modes=True)
        from ..celery_app import app

        argv = [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency or cfg.worker_concurrency}",
            f"--loglevel={loglevel}",
            f"--queues={cfg.queue},{cfg.later_queue}",
            f"--hostname={hostname or default_node_name()}",
            "--without-gossip",
            "--without-mingle",
            # Worker events stay on (a heartbeat event every 2 s): task events can then be
            # switched on with -E or `celery control enable_events`, and Flower sees the worker.
            *celery_args,
        ]
        code = run_celery(app, argv)
    exit_with(code, "the worker")


def default_node_name() -> str:
    """``adjustments-<pid>@<host>``: two workers on one host never share a node name (Celery
    would warn, and remote control would address both as one)."""
    return f"adjustments-{os.getpid()}@{socket.gethostname()}"


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=12111, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--latency-ms", type=float, default=0.0, show_default=True)
@click.option("--error-500", type=click.FloatRange(0, 1), default=0.0, help="Rate of 500s.")
@click.option(
    "--error-429",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Rate of 429 lock_timeout (not a rate limiter: no Stripe-Rate-Limited-Reason).",
)
@click.option(
    "--error-429-retry",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Rate of 429s with Stripe-Should-Retry: true.",
)
@click.option("--slow", type=click.FloatRange(0, 1), default=0.0, help="Rate of late answers.")
@click.option("--slow-s", type=float, default=3.0, show_default=True)
@click.option(
    "--drop", type=click.FloatRange(0, 1), default=0.0, help="Rate of dropped connections."
)
@click.option("--rps-limit", type=float, default=0.0, help="Requests/s before 429 (0: none).")
@click.option("--seed", type=int, default=0, show_default=True)
def sandbox(host: str, port: int, **knobs: Any) -> None:
    """Run the local Stripe-compatible server (v1 and v2 adjustments) in the foreground."""
    from ..sandbox import SandboxConfig, SandboxServer

    server = SandboxServer(SandboxConfig().update(knobs), host=host, port=port)
    click.echo(f"sandbox listening on {server.url} (STRIPE_API_BASE={server.url})", err=True)
    with suppress(KeyboardInterrupt):
        server.serve_forever()


@cli.command()
@click.option("--count", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def demo(count: int, seed: int) -> None:
    """Run everything locally: embedded Redis, a faulty sandbox, a worker, COUNT cancellations."""
    from ..demo import run_demo

    sys.exit(run_demo(count=count, seed=seed))


@cli.group(name="embedded")
def embedded_group() -> None:
    """The bundled Redis that REDIS_URL=embedded starts for trials (shared by every process
    that chooses the same ADJUSTMENTS_DATA_DIR; it runs until stopped)."""


@embedded_group.command(name="stop")
def embedded_stop() -> None:
    """Stop the bundled Redis of ADJUSTMENTS_DATA_DIR (its data stays on disk)."""
    from ..embedded import stop_shared

    cfg = settings()
    url = stop_shared(cfg.data_dir)
    if url is None:
        click.echo(f"no bundled Redis is running for {cfg.data_dir.resolve()}")
    else:
        click.echo(f"stopped the bundled Redis at {url} (data kept in {cfg.data_dir.resolve()})")


for command in (replay_cmd, compensate_cmd, export_cmd, reconcile_cmd, beat_cmd, import_cmd):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: click's errors and ours become one line on stderr."""
    for arg in sys.argv[1:] if argv is None else argv:
        if _SURROGATE.search(arg):  # bytes that are not UTF-8: no command could use them
            _fail(f"argument {printable(arg)} is not valid UTF-8 text", 2)
    try:
        code = cli.main(args=argv, prog_name="adjustments", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # bare `adjustments`: the whole help, as click lays it out
        click.echo(exc.ctx.get_help() if exc.ctx else cli.get_usage(click.Context(cli)), err=True)
        sys.exit(2)
    except click.UsageError as exc:
        _fail(exc.format_message(), 2)
    except (InvalidInput, ConfigError) as exc:
        _fail(str(exc), 2)
    except RecordNotFound as exc:
        _fail(f"no such request: {exc.args[0]}", 1)
    except click.Abort:
        _fail("aborted", 130)
    except redis.RedisError as exc:
        _fail(f"cannot reach Redis: {exc}", 1)
    except AdjustmentsError as exc:
        _fail(str(exc), 1)
    except Exception as exc:  # anything else still ends as one line and a failure
        _fail(f"{type(exc).__name__}: {exc}", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    first = printable(redact(" ".join(message.split())))
    click.echo(f"adjustments: error: {first}", err=True)
    sys.exit(code)
