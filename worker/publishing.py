"""The one way a task message goes onto the queue for a record that already exists, with one
failure policy; and where kombu keeps a queue's messages in Redis.

``cancel()`` writes a new record's first message itself, in its Lua script (the outbox, see
``messages``). Every later message goes through ``publish``: a replay, a reconciliation or
orphan repair, and a retry after its countdown. A publish that fails is counted
(``adjustments_publish_failures_total``), logged at error level with the record id, and
answered with False, never raised: the record is already safe in Redis in a live status, and
reconciliation publishes it again.
"""

from __future__ import annotations

import redis
from celery import Celery
from kombu.transport.redis import Channel

from . import metrics
from .heartbeat import alive
from .logging import get_logger
from .messages import TASK_NAME

log = get_logger("adjustments.publishing")


def publish(app: Celery, record_id: str, *, queue: str, countdown: float | None = None) -> bool:
    """Send ``process_cancellation(record_id)`` to ``queue`` (after ``countdown`` seconds).
    False, counted and logged, if the broker refused it."""
    try:
        app.send_task(TASK_NAME, args=(record_id,), queue=queue, countdown=countdown)
    except Exception as exc:
        metrics.PUBLISH_FAILURES.inc()
        log.error("cancellation.publish_failed", request_id=record_id, error=str(exc))
        return False
    return True


# kombu's Redis transport keeps every delivered, not yet acknowledged message in this hash
# (one per Redis database, whatever the queue).
UNACKED_KEY: str = Channel.unacked_key


def queue_lists(queue: str) -> list[str]:
    """The Redis lists kombu's transport keeps for ``queue``: one per priority step, named as
    its channel names them."""
    return [
        queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in Channel.priority_steps
    ]


def outstanding(client: redis.Redis, *, queue: str, prefix: str) -> int:
    """Task messages on their way to an attempt: waiting in ``queue``'s lists, or held by
    the threads of live workers (their heartbeats' ``in_flight``). Messages held by a worker
    that died are not counted: their records need new ones (see ``reconcile``)."""
    pipe = client.pipeline(transaction=False)
    for name in queue_lists(queue):
        pipe.llen(name)
    waiting = sum(int(n) for n in pipe.execute())
    return waiting + sum(worker.in_flight for worker in alive(client, prefix))
