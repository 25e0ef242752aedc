"""The expiry forecast: how many waiting cancellations will miss their 24 h window if nothing
changes, and the nearest deadline that will be missed.

Deadline-first sending at a steady rate ``R``, skipping a record whose deadline would pass
before its turn (a slot is never spent on a lost cause), sends the ``k``-th record it sends at
``now + k / R``. Walking the deadlines in order, a record is sent when its turn comes before
its deadline and counted as a miss otherwise; that greedy walk is exactly what the workers do,
so the count is the number of expiries (for the current rate, with nothing new arriving).

The first ``EXACT`` deadlines are walked one by one; beyond them (a deep backlog) the walk
goes bucket by bucket over counts of deadlines (``ZCOUNT``), so a forecast costs a bounded
number of Redis commands however deep the backlog is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis

EXACT = 20_000


@dataclass(frozen=True)
class Forecast:
    """``expiring``: records that will miss their deadline at ``rate_per_s``;
    ``first_miss_ms``: the nearest deadline that will be missed (epoch ms), None if none."""

    expiring: int
    first_miss_ms: float | None
    rate_per_s: float
    waiting: int


def walk(
    deadlines_ms: Sequence[float],
    *,
    now_ms: float,
    rate_per_s: float,
    buckets: Sequence[tuple[float, int]] = (),
) -> Forecast:
    """The forecast for ``deadlines_ms`` (ascending), then ``buckets`` (ascending upper
    bounds, with how many deadlines fall in each, all later than the last deadline given)."""
    waiting = len(deadlines_ms) + sum(count for _, count in buckets)
    if rate_per_s <= 0:  # nothing is being sent: every waiting record expires
        first = deadlines_ms[0] if deadlines_ms else (buckets[0][0] if buckets else None)
        return Forecast(waiting, first if waiting else None, 0.0, waiting)
    per_ms = rate_per_s / 1000.0
    sent = 0
    missed = 0
    first_miss: float | None = None
    for deadline in deadlines_ms:
        if now_ms + (sent + 1) / per_ms <= deadline:
            sent += 1
        else:
            missed += 1
            if first_miss is None:
                first_miss = deadline
    for upper_ms, count in buckets:
        capacity = max(0, math.floor((upper_ms - now_ms) * per_ms))
        fits = max(0, min(count, capacity - sent))
        sent += fits
        if fits < count:
            missed += count - fits
            if first_miss is None:
                first_miss = upper_ms  # within this bucket: its upper bound, at the latest
    return Forecast(missed, first_miss, rate_per_s, waiting)


def read(client: redis.Redis, key: str, *, now_ms: float, rate_per_s: float) -> Forecast:
    """The forecast for the deadlines (ms) scored in the sorted set ``key`` (the ready set
    in deadline order), at ``rate_per_s`` (0: nothing is sent; below 0: no limit, nothing
    expires): the first EXACT deadlines one by one, the rest by bucket. A few round trips."""
    exact = cast(list[tuple[str, float]], client.zrange(key, 0, EXACT - 1, withscores=True))
    deadlines = [score for _, score in exact]
    buckets: list[tuple[float, int]] = []
    if len(exact) == EXACT:  # a deeper backlog: count the rest between growing bounds
        low = deadlines[-1]
        bounds = [now_ms + 1000 * 2**k for k in range(0, 18)] + [math.inf]
        bounds = [b for b in bounds if b > low]
        pipe = client.pipeline(transaction=False)
        previous = low
        for bound in bounds:
            pipe.zcount(key, f"({previous}", "+inf" if math.isinf(bound) else bound)
            previous = bound
        counts = cast(list[int], pipe.execute())
        buckets = [(b, int(c)) for b, c in zip(bounds, counts, strict=True) if c]
        # the last bucket's bound is the last deadline itself, at the latest
        if buckets and math.isinf(buckets[-1][0]):
            last = cast(list[tuple[str, float]], client.zrange(key, -1, -1, withscores=True))
            buckets[-1] = (last[0][1] if last else now_ms, buckets[-1][1])
    if rate_per_s < 0:
        waiting = len(deadlines) + sum(c for _, c in buckets)
        return Forecast(0, None, math.inf, waiting)
    return walk(deadlines, now_ms=now_ms, rate_per_s=rate_per_s, buckets=buckets)
