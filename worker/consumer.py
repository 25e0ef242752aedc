"""Celery's consumer, reconnecting to the broker at short intervals and repairing what a lost
connection may have swallowed.

A module of its own, imported by name (``worker_consumer``) when a worker builds its consumer:
``celery.worker.consumer`` binds ``build_tracer`` at import, so importing it with the app would
freeze the tracer before a settings module had set up Sentry's Celery integration.
"""

from __future__ import annotations

import threading
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Connection

from .celery_config import RECONNECT_INTERVALS_S
from .tasks import repair_after_connect


class Consumer(CeleryConsumer):
    """Celery's consumer, reconnecting to the broker at short intervals."""

    def ensure_connected(self, conn: Connection) -> Connection:
        ensure = conn.ensure_connection

        def quicker(*args: Any, **kwargs: Any) -> Any:
            return ensure(*args, **{**RECONNECT_INTERVALS_S, **kwargs})

        conn.ensure_connection = quicker  # type: ignore[method-assign]
        connected = super().ensure_connected(conn)
        threading.Thread(target=repair_after_connect, name="orphan-check", daemon=True).start()
        return connected
