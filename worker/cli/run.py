"""``adjustments worker`` and ``adjustments beat``: checks before start, Celery's exit code after.

A worker that could never finish a task (no usable STRIPE_API_KEY, a Redis that may evict
records) exits 2 at start with one line. Whatever Celery returns is our exit code, so a
supervisor's ``Restart=on-failure`` sees a crash as a failure; a requested shutdown is 0.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, cast

import redis
from celery import Celery

from .. import keys
from ..celery_app import use_our_logging
from ..config import Settings
from ..errors import ConfigError
from ..logging import get_logger
from ..server_checks import check_server

log = get_logger("adjustments.cli")
REDIS_WAIT_S = 60.0


def check_redis(
    cfg: Settings, url: str, *, wait_s: float = REDIS_WAIT_S, check_modes: bool = False
) -> None:
    """Read the server's guarantees (waiting up to ``wait_s`` for it to be reachable): raise
    UnsafeRedis for a fatal problem, log the rest. ``check_modes`` (a worker): the key modes
    too (see ``check_key_modes``)."""
    client = cfg.redis_target(url).client()
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                warnings = check_server(
                    client, durability=cfg.durability, allow_eviction=cfg.allow_eviction
                )
                if check_modes:
                    check_key_modes(cfg, client)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if "certificate" in str(exc).lower():  # not a blip: it will never verify
                    raise ConfigError(f"Redis's TLS certificate was refused: {exc}") from exc
                if time.monotonic() > deadline:
                    raise
                log.warning("redis.unreachable_at_start", error=str(exc), retry_in_s=1)
                time.sleep(1)
        for warning in warnings:
            log.warning("redis.weak_guarantee", reason=warning)
    finally:
        client.close()


def check_worker(cfg: Settings) -> None:
    problem = cfg.worker_key_problem()
    if problem:
        raise ConfigError(problem)


def key_mode(key: str | None) -> str:
    """``live`` for a live-mode key (sk_live_, rk_live_), else ``test``."""
    return "live" if (key or "").startswith(("sk_live_", "rk_live_")) else "test"


def check_key_modes(cfg: Settings, client: redis.Redis) -> None:
    """Each platform's key mode (test or live) is kept in Redis by the first worker to start;
    a worker whose key for the same platform is of the other mode is refused (ConfigError
    naming the platform, never the key): a test key and a live key never share objects, so
    the records of one deployment would go to two different Stripe worlds."""
    pipe = client.pipeline(transaction=False)
    names = cfg.platform_names or ("",)
    for name in names:
        pipe.hsetnx(
            keys.key_modes(cfg.key_prefix),
            name or "default",
            key_mode(cfg.platform(name or None).api_key),
        )
    pipe.hgetall(keys.key_modes(cfg.key_prefix))
    stored = cast(dict[str, str], pipe.execute()[-1])
    for name in names:
        mine = key_mode(cfg.platform(name or None).api_key)
        theirs = stored.get(name or "default", mine)
        if theirs != mine:
            label = f"platform {name}" if name else "STRIPE_API_KEY"
            raise ConfigError(
                f"{label}: this worker has a {mine}-mode key, but the deployment's workers "
                f"use a {theirs}-mode key for it; a test key and a live key never share objects"
            )


def run_celery(app: Celery[Any], argv: Sequence[str]) -> int:
    """``celery ARGV`` on ``app``, returning its exit code (``app.start`` drops it). Our own
    worker and beat log through our structlog set-up."""
    use_our_logging()
    from celery.bin.celery import celery as celery_cli

    celery_cli.params[0].default = app
    try:
        code = celery_cli.main(args=list(argv), standalone_mode=False)
    finally:
        celery_cli.params[0].default = None
    return code if isinstance(code, int) else 0


def exit_with(code: int, what: str) -> None:
    if code:
        print(f"adjustments: error: {what} stopped with exit code {code}", file=sys.stderr)
    sys.exit(code)
