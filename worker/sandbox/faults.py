"""The sandbox's faults: scripted outcomes per identifier, seeded random faults, and the
per-key token buckets of ``rps_limit``."""

from __future__ import annotations

import random
import threading
import time
from collections import deque

from .config import SCRIPTABLE, SandboxConfig


class Faults:
    """Which fault, if any, a request meets. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[str]] = {}
        # rps_limit's token buckets, one per key (Stripe's limits are per account): each
        # starts full (clamped to its size on first use)
        self._buckets: dict[str, tuple[float, float]] = {}

    def script(self, identifier: str, outcomes: list[str]) -> None:
        bad = [o for o in outcomes if o not in SCRIPTABLE]
        if bad:
            raise ValueError(f"unknown scripted outcomes {bad}; use {sorted(SCRIPTABLE)}")
        with self._lock:
            self._scripts.setdefault(identifier, deque()).extend(outcomes)

    def fault(self, cfg: SandboxConfig, identifier: str, key: str, attempt: int) -> str | None:
        with self._lock:
            queue = self._scripts.get(identifier)
            if queue:
                scripted = queue.popleft()
                return None if scripted == "ok" else scripted
        roll = random.Random(f"{cfg.seed}:{key}:{attempt}").random()
        for name, rate in (
            ("500", cfg.error_500),
            ("429", cfg.error_429),
            ("429_retry", cfg.error_429_retry),
            ("timeout", cfg.slow),
            ("drop", cfg.drop),
        ):
            if roll < rate:
                return name
            roll -= rate
        return None

    def scripted_rate_limit(self, identifier: str) -> bool:
        """A scripted ``rate_limited`` is answered before the idempotency layer, like Stripe's
        rate limiters (a scripted ``429`` is an answer of the endpoint itself)."""
        with self._lock:
            queue = self._scripts.get(identifier)
            if queue and queue[0] == "rate_limited":
                queue.popleft()
                return True
        return False

    def take_token(self, cfg: SandboxConfig, secret: str) -> bool:
        """One token of the bucket of the request's key ``secret`` (``rps_limit`` per
        account)."""
        rate = cfg.rps_limit
        if rate <= 0:
            return True
        size = cfg.burst or max(1.0, rate / 5)
        with self._lock:
            now = time.monotonic()
            tokens, refilled = self._buckets.get(secret, (float("inf"), now))
            tokens = min(size, tokens + (now - refilled) * rate)
            taken = tokens >= 1
            self._buckets[secret] = (tokens - 1 if taken else tokens, now)
            return taken
