"""Contract: the messages our Lua outbox pushes are calls a Celery worker decodes exactly as it
decodes send_task's, at well under half the size."""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from adjustments.celery_config import create_app
from adjustments.config import Settings
from adjustments.messages import TASK_NAME, TaskMessages, decoded_body, record_id_of


class TestTaskMessageContract:
    def test_outbox_message_is_the_same_call_as_send_task(self, redis_url: str) -> None:
        """Task name, args, kwargs and embed, and the delivery properties kombu uses, match
        kombu's own publish; the task id doubles as the delivery tag; optional headers that
        would only carry Celery's defaults are left out."""
        queue = "contract-q"
        settings = Settings.from_env({"REDIS_URL": redis_url, "ADJUSTMENTS_QUEUE": queue})
        app = create_app(settings, redis_url)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            client.delete(queue)
            app.send_task(TASK_NAME, args=("adj_contract",), queue=queue)
            raw_theirs = client.rpop(queue) or "{}"
            raw_ours = TaskMessages(app, queue).payload("adj_contract")
        finally:
            client.delete(queue)
            client.close()
            app.close()
        assert isinstance(raw_theirs, str)
        theirs, ours = json.loads(raw_theirs), json.loads(raw_ours)
        args, kwargs, embed = cast(list[Any], decoded_body(ours))
        t_args, t_kwargs, t_embed = cast(list[Any], decoded_body(theirs))
        assert (args, kwargs) == (t_args, t_kwargs) == (["adj_contract"], {})
        assert {k: v for k, v in t_embed.items() if v is not None} == embed == {}
        assert ours["headers"]["task"] == theirs["headers"]["task"] == TASK_NAME
        for name in ("content-type", "content-encoding"):
            assert ours[name] == theirs[name]
        for name in ("delivery_info", "priority", "delivery_mode"):
            assert ours["properties"][name] == theirs["properties"][name]
        assert ours["properties"]["delivery_tag"] == ours["headers"]["id"]
        dropped = set(theirs["headers"]) - set(ours["headers"])
        defaults: list[object] = [None, "", 0, False, {}, "{}", [None, None]]
        assert all(
            theirs["headers"][k] in defaults or k in ("root_id", "argsrepr", "origin")
            for k in dropped
        )
        assert record_id_of(raw_ours) == record_id_of(raw_theirs) == "adj_contract"
        assert len(raw_ours) < 0.5 * len(raw_theirs)
