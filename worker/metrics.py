"""Prometheus metrics: what each worker did (served by the worker on ADJUSTMENTS_METRICS_PORT),
and what the whole deployment looks like in Redis (served by ``adjustments metrics``).

Worker metrics live in a registry of our own, so importing the package registers nothing in a
host process's default registry. With ``PROMETHEUS_MULTIPROC_DIR`` set (a forking pool),
prometheus_client keeps the values in files and the worker's endpoint merges them.

Deployment metrics are read from Redis at scrape time with a handful of O(log n) commands
(index cardinalities, range counts, the ends of the queue), never a scan of the records, so a
15 s scrape is cheap with a million records.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # the producer imports this module (its counters): no cycle at run time
    from .producer import Producer

REGISTRY = CollectorRegistry(auto_describe=True)

ATTEMPTS = Counter(
    "adjustments_attempts",
    "Attempts by API, outcome (accepted, retry, failed, ...) and Stripe's HTTP status",
    ["api", "outcome", "http_status"],
    registry=REGISTRY,
)
STRIPE_SECONDS = Histogram(
    "adjustments_stripe_call_seconds",
    "Duration of one Stripe call, answered or not",
    ["api"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30),
    registry=REGISTRY,
)
RETRIES = Counter(
    "adjustments_retries_scheduled",
    "Attempts that ended in a retry scheduled with backoff",
    ["api"],
    registry=REGISTRY,
)
STRIPE_429 = Counter(
    "adjustments_stripe_429",
    "Stripe 429 answers by Stripe-Rate-Limited-Reason (none: not a rate limiter, such as "
    "lock_timeout)",
    ["reason"],
    registry=REGISTRY,
)
LEASE_LOST = Counter(
    "adjustments_lease_lost",
    "Attempts whose lease lapsed before their outcome was written (another worker took over)",
    registry=REGISTRY,
)
PUBLISH_FAILURES = Counter(
    "adjustments_publish_failures",
    "Task messages the broker refused (reconciliation publishes them again)",
    registry=REGISTRY,
)
FIRST_CALL_SECONDS = Histogram(
    "adjustments_enqueue_to_first_call_seconds",
    "Time from cancel() to the request's first Stripe call",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 6 * 3600, 24 * 3600),
    registry=REGISTRY,
)


def serve_worker_metrics(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - a scrape port
    """Serve this worker's metrics on ``port`` (a daemon thread)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=addr, registry=registry)


class DeploymentCollector(Collector):
    """The deployment's state in Redis, read at each scrape."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer  # an adjustments Producer (its client, store and settings)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        p = self.producer
        stats = p.stats()
        windows = p.windows(within_s=(3600, 6 * 3600))

        records = GaugeMetricFamily(
            "adjustments_records",
            "Records by status (terminal ones until retention)",
            labels=["status"],
        )
        for status, count in cast(dict[str, int], stats["records"]).items():
            records.add_metric([status], count)
        yield records

        queue = GaugeMetricFamily(
            "adjustments_queue_messages",
            "Task messages: waiting in Redis, held by workers (taken, not acknowledged), "
            "and retries scheduled",
            labels=["state"],
        )
        for state, count in cast(dict[str, int], stats["queue"]).items():
            queue.add_metric([state], count)
        yield queue

        closing = GaugeMetricFamily(
            "adjustments_live_windows_closing",
            "Live records whose 24 h cancellation window closes within the given time",
            labels=["within"],
        )
        for label, seconds in (("1h", 3600), ("6h", 6 * 3600)):
            closing.add_metric([label], windows["closing"][seconds])
        yield closing

        yield GaugeMetricFamily(
            "adjustments_oldest_live_record_age_seconds",
            "Age of the oldest live (queued, processing or retrying) record (0: none live)",
            value=float(cast(float, stats["oldest_live_age_s"])),
        )

        yield GaugeMetricFamily(
            "adjustments_processing_past_lease",
            "Records still processing after their lease ended (a worker died mid-call; "
            "reconciliation takes them over)",
            value=windows["past_lease"],
        )

        rate = cast(dict[str, float], stats["rate_limit"])
        shared = GaugeMetricFamily(
            "adjustments_rate_limit_per_second",
            "The shared Stripe rate: configured (as the workers use it) and current",
            labels=["kind"],
        )
        shared.add_metric(["configured"], float(rate["configured_per_s"]))
        shared.add_metric(["current"], float(rate["current_per_s"]))
        yield shared

        yield GaugeMetricFamily(
            "adjustments_workers_alive",
            "Workers whose heartbeat has not expired",
            value=int(cast(int, stats["workers_alive"])),
        )
        yield CounterMetricFamily(
            "adjustments_dead_letters",
            "Unparseable queue items set aside in the dead-letter list, ever",
            value=int(cast(int, stats["dead_letters"])),
        )

        last = p.last_reconcile()
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


def serve_deployment_metrics(producer: Producer, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104
    """Serve the deployment's metrics from Redis on ``port`` until interrupted."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeploymentCollector(producer))
    start_http_server(port, addr=addr, registry=registry)
