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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from . import keys, lua
from .config import Settings


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


GO, RESERVED, DENIED, VOID = 1, 2, 0, 3


@dataclass(frozen=True)
class Grant:
    """What the limiter said: ``go`` after ``wait_s`` (at most ``max_sleep_s``); or come back
    after ``wait_s`` holding ``slot`` (reserved); or come back later with nothing (denied);
    or (``void_ok``) the reservation given was made void by a cut, nothing taken."""

    verdict: int
    wait_s: float
    rate_per_s: float
    slot: Slot | None = None

    @property
    def go(self) -> bool:
        return self.verdict == GO


class SharedRateLimiter:
    """One Stripe account's shared limiter; one per process and platform (it holds only a
    Redis client)."""

    def __init__(
        self,
        client: redis.Redis,
        policy: RatePolicy,
        *,
        prefix: str = Settings.key_prefix,
        platform: str = "",
    ) -> None:
        self.client = client
        self.policy = policy
        self.platform = platform
        self.key = keys.rate_limiter(prefix, platform)
        self._acquire = client.register_script(lua.load("rate_acquire.lua"))
        self._penalize = client.register_script(lua.load("rate_penalize.lua"))
        self._peek = client.register_script(lua.load("rate_peek.lua"))

    @property
    def enabled(self) -> bool:
        return self.policy.limit_per_s > 0

    def acquire(self, reserved: Slot | None = None, *, void_ok: bool = False) -> Grant:
        """Take the next free slot (reserving it if it is more than ``max_sleep_s`` and at most
        ``horizon_s`` away); with ``reserved``, redeem that earlier reservation instead, unless
        the rate was cut since it was made: then a new slot is taken, or with ``void_ok`` the
        answer is VOID and nothing is taken. Sends are spaced by the rate even when callers
        come back late for their slots, so they never arrive in a burst."""
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
                    "1" if void_ok else "0",
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


# A reservation: the platform ("" for the unnamed one) and the slot its limiter reserved.
Reservation = tuple[str, Slot]


class Budgets:
    """Each platform's own limiter (issue 21): Stripe's rate limits are per account, so one
    platform's 429s cut only its own rate. ``limiters`` maps each ready set's platform name
    to its limiter; ``""`` (records without a platform) to the single key's or the default
    platform's.

    A worker thread spends its next send on the platform whose slot comes first, among those
    with records ready (``acquire``): a thread never waits for one platform's far slot while
    another's is free, so one platform's backlog or cut rate does not hold the threads the
    others need. Reservations only run as far ahead as the other platforms' slots do."""

    def __init__(self, limiters: Mapping[str, SharedRateLimiter]) -> None:
        self.limiters = dict(limiters)
        first = next(iter(self.limiters.values()))
        self._next = first.client.register_script(lua.load("rate_next.lua"))

    @classmethod
    def build(
        cls,
        client: redis.Redis,
        policies: Mapping[str, RatePolicy],
        *,
        prefix: str = Settings.key_prefix,
    ) -> Budgets:
        """One limiter per named policy (``{"": policy}`` for a single-key deployment); the
        unnamed ready set is sent under the first platform's."""
        limiters = {
            name: SharedRateLimiter(client, policy, prefix=prefix, platform=name)
            for name, policy in policies.items()
        }
        if "" not in limiters:
            limiters = {"": next(iter(limiters.values())), **limiters}
        return cls(limiters)

    def limiter(self, platform: str | None) -> SharedRateLimiter:
        return self.limiters.get(platform or "") or self.limiters[""]

    @property
    def enabled(self) -> bool:
        return any(limiter.enabled for limiter in self.limiters.values())

    def choose(self, candidates: Mapping[str, float]) -> str:
        """Of ``candidates`` (platform → the score of its first ready record), the platform
        whose next slot comes first; among equal waits the most urgent record's."""
        names = list(candidates)
        if len(names) == 1:
            return names[0]
        args: list[float] = []
        for name in names:
            p = self.limiter(name).policy
            args += [p.limit_per_s, p.burst, p.recovery_per_s, p.floor_per_s]
        waits = cast(
            list[int],
            self._next(keys=[self.limiter(n).key for n in names], args=args),
        )
        return min(zip(names, waits, strict=True), key=lambda nw: (int(nw[1]), candidates[nw[0]]))[
            0
        ]

    def acquire(self, platform: str, reserved: Slot | None = None) -> Grant:
        """``platform``'s slot (see ``SharedRateLimiter.acquire``); a reservation made void
        by a cut answers VOID, so the caller chooses a platform again."""
        return self.limiter(platform).acquire(reserved, void_ok=True)

    def penalize(self, platform: str | None) -> float:
        return self.limiter(platform).penalize()


def rate_policy(settings: Settings, limit_per_s: float | None = None) -> RatePolicy:
    """The limiter's knobs from ``settings`` (``limit_per_s``: a platform's own limit)."""
    return RatePolicy(
        limit_per_s=settings.rate_limit_per_s if limit_per_s is None else limit_per_s,
        burst=settings.rate_burst,
        recovery_per_s=settings.rate_recovery_per_s,
    )


def policies(settings: Settings) -> dict[str, RatePolicy]:
    """Each platform's policy (its ``ADJUSTMENTS_RATE_LIMIT_<NAME>``, else the deployment's
    ``ADJUSTMENTS_RATE_LIMIT``); ``{"": ...}`` for a single-key deployment."""
    if not settings.platforms:
        return {"": rate_policy(settings)}
    return {p.name: rate_policy(settings, p.rate_limit_per_s) for p in settings.platforms}
