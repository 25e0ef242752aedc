"""CLI commands that run a process: serve, metrics, worker, beat, sandbox, demo, and the
bundled Redis's ``embedded stop``."""

from __future__ import annotations

import os
import socket
import sys
import time
from contextlib import suppress
from typing import Any

import click
import redis
from prometheus_client import CollectorRegistry, generate_latest

from ..celery_app import app
from ..demo import run_demo
from ..embedded import redis_url, stop_shared
from ..http.auth import Auth, parse_tokens
from ..http.server import check_exposure, serve
from ..logging import get_logger
from ..metrics.deployment import DeploymentCollector, serve_deployment_metrics
from ..sandbox import SandboxConfig, SandboxServer
from .common import producer_for, settings
from .run import check_redis, check_worker, exit_with, run_celery


@click.command(name="serve")
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


@click.command(name="metrics")
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
    with producer_for(settings(), read_only=True) as producer:
        if once:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(DeploymentCollector(producer.readouts))
            click.echo(generate_latest(registry).decode(), nl=False)
            return
        serve_deployment_metrics(producer.readouts, port, host)
        click.echo(f"metrics on http://{host}:{port}/metrics", err=True)
        with suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


@click.command(name="worker", context_settings={"ignore_unknown_options": True})
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
    cfg = settings()
    check_worker(cfg)
    with redis_url(cfg.redis_url, cfg.data_dir) as url:
        check_redis(cfg, url, check_modes=True)
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


@click.command()
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
    server = SandboxServer(SandboxConfig().update(knobs), host=host, port=port)
    click.echo(f"sandbox listening on {server.url} (STRIPE_API_BASE={server.url})", err=True)
    with suppress(KeyboardInterrupt):
        server.serve_forever()


@click.command()
@click.option("--count", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def demo(count: int, seed: int) -> None:
    """Run everything locally: embedded Redis, a faulty sandbox, a worker, COUNT cancellations."""
    sys.exit(run_demo(count=count, seed=seed))


@click.group(name="embedded")
def embedded_group() -> None:
    """The bundled Redis that REDIS_URL=embedded starts for trials (shared by every process
    that chooses the same ADJUSTMENTS_DATA_DIR; it runs until stopped)."""


@embedded_group.command(name="stop")
def embedded_stop() -> None:
    """Stop the bundled Redis of ADJUSTMENTS_DATA_DIR (its data stays on disk)."""
    cfg = settings()
    url = stop_shared(cfg.data_dir)
    if url is None:
        click.echo(f"no bundled Redis is running for {cfg.data_dir.resolve()}")
    else:
        click.echo(f"stopped the bundled Redis at {url} (data kept in {cfg.data_dir.resolve()})")


@click.command(name="beat")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def beat_cmd(loglevel: str) -> None:
    """Run Celery beat: sends the reconciliation task every ADJUSTMENTS_RECONCILE_INTERVAL_S."""
    cfg = settings()
    with redis_url(cfg.redis_url, cfg.data_dir) as url:
        check_redis(cfg, url)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)  # beat's schedule file lives there
        code = run_celery(app, ["beat", f"--loglevel={loglevel}"])
    exit_with(code, "beat")
