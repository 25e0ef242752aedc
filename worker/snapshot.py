"""What the read-outs give back (``Producer.stats()``, ``Producer.readouts``): plain frozen
data, imported by whoever shows it (the CLI, the console, the deployment metrics)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RateLimit:
    """A platform's Stripe rate as the workers use it (read from Redis, not this process's
    settings): ``source`` says whether a worker has set it yet."""

    configured_per_s: float
    current_per_s: float  # after any 429 cuts
    source: str


@dataclass(frozen=True)
class PlatformStats:
    """One platform's records ready to send now, its rate and its expiry forecast."""

    ready: int
    expiry_forecast: int
    expiry_forecast_first_miss: str | None  # ISO 8601
    rate_limit: RateLimit


@dataclass(frozen=True)
class QueueStats:
    """Task messages: waiting in Redis, held by workers (taken, not acknowledged) and
    retries scheduled (records in ``retrying``)."""

    waiting: int
    held_by_workers: int
    scheduled_retries: int


@dataclass(frozen=True)
class Stats:
    """The deployment at a glance (``Producer.stats()``).

    ``expiry_forecast``: at the rate the workers achieve now (0 with none alive), how many
    waiting records will miss their 24 h window, and ``expiry_forecast_first_miss`` the
    nearest deadline missed. ``rate_limit`` is the first platform's; with platforms,
    ``platforms`` gives each one's figures (None without)."""

    records: dict[str, int]
    queue: QueueStats
    ready: int  # records to send now
    dead_letters: int  # unparseable queue items set aside, ever
    oldest_live_age_s: float
    workers_alive: int
    expiry_forecast: int
    expiry_forecast_first_miss: str | None
    rate_limit: RateLimit
    platforms: dict[str, PlatformStats] | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready nested dicts (``adjustments stats --json``); no ``platforms`` key
        in a deployment without platforms."""
        data = asdict(self)
        if self.platforms is None:
            del data["platforms"]
        return data


@dataclass(frozen=True)
class Windows:
    """The 24 h windows of live records: ``next_closes_in_s`` (None when none is known),
    ``closing`` (how many close within each asked number of seconds) and ``past_lease``
    (records still processing after their lease ended)."""

    next_closes_in_s: float | None
    closing: dict[float, int]
    past_lease: int
