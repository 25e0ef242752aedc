"""Prometheus metrics, the package of our Prometheus interface.

Here: what each worker did, counted by the core as it works and served by the worker on
ADJUSTMENTS_METRICS_PORT. The counters live in a registry of our own, so importing the
package registers nothing in a host process's default registry. With
``PROMETHEUS_MULTIPROC_DIR`` set (a forking pool), prometheus_client keeps the values in files
and the worker's endpoint merges them.

``metrics.deployment``: what the whole deployment looks like in Redis, read at scrape time
(``adjustments metrics``, and ``/metrics`` of ``adjustments serve``).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)

ATTEMPTS = Counter(
    "adjustments_attempts",
    "Attempts by API, outcome (accepted, retry, failed, ...), Stripe's HTTP status and "
    "platform (empty without ADJUSTMENTS_PLATFORMS)",
    ["api", "outcome", "http_status", "platform"],
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
    "lock_timeout) and platform: one platform's 429s cut only its own rate",
    ["reason", "platform"],
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
