"""``adjustments serve``: the HTTP API and the console (its own module, so that no other
command loads the web stack)."""

from __future__ import annotations

import click
import redis

from ..http.auth import Auth, parse_tokens
from ..http.server import check_exposure, serve
from ..logging import get_logger
from .common import producer_for, settings


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
