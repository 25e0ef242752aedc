"""What the Redis server promises, read at start: eviction, persistence, replicas, version.

Read through ``INFO`` (which managed services keep) and, where allowed, ``CONFIG GET`` for
``appendfsync``. Problems that break our guarantees are fatal (``UnsafeRedis``); weaker set-ups
are named in a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from .config import Durability
from .errors import UnsafeRedis

WAITAOF_SINCE = (7, 2, 0)


def _version(raw: str) -> tuple[int, int, int]:
    parts = [*(int(p) if p.isdigit() else 0 for p in raw.split(".")[:3]), 0, 0, 0]
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class ServerFacts:
    """The settings of one Redis server that decide what it can lose."""

    version: tuple[int, int, int]
    maxmemory_policy: str
    aof_enabled: bool
    appendfsync: str | None  # None: CONFIG is disabled (managed services)
    connected_replicas: int

    @classmethod
    def read(cls, client: redis.Redis) -> ServerFacts:
        info: dict[str, Any] = client.info("everything")
        try:
            appendfsync: str | None = str(client.config_get("appendfsync").get("appendfsync"))
        except redis.ResponseError:  # CONFIG renamed or disabled
            appendfsync = None
        version = str(info.get("redis_version", "0"))
        return cls(
            version=_version(version),
            maxmemory_policy=str(info.get("maxmemory_policy", "noeviction")),
            aof_enabled=int(info.get("aof_enabled", 0)) == 1,
            appendfsync=appendfsync,
            connected_replicas=int(info.get("connected_slaves", 0)),
        )

    @property
    def supports_waitaof(self) -> bool:
        return self.version >= WAITAOF_SINCE


def assess(
    facts: ServerFacts, *, durability: Durability, allow_eviction: bool
) -> tuple[list[str], list[str]]:
    """``(fatal, warnings)``: each a one-line reason."""
    fatal: list[str] = []
    warnings: list[str] = []
    if facts.maxmemory_policy != "noeviction":
        text = (
            f"Redis maxmemory-policy is {facts.maxmemory_policy}: it may evict records and "
            "queued messages without a trace; set it to noeviction"
        )
        if allow_eviction:
            warnings.append(text + " (allowed by ADJUSTMENTS_ALLOW_EVICTION)")
        else:
            fatal.append(text + " or set ADJUSTMENTS_ALLOW_EVICTION=1")
    if not facts.aof_enabled:
        warnings.append(
            "Redis has no append-only file: a restart or crash loses every write since the last "
            "snapshot, if any (set appendonly yes)"
        )
    lazy_fsync = facts.aof_enabled and facts.appendfsync not in (None, "always")
    if lazy_fsync and durability.level == "memory":
        warnings.append(
            f"ADJUSTMENTS_DURABILITY=memory with appendfsync {facts.appendfsync}: a host "
            "crash can lose the requests of about the last second"
        )
    if durability.level == "fsync":
        if not facts.supports_waitaof:
            shown = ".".join(map(str, facts.version))
            fatal.append(
                f"ADJUSTMENTS_DURABILITY=fsync needs WAITAOF (Redis >= 7.2); this server is "
                f"{shown}: upgrade it or choose ADJUSTMENTS_DURABILITY=memory"
            )
        elif not facts.aof_enabled:
            fatal.append(
                "ADJUSTMENTS_DURABILITY=fsync needs the append-only file: set appendonly yes "
                "on Redis or choose ADJUSTMENTS_DURABILITY=memory"
            )
        elif facts.appendfsync not in (None, "always"):
            # Under everysec, WAITAOF can confirm a write before it is fsynced (redis/redis
            # #13793: Redis 7.4 before the fix, and the Valkey 8.1 we bundle; our power-loss
            # test lost acknowledged writes this way), and each call waits ~100 ms anyway.
            fatal.append(
                f"ADJUSTMENTS_DURABILITY=fsync needs appendfsync always (this server has "
                f"{facts.appendfsync}): under everysec WAITAOF can confirm a write before it "
                "is on disk (redis/redis#13793); set appendfsync always, or choose "
                "ADJUSTMENTS_DURABILITY=memory and accept losing up to about a second"
            )
        else:
            if facts.appendfsync is None:
                warnings.append(
                    "CONFIG is disabled, so appendfsync cannot be checked: "
                    "ADJUSTMENTS_DURABILITY=fsync is only sound with appendfsync always"
                )
    if durability.level == "replicas" and facts.connected_replicas < durability.replicas:
        warnings.append(
            f"ADJUSTMENTS_DURABILITY={durability} but Redis has {facts.connected_replicas} "
            "connected replica(s): cancel() will report each request as not confirmed"
        )
    return fatal, warnings


def check_server(client: redis.Redis, *, durability: Durability, allow_eviction: bool) -> list[str]:
    """Raise UnsafeRedis for the first fatal problem; return the warnings."""
    fatal, warnings = assess(
        ServerFacts.read(client), durability=durability, allow_eviction=allow_eviction
    )
    if fatal:
        raise UnsafeRedis(fatal[0])
    return warnings
