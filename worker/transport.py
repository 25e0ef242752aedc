"""kombu's Redis transports, made to survive what the queue may hold and what Redis may answer.

kombu 5.x stops the whole worker when one list item is not a message it can parse (plain text,
a JSON array, a body that is not base64), and when Redis refuses kombu's own bookkeeping write
with ``OOM``. Here such an item is moved aside to a dead-letter list with its raw text (counted
and logged) and the worker carries on; a message whose bookkeeping write hits ``OOM`` is put
back on its queue (the consumer pauses until Redis takes it back). Selected with Celery's
``broker_transport``; see ``adjustments.connection``.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from . import keys
from .logging import get_logger

log = get_logger("adjustments.transport")

DEAD_LETTER_CAP = 10_000  # newest items kept; the counter keeps the total
OOM_RESTORE_FOR_S = 30.0

# Delivery tags whose messages kombu could not put back on their queue when the connection
# died (it tries while Redis is down): they wait in kombu's unacked hash, which kombu itself
# only restores after the visibility timeout (an hour). Restored on the next connection.
_stranded: set[str] = set()
# Items popped from a queue whose delivery failed because the connection died on the way
# (kombu's bookkeeping write may or may not have run): (queue, raw item, delivery tag).
_in_flight: list[tuple[str, str, str]] = []
_stranded_lock = threading.Lock()


class ResilientQoS(kombu_redis.QoS):
    """kombu's QoS, remembering what it failed to restore while Redis was unreachable."""

    def restore_unacked(self, client: Any = None) -> None:
        tags = list(self._delivered or ())
        try:
            super().restore_unacked(client)
        except redis.RedisError as exc:
            with _stranded_lock:
                _stranded.update(tags)
            if self._delivered is not None:
                self._delivered.clear()
            log.warning("queue.restore_deferred", messages=len(tags), error=str(exc))

    def restore_stranded(self) -> None:
        """Put back what an earlier connection left in the unacked hash (a message already
        acknowledged is gone from it: nothing happens; one still running is delivered again
        and refused by the record's lease)."""
        with _stranded_lock:
            tags = list(_stranded)
        restored = 0
        for tag in tags:
            try:
                self.restore_by_tag(tag, leftmost=True)
            except redis.RedisError as exc:
                log.warning("queue.restore_failed", error=str(exc), left=len(tags) - restored)
                return
            with _stranded_lock:
                _stranded.discard(tag)
            restored += 1
        if restored:
            log.info("queue.restored_after_reconnect", messages=restored)


def parse_envelope(item: str) -> dict[str, Any] | str:
    """The message kombu can deliver from ``item``, or why it is not one."""
    try:
        payload = json.loads(item)
    except ValueError:
        return "not JSON"
    if not isinstance(payload, dict):
        return f"a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "no properties object"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "delivery_info is not an object"
    if not isinstance(payload.get("headers", {}), dict | None):
        return "headers is not an object"
    body = payload.get("body")
    if properties.get("body_encoding") == "base64":
        if not isinstance(body, str):
            return "base64 body is not a string"
        try:
            base64.b64decode(body.encode(), validate=True)
        except (binascii.Error, ValueError):
            return "body is not valid base64"
    return payload


def envelope_problem(item: str) -> str | None:
    """Why ``item`` is not a message kombu can deliver, or None if it is one."""
    parsed = parse_envelope(item)
    return parsed if isinstance(parsed, str) else None


def _is_oom(exc: redis.RedisError) -> bool:
    """Redis refused a write for memory (plain, or inside kombu's MULTI/EXEC pipeline)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM" in str(exc)


class _Resilient:
    """Mixed into kombu's Redis channels: dead letters, OOM restores, stranded messages."""

    QoS = ResilientQoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if _in_flight:
            self._restore_in_flight()
        if _stranded:
            self.qos.restore_stranded()  # type: ignore[attr-defined]

    def _restore_in_flight(self) -> None:
        """Push each item whose delivery died with the connection back on its queue, once:
        taking it out of kombu's unacked hash if its bookkeeping write had run."""
        with _stranded_lock:
            items = list(_in_flight)
        unacked, index = self.unacked_key, self.unacked_index_key  # type: ignore[attr-defined]
        for queue, item, tag in items:

            def put_back(pipe: Any, queue: str = queue, item: str = item, tag: str = tag) -> None:
                held = pipe.hget(unacked, tag)
                pipe.multi()
                if held:
                    pipe.zrem(index, tag).hdel(unacked, tag)
                pipe.rpush(queue, item)

            try:
                with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
                    client.transaction(put_back, unacked)
            except redis.RedisError as exc:
                log.warning("queue.restore_failed", error=str(exc))
                return
            with _stranded_lock:
                _in_flight.remove((queue, item, tag))
            log.info("queue.restored_in_flight", queue=queue)

    # Provided by kombu's Channel:
    client: Any
    connection: Any
    connection_errors: tuple[type[BaseException], ...]
    sep: str
    _queue_cycle: Any
    _in_poll: Any
    transport_options: dict[str, Any]

    def _dead_letter_keys(self) -> tuple[str, str]:
        base = self.connection.client.transport_options.get("dead_letter_key", "adj:deadletter")
        return str(base), keys.dead_letter_total(str(base))

    def _dead_letter(self, queue: str, item: str, reason: str) -> None:
        key, total = self._dead_letter_keys()
        entry = json.dumps({"queue": queue, "reason": reason, "at": time.time(), "raw": item})
        try:
            pipe = self.client.pipeline()
            pipe.lpush(key, entry).ltrim(key, 0, DEAD_LETTER_CAP - 1).incr(total)
            count = pipe.execute()[-1]
        except redis.RedisError as exc:
            log.error("queue.dead_letter_failed", queue=queue, reason=reason, error=str(exc))
            return
        log.error("queue.dead_lettered", queue=queue, reason=reason, size=len(item), total=count)

    def _restore_after_oom(self, queue: str, item: str) -> None:
        """Put ``item`` back where BRPOP will find it next; block consuming until Redis takes
        it (no point taking more work while Redis refuses writes)."""
        deadline = time.monotonic() + OOM_RESTORE_FOR_S
        delay = 0.1
        while True:
            try:
                self.client.rpush(queue, item)
                log.warning("queue.message_restored_after_oom", queue=queue)
                return
            except redis.RedisError as exc:
                if time.monotonic() > deadline:
                    # The record is still live in our store: reconciliation publishes it again.
                    log.error("queue.message_dropped_oom", queue=queue, error=str(exc))
                    return
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    def _deliver_item(self, queue: str, item: str) -> None:
        payload = parse_envelope(item)
        if isinstance(payload, str):
            self._dead_letter(queue, item, payload)
            return
        try:
            self.connection._deliver(payload, queue)
        except self.connection_errors:
            tag = str(payload["properties"].get("delivery_tag", ""))
            if tag and tag not in (self.qos._delivered or ()):  # type: ignore[attr-defined]
                with _stranded_lock:
                    _in_flight.append((queue, item, tag))
            raise
        except redis.ResponseError as exc:
            if not _is_oom(exc):
                raise
            log.warning("queue.oom_on_delivery", queue=queue)
            self._restore_after_oom(queue, item)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest_item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest_item:
                raise Empty()
            dest, item = dest_item
            queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            self._deliver_item(queue, bytes_to_str(item))
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _get(self, queue: str) -> Any:
        while True:
            with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
                for pri in self.priority_steps:  # type: ignore[attr-defined]
                    item = client.rpop(self._q_for_pri(queue, pri))  # type: ignore[attr-defined]
                    if item:
                        text = bytes_to_str(item)
                        payload = parse_envelope(text)
                        if not isinstance(payload, str):
                            return payload
                        self._dead_letter(queue, text, payload)
                        break
                else:
                    raise Empty()


class RedisChannel(_Resilient, kombu_redis.Channel):  # type: ignore[misc]
    pass


class SentinelChannel(_Resilient, kombu_redis.SentinelChannel):  # type: ignore[misc]
    pass


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
