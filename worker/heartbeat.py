"""Worker liveness: each worker process keeps a heartbeat hash in Redis, and anyone can read
who is alive (``adjustments workers``) or probe this host's worker (``adjustments health``).

The hash expires after three missed beats, so a worker killed with SIGKILL drops out within
``3 x ADJUSTMENTS_HEARTBEAT_S`` without anyone cleaning up after it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis

from . import keys
from .logging import get_logger
from .version import VERSION

log = get_logger("adjustments.heartbeat")
MISSED_BEATS = 3
FORGET_AFTER_S = 3600  # a node name not seen for this long leaves the workers index
RUN = 1  # celery.bootsteps.RUN (untyped there)
STALLED_LOOP_S = 30.0  # an event loop that has not turned for this long is not consuming


def consumer_problem(
    consumer: Any, activity: Activity, *, queue: str, stalled_after_s: float
) -> str:
    """Why Celery's ``consumer`` is not consuming ``queue`` right now, or "" if it is: its
    blueprint runs, its broker connection is up, it consumes the queue (``celery control
    cancel_consumer`` stops that), and its event loop turned within ``stalled_after_s``."""
    blueprint = getattr(consumer, "blueprint", None)
    if blueprint is None or blueprint.state != RUN:
        return "consumer not running"
    connection = getattr(consumer, "connection", None)
    if connection is None or not connection.connected:
        return "not connected to the broker"
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None or not task_consumer.consuming_from(queue):
        return f"not consuming from queue {queue}"
    quiet_s = time.monotonic() - activity.loop_tick_at
    if quiet_s > stalled_after_s:
        return f"event loop stalled for {quiet_s:.0f} s"
    return ""


class Activity:
    """In-flight count and last task time of this process's tasks (thread-safe), and whether
    its consumer is consuming (set by the worker when it is ready)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.last_task_at = 0.0
        self.loop_tick_at = time.monotonic()  # the consumer's event loop, each turn
        self.consumer_problem: Callable[[], str] = lambda: ""

    def tick(self) -> None:
        """Called by the consumer's event loop on every turn (about once a second at least:
        the Redis transport's BRPOP times out every second)."""
        self.loop_tick_at = time.monotonic()

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self) -> None:
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            self.last_task_at = time.time()


ACTIVITY = Activity()


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker said in its last beat."""

    node: str
    host: str
    pid: int
    version: str
    concurrency: int
    queue: str
    in_flight: int
    last_task_at: float  # epoch seconds, 0: none yet
    beat_at: float
    started_at: float
    problem: str = ""  # why it is not consuming; "" when it is

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> WorkerInfo:
        return cls(
            node=data["node"],
            host=data.get("host", ""),
            pid=int(data.get("pid") or 0),
            version=data.get("version", ""),
            concurrency=int(data.get("concurrency") or 0),
            queue=data.get("queue", ""),
            in_flight=int(data.get("in_flight") or 0),
            last_task_at=float(data.get("last_task_at") or 0),
            beat_at=float(data.get("beat_at") or 0),
            started_at=float(data.get("started_at") or 0),
            problem=data.get("problem", ""),
        )

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def beat(
    client: redis.Redis,
    *,
    prefix: str,
    node: str,
    interval_s: float,
    concurrency: int,
    queue: str,
    started_at: float,
    activity: Activity = ACTIVITY,
) -> None:
    """Write one heartbeat: the hash (expiring after MISSED_BEATS intervals) and the index."""
    now = time.time()
    key = keys.worker(prefix, node)
    pipe = client.pipeline(transaction=False)
    pipe.hset(
        key,
        mapping={
            "node": node,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": VERSION,
            "concurrency": concurrency,
            "queue": queue,
            "in_flight": activity.in_flight,
            "last_task_at": activity.last_task_at,
            "beat_at": now,
            "started_at": started_at,
            "problem": activity.consumer_problem(),
        },
    )
    pipe.pexpire(key, int(MISSED_BEATS * interval_s * 1000))
    pipe.zadd(keys.workers(prefix), {node: int(now * 1000)})
    pipe.zremrangebyscore(keys.workers(prefix), "-inf", int((now - FORGET_AFTER_S) * 1000))
    pipe.execute()


def start_beating(
    client: redis.Redis, *, prefix: str, node: str, interval_s: float, concurrency: int, queue: str
) -> threading.Event:
    """Beat every ``interval_s`` in a daemon thread until the returned event is set. A beat
    that cannot reach Redis is logged and retried at the next interval."""
    stop = threading.Event()
    started_at = time.time()

    def loop() -> None:
        while True:
            try:
                beat(client, prefix=prefix, node=node, interval_s=interval_s,
                     concurrency=concurrency, queue=queue, started_at=started_at)  # fmt: skip
            except redis.RedisError as exc:
                log.warning("worker.heartbeat_failed", node=node, error=str(exc))
            if stop.wait(interval_s):
                client.delete(keys.worker(prefix, node))  # a clean stop leaves at once
                return

    threading.Thread(target=loop, name="heartbeat", daemon=True).start()
    return stop


def alive(client: redis.Redis, prefix: str) -> list[WorkerInfo]:
    """Workers whose heartbeat has not expired, newest beat first."""
    nodes = cast(list[str], client.zrevrange(keys.workers(prefix), 0, -1))
    pipe = client.pipeline(transaction=False)
    for node in nodes:
        pipe.hgetall(keys.worker(prefix, node))
    found = cast(list[dict[str, str]], pipe.execute())
    return [WorkerInfo.from_hash(data) for data in found if data]
