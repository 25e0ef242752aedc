"""The sandbox's knobs: latency, fault rates, a requests/s limit, a seed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# Forced outcomes a test may script per identifier (consumed in order, one per executed request).
SCRIPTABLE = frozenset(
    {
        "ok",
        "500",
        "429",
        "429_retry",
        "429_no_retry",
        "timeout",
        "drop",
        "400",
        "404",
        "401",
        "rate_limited",  # a rate limiter's 429, before the idempotency layer (even for a key
        # whose request was executed)
    }
)


@dataclass(frozen=True)
class SandboxConfig:
    """Fault rates are probabilities per request (0..1), drawn from a seeded generator."""

    latency_ms: float = 0.0
    error_500: float = 0.0  # 500 api_error, stored under the idempotency key like Stripe does
    # 429 lock_timeout (not a rate limiter: no Stripe-Rate-Limited-Reason), no Should-Retry
    error_429: float = 0.0
    error_429_retry: float = 0.0  # the same 429, with Stripe-Should-Retry: true
    rps_limit: float = 0.0  # per key (account); 0: unlimited; above it, a marked 429
    slow: float = 0.0  # executes, then answers after slow_s (past the client's timeout)
    slow_s: float = 3.0
    drop: float = 0.0  # closes the connection without an answer, before executing
    burst: float = 0.0  # token bucket size for rps_limit (0: a fifth of a second's worth)
    status: str = "pending"  # what accepted adjustments report
    seed: int = 0

    def update(self, changes: dict[str, Any]) -> SandboxConfig:
        """A copy with ``changes`` applied; unknown names or bad values raise ValueError."""
        known = {f.name: f.type for f in fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown sandbox setting {name!r}")
            current = getattr(self, name)
            clean[name] = type(current)(value)
        return replace(self, **clean)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
