"""Baselines for `make bench`: a plain Celery app with default settings, as most people write it.

- ``baseline.cancel``: one SDK call per task, no records, no retries, no idempotency keys;
  run as ``celery -A benchmarks.baseline_app worker --pool prefork -c <cores>``.
- ``baseline.noop``: the task whose ``apply_async`` our ``cancel()`` is compared with.
"""

from __future__ import annotations

import os
from typing import Any

import stripe
from celery import Celery

app = Celery("baseline", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.task_default_queue = os.environ.get("BASELINE_QUEUE", "baseline")

_client: stripe.StripeClient | None = None


def client() -> stripe.StripeClient:
    global _client
    if _client is None:
        _client = stripe.StripeClient(
            os.environ["STRIPE_API_KEY"], base_addresses={"api": os.environ["STRIPE_API_BASE"]}
        )
    return _client


@app.task(name="baseline.cancel")
def cancel(event_name: str, identifier: str) -> str:
    params: Any = {"event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier}}
    return str(client().v1.billing.meter_event_adjustments.create(params=params).status)


@app.task(name="baseline.noop")
def noop() -> None:
    return None
