"""Settings read once from the environment into one typed, immutable object.

Nothing here runs at import time: call ``Settings.from_env()`` where a process starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .connection import RedisTarget
from .errors import ConfigError

Api = Literal["v1", "v2"]
APIS: tuple[Api, ...] = ("v1", "v2")

CANCEL_WINDOW_S = 24 * 3600  # Stripe accepts a cancellation within 24 h of receiving the event


@dataclass(frozen=True)
class Durability:
    """When ``cancel()`` may return: ``memory`` (Redis acknowledged the write), ``fsync`` (the
    write is in Redis's append-only file on disk: WAITAOF 1 0) or ``replicas:N`` (N replicas
    acknowledged it: WAIT N)."""

    level: Literal["memory", "fsync", "replicas"] = "fsync"
    replicas: int = 0

    @classmethod
    def parse(cls, raw: str) -> Durability:
        text = raw.strip().lower()
        if text in ("memory", "fsync"):
            return cls(text)  # type: ignore[arg-type]
        if text.startswith("replicas:"):
            count = text.split(":", 1)[1]
            if count.isdigit() and int(count) >= 1:
                return cls("replicas", int(count))
        raise ConfigError(
            f"ADJUSTMENTS_DURABILITY must be memory, fsync or replicas:N (N >= 1), got {raw!r}"
        )

    def __str__(self) -> str:
        return f"replicas:{self.replicas}" if self.level == "replicas" else self.level


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value not in (None, "") else None


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (_get(env, name) or "0").lower()
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")
    return raw in ("1", "true", "yes")


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; see the README's configuration table."""

    redis_url: str | None = None
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    stripe_api_version: str | None = None
    default_api: Api = "v2"
    max_attempts: int = 10
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 300.0
    stripe_timeout_s: float = 20.0
    lease_s: float = 60.0
    retention_s: int = 30 * 24 * 3600
    data_dir: Path = Path(".adjustments")
    queue: str = "adjustments"
    key_prefix: str = "adj"
    worker_concurrency: int = 64  # measured: see the README's performance section
    rate_limit_per_s: float = 20.0
    rate_burst: float = 2.0
    rate_recovery_per_s: float = 2.0
    reconcile_interval_s: float = 60.0
    reconcile_grace_s: float = 60.0
    durability: Durability = field(default_factory=Durability)
    durability_timeout_ms: int = 2000
    allow_eviction: bool = False
    redis_outage_limit_s: float = 300.0
    sentinel_master: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``); raise ConfigError if invalid."""
        env = os.environ if env is None else env
        api = (_get(env, "ADJUSTMENTS_STRIPE_API") or "v2").lower()
        if api not in APIS:
            raise ConfigError(f"ADJUSTMENTS_STRIPE_API must be v1 or v2, got {api!r}")
        timeout_s = _float(env, "ADJUSTMENTS_STRIPE_TIMEOUT_S", 20.0, minimum=0.1)
        settings = cls(
            redis_url=_get(env, "REDIS_URL"),
            stripe_api_key=_get(env, "STRIPE_API_KEY"),
            stripe_api_base=_get(env, "STRIPE_API_BASE"),
            stripe_api_version=_get(env, "STRIPE_API_VERSION"),
            default_api=api,
            max_attempts=_int(env, "ADJUSTMENTS_MAX_ATTEMPTS", 10, minimum=1),
            backoff_base_s=_float(env, "ADJUSTMENTS_BACKOFF_BASE_S", 2.0, minimum=0.0),
            backoff_cap_s=_float(env, "ADJUSTMENTS_BACKOFF_CAP_S", 300.0, minimum=0.0),
            stripe_timeout_s=timeout_s,
            # The lease must outlive one Stripe call, or a second worker could take over mid-call.
            lease_s=_float(env, "ADJUSTMENTS_LEASE_S", max(60.0, 3 * timeout_s), minimum=1.0),
            retention_s=_int(env, "ADJUSTMENTS_RETENTION_S", 30 * 24 * 3600, minimum=60),
            data_dir=Path(_get(env, "ADJUSTMENTS_DATA_DIR") or ".adjustments"),
            queue=_get(env, "ADJUSTMENTS_QUEUE") or "adjustments",
            key_prefix=_get(env, "ADJUSTMENTS_KEY_PREFIX") or "adj",
            worker_concurrency=_int(env, "ADJUSTMENTS_WORKER_CONCURRENCY", 64, minimum=1),
            rate_limit_per_s=_float(env, "ADJUSTMENTS_RATE_LIMIT", 20.0, minimum=0.0),
            rate_burst=_float(env, "ADJUSTMENTS_RATE_BURST", 2.0, minimum=1.0),
            rate_recovery_per_s=_float(env, "ADJUSTMENTS_RATE_RECOVERY_PER_S", 2.0, minimum=0.0),
            reconcile_interval_s=_float(env, "ADJUSTMENTS_RECONCILE_INTERVAL_S", 60.0, minimum=1.0),
            reconcile_grace_s=_float(env, "ADJUSTMENTS_RECONCILE_GRACE_S", 60.0, minimum=0.0),
            durability=Durability.parse(_get(env, "ADJUSTMENTS_DURABILITY") or "fsync"),
            durability_timeout_ms=_int(env, "ADJUSTMENTS_DURABILITY_TIMEOUT_MS", 2000, minimum=1),
            allow_eviction=_flag(env, "ADJUSTMENTS_ALLOW_EVICTION"),
            redis_outage_limit_s=_float(
                env, "ADJUSTMENTS_REDIS_OUTAGE_LIMIT_S", 300.0, minimum=1.0
            ),
            sentinel_master=_get(env, "ADJUSTMENTS_SENTINEL_MASTER"),
            sentinel_password=_get(env, "ADJUSTMENTS_SENTINEL_PASSWORD"),
        )
        if settings.lease_s <= settings.stripe_timeout_s:
            raise ConfigError(
                "ADJUSTMENTS_LEASE_S must be longer than ADJUSTMENTS_STRIPE_TIMEOUT_S"
            )
        return settings

    def worker_key_problem(self) -> str | None:
        """Why the worker could never finish a task with this STRIPE_API_KEY, or None.

        Checked when a worker starts (not by producers, which never call Stripe)."""
        key = self.stripe_api_key
        if not key:
            return "STRIPE_API_KEY is not set: the worker cannot call Stripe"
        if key.startswith(("pk_", "pub_")):
            return "STRIPE_API_KEY is a publishable key: the worker needs a secret key (sk_...)"
        if key.startswith("rk_") and self.default_api == "v2":
            return (
                "STRIPE_API_KEY is a restricted key (rk_...), which v2 endpoints refuse: use a "
                "secret key (sk_...) or set ADJUSTMENTS_STRIPE_API=v1"
            )
        if not key.startswith(("sk_", "rk_")):
            return "STRIPE_API_KEY must be a secret (sk_...) or restricted (rk_...) key"
        return None

    def redis_target(self, url: str | None = None) -> RedisTarget:
        """``url`` (default: REDIS_URL) parsed with the Sentinel settings."""
        raw = url or self.redis_url
        if not raw:
            raise ConfigError("REDIS_URL is not set")
        return RedisTarget.parse(
            raw, sentinel_master=self.sentinel_master, sentinel_password=self.sentinel_password
        )

    @property
    def later_queue(self) -> str:
        """Where countdown messages (retries, rate-limit deferrals) go: consumed alongside the
        main queue, so a deep backlog of new work does not delay them past their time."""
        return f"{self.queue}.later"

    @property
    def visibility_timeout_s(self) -> int:
        """Broker visibility timeout: longer than the longest retry countdown plus one call."""
        return int(max(3600.0, 2 * (self.backoff_cap_s + self.lease_s)))
