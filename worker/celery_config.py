"""Our Celery configuration, and apps made from it for a producer (which registers no task):
no worker code is imported here, so enqueueing loads neither the Stripe SDK nor the attempt."""

from __future__ import annotations

import math
from typing import Any

from celery import Celery
from kombu import Queue

from . import keys
from .config import Settings
from .messages import RECONCILE_TASK

# Reconnect attempts every 0.5 s, then 1 s, at most 2 s apart (kombu's own default grows to
# 30 s): a worker resumes within a few seconds of Redis being reachable again.
RECONNECT_INTERVALS_S = {"interval_start": 0.5, "interval_step": 0.5, "interval_max": 2.0}


def reconnect_attempts(limit_s: float) -> int:
    """How many reconnect attempts span about ``limit_s`` at RECONNECT_INTERVALS_S."""
    return max(2, math.ceil(limit_s / RECONNECT_INTERVALS_S["interval_max"]) + 1)


def celery_config(settings: Settings, redis_url: str) -> dict[str, Any]:
    """Our defaults: at-least-once delivery, the record as the only result, short timeouts."""
    target = settings.redis_target(redis_url)
    broker = target.celery_options()
    return {
        "adjustments_redis_url": redis_url,
        "broker_url": target.broker_url(),
        "broker_transport": broker["broker_transport"],
        "broker_use_ssl": broker["broker_use_ssl"],
        "broker_connection_retry_on_startup": True,
        # Past this many reconnect attempts (about ADJUSTMENTS_REDIS_OUTAGE_LIMIT_S at 2 s
        # apart) the worker stops with a non-zero exit code, for its supervisor to see.
        "broker_connection_max_retries": reconnect_attempts(settings.redis_outage_limit_s),
        "broker_transport_options": {
            # Longer than the longest retry countdown: an ETA message is not redelivered early.
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 30,
            "dead_letter_key": keys.dead_letter(settings.key_prefix),
            **broker["transport_options"],
        },
        # Imported by the worker only when it builds its consumer: after the settings module ran,
        # so an integration it sets up (Sentry patches Celery's build_tracer) is in place.
        "worker_consumer": "adjustments.consumer:Consumer",
        "result_backend": None,
        "task_ignore_result": True,
        "task_default_queue": settings.queue,
        # Both queues are consumed, in turn (kombu rotates its BRPOP order).
        "task_queues": (Queue(settings.queue), Queue(settings.later_queue)),
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_pool": "threads",
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "imports": ["adjustments.tasks"],
        "beat_schedule": {
            "reconcile": {
                "task": RECONCILE_TASK,
                "schedule": settings.reconcile_interval_s,
                # A run nobody picked up before the next one is due is dropped, not piled up.
                "options": {"expires": settings.reconcile_interval_s},
            }
        },
        "beat_schedule_filename": str(settings.data_dir / "celerybeat-schedule"),
    }


def create_app(settings: Settings, broker_url: str, *, name: str = "adjustments") -> Celery:
    """A configured app, e.g. for a producer; it registers no tasks of its own."""
    app = Celery(name, set_as_current=False)
    config = celery_config(settings, broker_url)
    config["imports"] = []
    app.conf.update(config)
    return app
