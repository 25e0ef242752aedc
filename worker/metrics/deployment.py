"""The deployment's metrics, read from Redis at scrape time through the Producer with a
handful of O(log n) commands (index cardinalities, range counts, the ends of the queue),
never a scan of the records: a 15 s scrape is cheap with a million records."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Protocol

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..errors import StoreError
from ..models import parse_iso
from ..snapshot import PlatformStats, Stats, Windows


class Readouts(Protocol):
    """What the collector reads (a producer's ``readouts`` is one)."""

    def stats(self) -> Stats: ...
    def windows(self, within_s: Sequence[float] = ...) -> Windows: ...
    def last_reconcile(self) -> dict[str, str]: ...


class DeploymentCollector(Collector):
    """The deployment's state in Redis, read at each scrape."""

    def __init__(self, readouts: Readouts) -> None:
        self.readouts = readouts  # a Producer's (``producer.readouts``)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Every metric when Redis answers; during an outage only ``adjustments_redis_up 0``
        (a scrape must not fail: the outage itself is what the alert needs to see)."""
        r = self.readouts
        try:
            stats = r.stats()
            windows = r.windows(within_s=(3600, 6 * 3600))
            last = r.last_reconcile()
        except (StoreError, redis.RedisError):
            yield _redis_up(0)
            return
        yield _redis_up(1)

        records = GaugeMetricFamily(
            "adjustments_records",
            "Records by status (terminal ones until retention)",
            labels=["status"],
        )
        for status, count in stats.records.items():
            records.add_metric([status], count)
        yield records

        queue = GaugeMetricFamily(
            "adjustments_queue_messages",
            "Task messages: waiting in Redis, held by workers (taken, not acknowledged), "
            "and retries scheduled",
            labels=["state"],
        )
        for state, count in asdict(stats.queue).items():
            queue.add_metric([state], count)
        yield queue

        closing = GaugeMetricFamily(
            "adjustments_live_windows_closing",
            "Live records whose 24 h cancellation window closes within the given time",
            labels=["within"],
        )
        for label, seconds in (("1h", 3600), ("6h", 6 * 3600)):
            closing.add_metric([label], windows.closing[seconds])
        yield closing

        yield GaugeMetricFamily(
            "adjustments_oldest_live_record_age_seconds",
            "Age of the oldest live (queued, processing or retrying) record (0: none live)",
            value=stats.oldest_live_age_s,
        )

        yield GaugeMetricFamily(
            "adjustments_processing_past_lease",
            "Records still processing after their lease ended (a worker died mid-call; "
            "reconciliation takes them over)",
            value=windows.past_lease,
        )

        yield from _platforms(stats)
        first_miss = parse_iso(stats.expiry_forecast_first_miss or "")
        if first_miss is not None:
            yield GaugeMetricFamily(
                "adjustments_expiry_forecast_first_miss_seconds",
                "Seconds until the nearest deadline the forecast misses (absent: none)",
                value=max(0.0, first_miss.timestamp() - time.time()),
            )
        yield GaugeMetricFamily(
            "adjustments_workers_alive",
            "Workers whose heartbeat has not expired",
            value=stats.workers_alive,
        )
        yield CounterMetricFamily(
            "adjustments_dead_letters",
            "Unparseable queue items set aside in the dead-letter list, ever",
            value=stats.dead_letters,
        )

        yield GaugeMetricFamily(
            "adjustments_last_reconcile_timestamp_seconds",
            "When the last reconciliation run finished (0: never)",
            value=float(last.get("finished_at") or 0),
        )
        repaired = GaugeMetricFamily(
            "adjustments_last_reconcile_repaired",
            "What the last reconciliation run republished or expired",
            labels=["action"],
        )
        for action in ("republished_queued", "republished_processing", "republished_retrying",
                       "expired"):  # fmt: skip
            repaired.add_metric([action], float(last.get(action) or 0))
        yield repaired


def _platforms(stats: Stats) -> Iterator[GaugeMetricFamily]:
    """Each platform's rate, ready records and forecast (label ``platform``: empty in a
    single-key deployment; ``(none)`` for records made before platforms were configured)."""
    platforms = stats.platforms or {
        "": PlatformStats(
            stats.ready, stats.expiry_forecast, stats.expiry_forecast_first_miss, stats.rate_limit
        )
    }
    shared = GaugeMetricFamily(
        "adjustments_rate_limit_per_second",
        "Each platform's shared Stripe rate: configured (as the workers use it) and current",
        labels=["kind", "platform"],
    )
    ready = GaugeMetricFamily(
        "adjustments_ready_records",
        "Records ready to be sent (queued, or a due retry made ready), by platform",
        labels=["platform"],
    )
    outlook = GaugeMetricFamily(
        "adjustments_expiry_forecast",
        "Waiting records that will miss their 24 h window at the rate the workers achieve "
        "now (all of them with no live worker), by platform",
        labels=["platform"],
    )
    for name, one in platforms.items():
        shared.add_metric(["configured", name], one.rate_limit.configured_per_s)
        shared.add_metric(["current", name], one.rate_limit.current_per_s)
        ready.add_metric([name], one.ready)
        outlook.add_metric([name], one.expiry_forecast)
    yield shared
    yield ready
    yield outlook


def _redis_up(value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "adjustments_redis_up", "Whether Redis answered this scrape (1) or not (0)", value=value
    )


def serve_deployment_metrics(readouts: Readouts, port: int, addr: str = "127.0.0.1") -> None:
    """Serve the deployment's metrics from Redis on ``port`` until interrupted."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeploymentCollector(readouts))
    start_http_server(port, addr=addr, registry=registry)
