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

from . import keys
from .store import load_script


@dataclass(frozen=True)
class RatePolicy:
    """Limiter knobs (from Settings)."""

    limit_per_s: float  # 0 disables the limiter
    burst: float = 2.0
    max_sleep_s: float = 0.25  # a worker sleeps at most this long for its slot; longer: defer
    horizon_s: float = 120.0  # slots are reserved at most this far ahead
    cut_factor: float = 0.7
    cooldown_s: float = 1.0
    recovery_per_s: float = 2.0  # req/s regained per second after a cut
    floor_per_s: float = 1.0


Slot = tuple[int, int]  # (slot time, reservation time), microseconds on the Redis clock


GO, RESERVED, DENIED = 1, 2, 0


@dataclass(frozen=True)
class Grant:
    """What the limiter said: ``go`` after ``wait_s`` (at most ``max_sleep_s``); or come back
    after ``wait_s`` holding ``slot`` (reserved); or come back later with nothing (denied)."""

    verdict: int
    wait_s: float
    rate_per_s: float
    slot: Slot | None = None

    @property
    def go(self) -> bool:
        return self.verdict == GO


class SharedRateLimiter:
    """The shared limiter; one per process (it holds only a Redis client)."""

    def __init__(self, client: redis.Redis, policy: RatePolicy, *, prefix: str = "adj") -> None:
        self.client = client
        self.policy = policy
        self.key = keys.rate_limiter(prefix)
        self._acquire = client.register_script(load_script("rate_acquire.lua"))
        self._penalize = client.register_script(load_script("rate_penalize.lua"))
        self._peek = client.register_script(load_script("rate_peek.lua"))

    @property
    def enabled(self) -> bool:
        return self.policy.limit_per_s > 0

    def acquire(self, reserved: Slot | None = None) -> Grant:
        """Take the next free slot (reserving it if it is more than ``max_sleep_s`` and at most
        ``horizon_s`` away); with ``reserved``, redeem that earlier reservation instead, unless
        the rate was cut since it was made. Sends are spaced by the rate even when callers come
        back late for their slots, so they never arrive in a burst."""
        p = self.policy
        if not self.enabled:
            return Grant(GO, 0.0, 0.0)
        slot_us, reserved_us = reserved if reserved else ("", "")
        verdict, wait_us, rate_milli, _now_us, slot_at, reserved_at = cast(
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
                    int(p.max_sleep_s * 1e6),
                ],
            ),
        )
        slot = (int(slot_at), int(reserved_at)) if int(verdict) == RESERVED else None
        return Grant(int(verdict), int(wait_us) / 1e6, int(rate_milli) / 1000, slot)

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
        """The shared rate now, without taking a slot (this process's policy)."""
        return self.shared()[1] if self.enabled else 0.0

    def shared(self) -> tuple[float, float, bool]:
        """``(configured, current, from_workers)``: the limit the workers last used and the
        shared rate now, read from Redis; this process's own policy where no worker has
        taken a slot within the hour (``from_workers`` False)."""
        p = self.policy
        used_limit, rate_milli = cast(
            list[Any],
            self._peek(keys=[self.key], args=[p.limit_per_s, p.recovery_per_s, p.floor_per_s]),
        )
        from_workers = used_limit not in ("", b"")
        configured = float(used_limit) if from_workers else p.limit_per_s
        if configured <= 0:
            return configured, configured, from_workers
        return configured, int(rate_milli) / 1000, from_workers
