"""Thin Celery tasks over ``adjustments.attempt``: carry out the decision, schedule the retry."""

from __future__ import annotations

import time
from collections.abc import Callable

from celery import Task
from celery.exceptions import Reject

from . import compensation, publishing
from .attempt import run_attempt
from .celery_app import app
from .errors import CancellationFailed, ClaimNotDurable
from .logging import get_logger
from .messages import RECONCILE_TASK, TASK_NAME
from .models import Status
from .reconcile import reconcile, watch_for_orphans
from .runtime import RIDE_OUT, Runtime, get_runtime, wait_unless_stopping
from .store import RecordStore

log = get_logger("adjustments.tasks")
REDIS_RETRY_S = 5
ORPHAN_MIN_AGE_S = 2.0


@app.task(
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # A permanent failure raises CancellationFailed after the record is written: Celery marks
    # the task FAILURE and acks it (no redelivery, no Celery retry). It is deliberately not
    # in ``throws``: Sentry's and OpenTelemetry's Celery integrations skip those exceptions.
)
def process_cancellation(
    self: Task,  # type: ignore[type-arg]
    record_id: str,
) -> str:
    """One attempt for ``record_id``; a retry is a new message with a countdown, never a sleep."""
    runtime = get_runtime(str(app.conf.adjustments_redis_url))
    try:
        result = run_attempt(
            record_id,
            store=runtime.store,
            send=runtime.send,
            policy=runtime.policy,
            lease_s=runtime.settings.claim_lease_s,
            limiter=runtime.budgets,
            clock=runtime.clock,
            wait=wait_unless_stopping,
            on_expired=_compensation_hook(runtime),
        )
    except (*RIDE_OUT, ClaimNotDurable) as exc:
        # Redis stayed away (or full) longer than the client's own retries: try again later.
        # The lease and the idempotency key make that safe; if even the retry cannot be
        # published, the record is still live in the store and reconciliation re-drives it.
        log.warning("cancellation.redis_unavailable", request_id=record_id, error=str(exc))
        raise self.retry(countdown=REDIS_RETRY_S, max_retries=None) from exc
    if result.requeue:  # stopping while waiting for a slot: back to the queue, untouched
        raise Reject("worker shutting down", requeue=True)
    if result.status is Status.FAILED:
        error = runtime.store.get(record_id).last_error
        code = (error.code or error.type) if error else None
        raise CancellationFailed(f"{record_id} failed: {code or 'permanent error'}")
    if result.retry_in_s is not None:  # the record says retrying: if this publish fails,
        # reconciliation publishes it again once it is overdue
        publishing.publish(
            app, record_id, queue=runtime.settings.later_queue, countdown=result.retry_in_s
        )
    return result.reason


def _compensation_hook(runtime: Runtime) -> Callable[[str], None] | None:
    """With ADJUSTMENTS_COMPENSATE=expired: begin the compensation of a record the attempt
    expired. A failure here is logged: reconciliation begins it on its next run."""
    if runtime.settings.compensate != "expired":
        return None
    mode = runtime.settings.compensation_timestamp

    def hook(record_id: str) -> None:
        try:
            compensation.start(
                runtime.store, record_id, publish, now=runtime.clock(), timestamp_mode=mode
            )
        except Exception as exc:
            log.warning("compensation.not_begun", request_id=record_id, error=str(exc))

    return hook


def publish(record_id: str) -> bool:
    """Publish one attempt message on the main queue (reconciliation, orphan repair)."""
    return publishing.publish(app, record_id, queue=str(app.conf.task_default_queue))


@app.task(name=RECONCILE_TASK, ignore_result=True)
def reconcile_task() -> dict[str, object]:
    """The scheduled repair run (``adjustments beat`` sends it every interval)."""
    runtime = get_runtime(str(app.conf.adjustments_redis_url))
    report = reconcile(
        store=runtime.store,
        publish=publish,
        now=runtime.clock(),
        grace_s=runtime.settings.reconcile_grace_s,
        tickets=_tickets(runtime.store),
        settle_s=runtime.settings.heartbeat_s + 0.5,
        compensation_timestamp=(
            runtime.settings.compensation_timestamp
            if runtime.settings.compensate == "expired"
            else None
        ),
    )
    return report.to_dict()


def _tickets(store: RecordStore) -> Callable[[], int]:
    queue = str(app.conf.task_default_queue)
    return lambda: publishing.outstanding(store.client, queue=queue, prefix=store.prefix)


def repair_after_connect() -> None:
    """Publish again what a lost connection may have swallowed (see ``watch_for_orphans``);
    run by the consumer in a thread of its own each time it (re)connects to Redis.

    It waits ORPHAN_MIN_AGE_S first: the workers' heartbeats then count the messages they
    took since they reconnected."""
    time.sleep(ORPHAN_MIN_AGE_S)
    try:
        runtime = get_runtime(str(app.conf.adjustments_redis_url))
        watch_for_orphans(
            store=runtime.store,
            publish=publish,
            tickets=_tickets(runtime.store),
            settle_s=runtime.settings.heartbeat_s + 0.5,
        )
    except Exception as exc:  # reconciliation still covers it after the grace period
        log.warning("queue.orphan_check_failed", error=str(exc))
