"""Contract: the messages our Lua outbox pushes are the ones Celery's send_task would push."""

from __future__ import annotations

import json
from typing import Any

import redis

from adjustments.celery_app import TASK_NAME, create_app
from adjustments.config import Settings
from adjustments.messages import TaskMessages

VARIABLE = {"id", "root_id", "correlation_id", "delivery_tag", "origin", "reply_to"}


def shape(message: dict[str, Any]) -> dict[str, Any]:
    """The message with its per-message random values blanked out."""
    headers = {k: ("*" if k in VARIABLE else v) for k, v in message["headers"].items()}
    props = {k: ("*" if k in VARIABLE else v) for k, v in message["properties"].items()}
    return {**message, "headers": headers, "properties": props}


class TestTaskMessageContract:
    def test_outbox_message_matches_send_task(self, redis_url: str) -> None:
        """Same body, headers and properties as kombu's own publish, ids aside."""
        queue = "contract-q"
        settings = Settings.from_env({"REDIS_URL": redis_url, "ADJUSTMENTS_QUEUE": queue})
        app = create_app(settings, redis_url)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            client.delete(queue)
            app.send_task(TASK_NAME, args=("adj_contract",), queue=queue)
            theirs = json.loads(client.rpop(queue) or "{}")
            ours = json.loads(TaskMessages(app, queue).payload("adj_contract"))
            assert shape(ours) == shape(theirs)
            assert (
                ours["headers"]["id"]
                == ours["properties"]["correlation_id"]
                == ours["headers"]["root_id"]
            )
        finally:
            client.delete(queue)
            client.close()
            app.close()
