"""CLI commands for a laptop: the local Stripe sandbox and ``make demo``."""

from __future__ import annotations

import sys
from contextlib import suppress
from typing import Any

import click

from ..demo import run_demo
from ..sandbox import SandboxConfig, SandboxServer


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
