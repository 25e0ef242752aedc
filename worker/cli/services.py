"""CLI commands that run a process of the deployment: worker, beat, metrics, and the bundled
Redis's ``embedded stop``."""

from __future__ import annotations

import os
import socket
import time
from contextlib import suppress

import click
from prometheus_client import CollectorRegistry, generate_latest

from ..celery_app import app
from ..embedded import redis_url, stop_shared
from ..metrics.deployment import DeploymentCollector, serve_deployment_metrics
from .common import producer_for, settings
from .run import check_redis, check_worker, exit_with, run_celery


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
