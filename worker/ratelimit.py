"""One Stripe rate limit shared by every worker process and host, adaptive to Stripe's 429s.

A GCRA (token bucket without a refill loop) in Lua, timed by the Redis server's clock so that
hosts with skewed clocks still share one budget. The configured limit is a ceiling: a 429 from
Stripe (another service spent the account's budget) cuts the shared rate by a factor, at most
once a cooldown, and it climbs back linearly while no further 429 arrives.

Why not the ``limits`` package: its Redis storage stamps requests with each host's
``time.time()`` (skewed hosts disagree about the window), it cannot vary the rate with
feedback, and it has no reservation, so a worker would have to poll for a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis

from worker import keys
from worker.store import load_script


@dataclass(frozen=True)
class RatePolicy:
    """Limiter knobs (from Settings)."""

    limit_per_s: float  # 0 disables the limiter
    burst: float = 2.0
    max_sleep_s: float = 0.25  # a worker sleeps at most this long for its slot; longer: defer
    horizon_s: float = 120.0  # slots are reserved at most this far ahead
    late_s: float = 0.15  # a reserved slot used later than this is given up (no bunching)
    cut_factor: float = 0.7
    cooldown_s: float = 1.0
    recovery_per_s: float = 2.0  # req/s regained per second after a cut
    floor_per_s: float = 1.0


Slot = tuple[int, int]  # (slot time, reservation time), microseconds on the Redis clock


@dataclass(frozen=True)
class Grant:
    """``granted``: the slot ``wait_s`` from now is ours; otherwise none within the horizon."""

    granted: bool
    wait_s: float
    rate_per_s: float
    now_us: int = 0

    @property
    def slot(self) -> Slot:
        """The reservation, to hand to ``acquire`` when the deferred attempt comes back."""
        return (self.now_us + int(self.wait_s * 1e6), self.now_us)


class SharedRateLimiter:
    """The shared limiter; one per process (it holds only a Redis client)."""

    def __init__(self, client: redis.Redis, policy: RatePolicy, *, prefix: str = "adj") -> None:
        self.client = client
        self.policy = policy
        self.key = keys.rate_limiter(prefix)
        self._acquire = client.register_script(load_script("rate_acquire.lua"))
        self._penalize = client.register_script(load_script("rate_penalize.lua"))

    @property
    def enabled(self) -> bool:
        return self.policy.limit_per_s > 0

    def acquire(self, reserved: Slot | None = None) -> Grant:
        """Reserve the next free slot if it is at most ``horizon_s`` away; with ``reserved``,
        confirm that earlier reservation instead (unless it lapsed: then queue anew)."""
        p = self.policy
        if not self.enabled:
            return Grant(True, 0.0, 0.0)
        slot_us, reserved_us = reserved if reserved else ("", "")
        granted, wait_us, rate_milli, now_us = cast(
            list[Any],
            self._acquire(
                keys=[self.key],
                args=[
                    p.limit_per_s,
                    p.burst,
                    int(p.horizon_s * 1e6),
                    p.recovery_per_s,
                    p.floor_per_s,
                    slot_us,
                    reserved_us,
                    int(p.late_s * 1e6),
                ],
            ),
        )
        return Grant(bool(granted), int(wait_us) / 1e6, int(rate_milli) / 1000, int(now_us))

    def penalize(self) -> float:
        """Stripe said 429: cut the shared rate; returns the new rate."""
        p = self.policy
        if not self.enabled:
            return 0.0
        rate_milli = self._penalize(
            keys=[self.key],
            args=[
                p.limit_per_s,
                p.cut_factor,
                int(p.cooldown_s * 1e6),
                p.recovery_per_s,
                p.floor_per_s,
            ],
        )
        return int(cast(int, rate_milli)) / 1000

    def current_rate(self) -> float:
        """The shared rate now (for ``adjustments stats``), without taking a slot."""
        p = self.policy
        if not self.enabled:
            return 0.0
        rate, cut_us = cast(list[str | None], self.client.hmget(self.key, ["rate", "cut_us"]))
        if rate is None or cut_us is None:
            return p.limit_per_s
        seconds, micros = self.client.time()
        elapsed_s = (seconds * 1_000_000 + micros - float(cut_us)) / 1e6
        return max(p.floor_per_s, min(p.limit_per_s, float(rate) + p.recovery_per_s * elapsed_s))
