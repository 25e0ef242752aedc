"""What a deployment looks like now, read from Redis: the numbers behind ``adjustments stats``,
the console's overview and the deployment metrics.

``Producer.readouts`` is one of these, on the producer's connection pool; ``Producer.stats()``
and ``Producer.counts()`` are its two most used reads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import cast

import redis

from . import forecast, keys, publishing
from .config import Settings
from .forecast import Forecast
from .heartbeat import WorkerInfo, alive
from .models import Status, iso, parse_iso
from .ratelimit import Budgets, policies
from .redis_errors import reading
from .snapshot import PlatformStats, QueueStats, RateLimit, Stats, Windows
from .store import RecordStore


class Readouts:
    """Reads of the deployment's state. Each raises StoreUnavailable when Redis cannot be
    read."""

    def __init__(self, client: redis.Redis, store: RecordStore, settings: Settings) -> None:
        """Read through ``client`` (a producer's), ``store`` and ``settings`` (its prefix,
        queues, platforms and order)."""
        self.client = client
        self.store = store
        self.settings = settings

    def counts(self) -> dict[str, int]:
        """Records per status."""
        with reading():
            return self.store.counts()

    def recent_outcomes(
        self, series: Mapping[str, Sequence[Status]], *, minutes: int = 60
    ) -> list[dict[str, int]]:
        """For each of the last ``minutes`` minutes (oldest first), how many records reached
        each group of statuses in ``series`` then (from the status indexes' scores; one round
        trip)."""
        now_ms = time.time() * 1000
        start_ms = (now_ms // 60_000 - minutes + 1) * 60_000
        with reading():
            pipe = self.client.pipeline(transaction=False)
            for minute in range(minutes):
                low = start_ms + minute * 60_000
                for statuses in series.values():
                    for status in statuses:
                        pipe.zcount(self.store.index_key(status), low, f"({low + 60_000}")
            counts = iter(cast(list[int], pipe.execute()))
        return [
            {name: sum(next(counts) for _ in statuses) for name, statuses in series.items()}
            for _minute in range(minutes)
        ]

    def windows(self, within_s: Sequence[float] = ()) -> Windows:
        """The 24 h windows of live records, counting those that close within each of
        ``within_s`` seconds."""
        now = time.time()
        deadline = keys.deadline(self.settings.key_prefix)
        with reading():
            pipe = self.client.pipeline(transaction=False)
            pipe.zrange(deadline, 0, 0, withscores=True)
            for seconds in within_s:
                pipe.zcount(deadline, "-inf", int((now + seconds) * 1000))
            pipe.zcount(self.store.index_key(Status.PROCESSING), "-inf", int(now * 1000))
            first, *closing, past_lease = pipe.execute()
        nearest = cast(list[tuple[str, float]], first)
        return Windows(
            next_closes_in_s=(nearest[0][1] / 1000 - now) if nearest else None,
            closing={s: int(n) for s, n in zip(within_s, closing, strict=True)},
            past_lease=int(past_lease),
        )

    def last_reconcile(self) -> dict[str, str]:
        """The last reconciliation run: ``finished_at`` (epoch s) and its counts; empty if
        none has run."""
        with reading():
            return cast(
                dict[str, str], self.client.hgetall(keys.last_reconcile(self.settings.key_prefix))
            )

    def workers(self) -> list[WorkerInfo]:
        """Workers alive now (their heartbeat has not expired), newest beat first."""
        with reading():
            return alive(self.client, self.settings.key_prefix)

    def queue_depth(self) -> int:
        """Messages waiting in the queues, not yet taken by a worker (countdown messages held
        by workers until due are not counted)."""
        names = [
            name
            for queue in (self.settings.queue, self.settings.later_queue)
            for name in publishing.queue_lists(queue)
        ]
        with reading():
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            return int(sum(pipe.execute()))

    def oldest_live_age_s(self) -> float:
        """Age in seconds of the oldest live (queued, processing or retrying) record, 0 when
        none is live. Read from the first record of each live status index, each O(log n)
        (the queued index is scored by when a record became queued)."""
        candidates: list[str | None] = []
        with reading():
            for status in (Status.QUEUED, Status.PROCESSING, Status.RETRYING):
                candidates += cast(
                    list[str], self.client.zrange(self.store.index_key(status), 0, 0)
                )
            pipe = self.client.pipeline(transaction=False)
            for record_id in (c for c in candidates if c):
                pipe.hget(self.store.record_key(record_id), "created_at")
            created = [parse_iso(str(c)) for c in pipe.execute() if c]
        times = [c.timestamp() for c in created if c is not None]
        return max(0.0, time.time() - min(times)) if times else 0.0

    def expiry_forecast(self, *, rate_per_s: float, platform: str = "") -> Forecast:
        """How many of ``platform``'s waiting records will miss their window if the workers
        go on sending at ``rate_per_s`` (0: none is sent; below 0: no limit), deadline
        first, and the nearest deadline missed (see ``forecast``). With order=fifo every
        platform's known deadlines are read."""
        key = (
            keys.ready(self.settings.key_prefix, platform)
            if self.settings.order == "deadline"
            else keys.deadline(self.settings.key_prefix)  # fifo: the deadlines that are known
        )
        with reading():
            return forecast.read(self.client, key, now_ms=time.time() * 1000, rate_per_s=rate_per_s)

    def stats(self) -> Stats:
        """Records per status, the queue, dead letters, the Stripe rate (configured ceiling,
        and current value after any 429 cuts) and the expiry forecast, per platform too."""
        settings, client = self.settings, self.client
        budgets = Budgets.build(client, policies(settings), prefix=settings.key_prefix)
        with reading():
            dead_total = client.get(keys.dead_letter_total(keys.dead_letter(settings.key_prefix)))
            records = self.store.counts()
            workers_alive = len(alive(client, settings.key_prefix))
            platforms = {
                name: self._platform_stats(budgets, name, workers_alive)
                for name in settings.platform_names or ("",)
            }
            if settings.platform_names and client.zcard(keys.ready(settings.key_prefix)):
                # records made before platforms were configured: sent on the first one's budget
                first = settings.platform_names[0]
                platforms[""] = self._platform_stats(budgets, "", workers_alive, rate_of=first)
            expiring = sum(p.expiry_forecast for p in platforms.values())
            misses = [
                p.expiry_forecast_first_miss
                for p in platforms.values()
                if p.expiry_forecast_first_miss
            ]
            if settings.order == "fifo" and len(platforms) > 1:
                # fifo keeps one set of deadlines for all: each platform's forecast is of all
                # of them at its rate, not a part of a sum
                expiring = max(p.expiry_forecast for p in platforms.values())
                misses = misses[:1]
            queue = QueueStats(
                waiting=self.queue_depth(),
                held_by_workers=int(client.hlen(publishing.UNACKED_KEY)),
                scheduled_retries=records[Status.RETRYING.value],
            )
            return Stats(
                records=records,
                queue=queue,
                ready=sum(p.ready for p in platforms.values()),
                dead_letters=int(dead_total or 0),
                oldest_live_age_s=round(self.oldest_live_age_s(), 3),
                workers_alive=workers_alive,
                expiry_forecast=expiring,
                expiry_forecast_first_miss=min(misses) if misses else None,
                rate_limit=next(iter(platforms.values())).rate_limit,
                platforms=(
                    {name or "(none)": p for name, p in platforms.items()}
                    if settings.platform_names
                    else None
                ),
            )

    def _platform_stats(
        self, budgets: Budgets, name: str, workers_alive: int, *, rate_of: str | None = None
    ) -> PlatformStats:
        configured, current, from_workers = budgets.limiter(rate_of or name).shared()
        outlook = self.expiry_forecast(
            rate_per_s=(current if configured > 0 else -1.0) if workers_alive else 0.0,
            platform=name,
        )
        return PlatformStats(
            ready=int(self.client.zcard(keys.ready(self.settings.key_prefix, name))),
            expiry_forecast=outlook.expiring,
            expiry_forecast_first_miss=(
                iso(datetime.fromtimestamp(outlook.first_miss_ms / 1000, UTC))
                if outlook.first_miss_ms is not None
                else None
            ),
            rate_limit=RateLimit(
                configured_per_s=configured,
                current_per_s=round(current, 2),
                source="workers" if from_workers else "settings (no worker has sent yet)",
            ),
        )
