"""Celery task messages in the exact form kombu's Redis transport stores them.

``cancel()`` writes the record and LPUSHes its task message in one Lua script: one round trip,
and no window in which a record exists without its message (a transactional outbox).
The message is built by Celery's own ``create_task_message`` and serialised like kombu's
virtual channel does; a contract test compares it with what ``send_task`` stores.
"""

from __future__ import annotations

import base64
from typing import Any

from celery import Celery
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as json_dumps
from kombu.utils.uuid import uuid

from worker.celery_app import TASK_NAME

DELIVERY_PERSISTENT = 2


class TaskMessages:
    """Builds the payload for ``process_cancellation(record_id)`` on ``queue`` (priority 0)."""

    def __init__(self, app: Celery, queue: str) -> None:
        self.app = app
        self.queue = queue  # the Redis list for priority 0 is the queue's own name

    def payload(self, record_id: str) -> str:
        task_id = uuid()
        headers, properties, body, _ = self.app.amqp.create_task_message(
            task_id,
            TASK_NAME,
            (record_id,),
            {},
            root_id=task_id,
            argsrepr=repr((record_id,)),
            kwargsrepr="{}",
            ignore_result=None,  # what send_task sends when the caller does not say
        )
        content_type, content_encoding, data = serialize(body, serializer="json")
        raw = data.encode(content_encoding) if isinstance(data, str) else data
        message: dict[str, Any] = {
            "body": base64.b64encode(raw).decode("ascii"),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": {
                **properties,
                "delivery_mode": DELIVERY_PERSISTENT,
                "delivery_info": {"exchange": "", "routing_key": self.queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": uuid(),
            },
        }
        return str(json_dumps(message))
