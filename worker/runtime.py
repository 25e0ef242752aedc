"""What one worker process shares between its threads: settings, the store, the Stripe client."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

import redis

from . import attempt, stripe_api
from .config import Settings, load_settings
from .outcomes import Sender
from .ratelimit import Budgets, policies
from .retry import Policy
from .store import RecordStore

# How long a worker thread waits for Redis to come back (restart, failover, a full memory)
# before giving up on the step it is in. It holds Stripe's answer meanwhile, so the outcome is
# written as soon as Redis answers, not after a lease and a reconciliation. Shorter than the
# lease (at least 60 s), so no other worker takes the record over while we wait.
WORKER_REDIS_RETRY_S = 20.0
RIDE_OUT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a failover: the old master is a replica now
    redis.exceptions.OutOfMemoryError,
)


# Set when our worker begins a warm shutdown: threads waiting for a rate-limit slot stop
# waiting and put their message back (see ``attempt._wait_for_slot``).
STOPPING = threading.Event()


def wait_unless_stopping(seconds: float) -> bool:
    """Sleep ``seconds``; False (at once) when the worker is shutting down."""
    return not STOPPING.wait(seconds)


@dataclass
class ServerClock:
    """This host's clock, never behind the Redis server's: deadlines, leases and reconciliation
    go by the later of the two. A worker whose clock runs behind would otherwise claim a record
    whose window has closed (the chaos soak's clock skew); one running ahead only expires a
    little early. The offset is measured (Redis ``TIME``, one round trip) at most every
    ``every_s``; a failed measure keeps the last one."""

    client: redis.Redis
    every_s: float = 5.0
    _behind_s: float = 0.0
    _measured: float = field(default=-1e9)

    def __call__(self) -> datetime:
        local = attempt.utcnow()  # looked up each time: a test (or the soak) may shift it
        if time.monotonic() - self._measured > self.every_s:
            self._measured = time.monotonic()
            try:
                seconds, micros = self.client.time()
                server = seconds + micros / 1e6
                self._behind_s = max(0.0, server - attempt.utcnow().timestamp())
            except redis.RedisError:
                pass
        return local + timedelta(seconds=self._behind_s)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    store: RecordStore
    send: Sender
    policy: Policy
    budgets: Budgets
    clock: ServerClock

    @classmethod
    def build(cls, settings: Settings, redis_url: str) -> Runtime:
        client = settings.redis_target(redis_url).client(
            max_connections=settings.worker_concurrency + 8,
            retry_for_s=min(WORKER_REDIS_RETRY_S, settings.claim_lease_s / 3),
            retry_on=RIDE_OUT,
        )
        store = RecordStore.from_settings(client, settings)
        for name in settings.platform_names or (None,):  # every key usable, or no start
            stripe_api.shared_client(settings, name)
        policy = Policy(settings.max_attempts, settings.backoff_base_s, settings.backoff_cap_s)
        budgets = Budgets.build(client, policies(settings), prefix=settings.key_prefix)
        send = partial(
            stripe_api.send,
            partial(stripe_api.shared_client, settings),
            stripe_api.meter_caches(settings),
            settings.compensation_timestamp,
        )
        return cls(settings, store, send, policy, budgets, ServerClock(client))


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime(redis_url: str) -> Runtime:
    """The process's runtime, built once on first use (never at import time)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime.build(load_settings(), redis_url)
        return _runtime
