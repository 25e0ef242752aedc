"""Celery task messages as our Lua outbox pushes them: compact, and what kombu's Redis
transport delivers to a Celery worker.

``cancel()`` writes the record and LPUSHes its task message in one Lua script: one round trip,
and no window in which a record exists without its message (a transactional outbox).

A message waits in Redis for as long as a backlog takes to drain, so its size is most of a
queued request's memory. ``send_task`` would store about 1 KB: every optional protocol-2
header (null or empty for our task), the task id four times and a base64 body. Ours keeps
what a worker reads (the task name and id; the args, kwargs and embed of the body) and what
kombu needs to deliver, acknowledge and restore it (delivery info, tag, priority, mode), with
the body as plain JSON: about 400 bytes. Absent headers read as their defaults in Celery's
``Request``; a contract test decodes ours and ``send_task``'s to the same call, and every
integration test runs real workers on these messages.
"""

from __future__ import annotations

import base64
import json
import re
import uuid

from celery import Celery

from .tracing import propagation_headers

# The task names: part of the message format (a worker routes a message by its name).
TASK_NAME = "adjustments.process_cancellation"
RECONCILE_TASK = "adjustments.reconcile"

DELIVERY_PERSISTENT = 2
_RECORD = "@@RECORD_ID@@"
_TASK = "@@TASK_ID@@"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # our ids need no JSON escaping


class TaskMessages:
    """Builds the payload for ``process_cancellation(record_id)`` on ``queue`` (priority 0)."""

    def __init__(self, app: Celery, queue: str) -> None:
        self.app = app
        self.queue = queue  # the Redis list for priority 0 is the queue's own name
        body = json.dumps([[_RECORD], {}, {}], separators=(",", ":"))
        self._message = json.dumps(
            {
                "body": body,  # no body_encoding: kombu hands the text to the JSON decoder
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": {"lang": "py", "task": TASK_NAME, "id": _TASK},
                "properties": {
                    "delivery_mode": DELIVERY_PERSISTENT,
                    "delivery_info": {"exchange": "", "routing_key": queue},
                    "priority": 0,
                    "delivery_tag": _TASK,  # unique per message, like the task id
                },
            },
            separators=(",", ":"),
        )

    def payload(self, record_id: str) -> str:
        """The message for ``record_id``, with the caller's trace context in its headers when
        a tracing integration has one (see ``tracing``)."""
        if not _SAFE_ID.match(record_id):
            raise ValueError(f"unexpected record id {record_id!r}")
        message = self._message.replace(_TASK, uuid.uuid4().hex).replace(_RECORD, record_id)
        trace = propagation_headers()
        if trace:
            envelope = json.loads(message)
            envelope["headers"].update(trace)
            message = json.dumps(envelope, separators=(",", ":"))
        return message


def decoded_body(envelope: dict[str, object]) -> object:
    """The deserialised body of a message as kombu stores it (base64 or plain JSON)."""
    body = envelope["body"]
    properties = envelope.get("properties")
    if isinstance(properties, dict) and properties.get("body_encoding") == "base64":
        body = base64.b64decode(str(body))
    return json.loads(body if isinstance(body, str | bytes) else str(body))


def record_id_of(message: str) -> str | None:
    """The record id a task message on the queue is for, or None if it is not one of ours."""
    try:
        envelope = json.loads(message)
        args = decoded_body(envelope)[0]  # type: ignore[index]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    record_id = args[0] if isinstance(args, list) and args else None
    return record_id if isinstance(record_id, str) and _SAFE_ID.match(record_id) else None
