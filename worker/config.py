"""Settings read once from the environment into one typed, immutable object.

Nothing here runs at import time: call ``Settings.from_env()`` where a process starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from worker.errors import ConfigError

Api = Literal["v1", "v2"]
APIS: tuple[Api, ...] = ("v1", "v2")

CANCEL_WINDOW_S = 24 * 3600  # Stripe accepts a cancellation within 24 h of receiving the event


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value not in (None, "") else None


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
        )
        if settings.lease_s <= settings.stripe_timeout_s:
            raise ConfigError(
                "ADJUSTMENTS_LEASE_S must be longer than ADJUSTMENTS_STRIPE_TIMEOUT_S"
            )
        if settings.stripe_api_key is not None and not settings.stripe_api_key.startswith(
            ("sk_", "rk_")
        ):
            raise ConfigError("STRIPE_API_KEY must be a secret (sk_...) or restricted (rk_...) key")
        return settings

    @property
    def later_queue(self) -> str:
        """Where countdown messages (retries, rate-limit deferrals) go: consumed alongside the
        main queue, so a deep backlog of new work does not delay them past their time."""
        return f"{self.queue}.later"

    @property
    def visibility_timeout_s(self) -> int:
        """Broker visibility timeout: longer than the longest retry countdown plus one call."""
        return int(max(3600.0, 2 * (self.backoff_cap_s + self.lease_s)))
