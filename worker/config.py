"""Settings read once from the environment into one typed, immutable object.

Nothing here runs at import time: call ``Settings.from_env()`` where a process starts.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from .connection import RedisTarget
from .errors import ConfigError

Api = Literal["v1", "v2"]
APIS: tuple[Api, ...] = ("v1", "v2")
Order = Literal["deadline", "fifo"]
ORDERS: tuple[Order, ...] = ("deadline", "fifo")

CANCEL_WINDOW_S = 24 * 3600  # Stripe accepts a cancellation within 24 h of receiving the event


@dataclass(frozen=True)
class Durability:
    """When ``cancel()`` may return: ``memory`` (Redis acknowledged the write), ``fsync`` (the
    write is in Redis's append-only file on disk: WAITAOF 1 0) or ``replicas:N`` (N replicas
    acknowledged it: WAIT N)."""

    level: Literal["memory", "fsync", "replicas"] = "fsync"
    replicas: int = 0

    @classmethod
    def parse(cls, raw: str) -> Durability:
        text = raw.strip().lower()
        if text in ("memory", "fsync"):
            return cls(text)  # type: ignore[arg-type]
        if text.startswith("replicas:"):
            count = text.split(":", 1)[1]
            if count.isdigit() and int(count) >= 1:
                return cls("replicas", int(count))
        raise ConfigError(
            f"ADJUSTMENTS_DURABILITY must be memory, fsync or replicas:N (N >= 1), got {raw!r}"
        )

    def __str__(self) -> str:
        return f"replicas:{self.replicas}" if self.level == "replicas" else self.level


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value not in (None, "") else None


@dataclass(frozen=True)
class _Knob:
    """How one field is read from the environment and checked, wherever it came from."""

    env: str
    kind: Literal["text", "int", "float", "bool", "api", "path", "durability", "order", "choice"]
    minimum: float | None = None
    doc: str = ""  # its line in the configuration reference (docs/configuration.md)
    default_doc: str | None = None  # the default as documented, when not the field's own


# Every field, its environment variable and its bound: read by ``from_env``, checked by
# ``__post_init__``, so ``Settings(...)`` in code is validated exactly like the environment.
SECRETS = frozenset({"stripe_api_key", "sentinel_password", "api_tokens"})  # never echoed
KNOBS: dict[str, _Knob] = {
    "redis_url": _Knob(
        "REDIS_URL",
        "text",
        default_doc="— (required)",
        doc=(
            "Redis for records and the Celery broker: `redis://`, `rediss://` (verified), "
            "`sentinel://…;sentinel://…` (see "
            "[Managed Redis](reliability.md#managed-redis-tls-acls-sentinel)), or `embedded` "
            "for the bundled trial server"
        ),
    ),
    "sentinel_master": _Knob(
        "ADJUSTMENTS_SENTINEL_MASTER",
        "text",
        doc="the master's name, with a `sentinel://` URL",
    ),
    "sentinel_password": _Knob(
        "ADJUSTMENTS_SENTINEL_PASSWORD",
        "text",
        doc="the sentinels' password, if they have one",
    ),
    "durability": _Knob(
        "ADJUSTMENTS_DURABILITY",
        "durability",
        doc=(
            "when `cancel()` returns: `memory`, `fsync` or `replicas:N` "
            "(see [Durability](reliability.md#durability))"
        ),
    ),
    "durability_timeout_ms": _Knob(
        "ADJUSTMENTS_DURABILITY_TIMEOUT_MS",
        "int",
        1,
        doc="how long `cancel()` waits for that confirmation",
    ),
    "redis_outage_limit_s": _Knob(
        "ADJUSTMENTS_REDIS_OUTAGE_LIMIT_S",
        "float",
        1,
        doc=(
            "a worker that cannot reach Redis for about this long stops with a non-zero exit code "
            "(until then it reconnects every 0.5-2 s)"
        ),
    ),
    "allow_eviction": _Knob(
        "ADJUSTMENTS_ALLOW_EVICTION",
        "bool",
        doc="`1` lets workers run on a Redis with an eviction policy (a warning instead of exit 2)",
    ),
    "stripe_api_key": _Knob(
        "STRIPE_API_KEY",
        "text",
        default_doc="— (workers need it)",
        doc=(
            "secret (`sk_…`) or restricted (`rk_…`, v1 only) key; a worker without a usable "
            "one exits "
            "2 at start; never logged or stored"
        ),
    ),
    "stripe_api_base": _Knob(
        "STRIPE_API_BASE",
        "text",
        default_doc="Stripe's",
        doc="point both v1 and v2 at another server (the sandbox, stripe-mock)",
    ),
    "stripe_api_version": _Knob(
        "STRIPE_API_VERSION",
        "text",
        default_doc="the SDK's pinned version",
        doc="`Stripe-Version` to send",
    ),
    "default_api": _Knob(
        "ADJUSTMENTS_STRIPE_API",
        "api",
        doc="default endpoint for `cancel()` without `api=`",
    ),
    "order": _Knob(
        "ADJUSTMENTS_ORDER",
        "order",
        doc=(
            "which waiting record is sent next: the one whose 24 h window closes first "
            "(`deadline`), "
            "or the oldest (`fifo`, a plain queue's order, kept for comparison); the same in every "
            "process"
        ),
    ),
    "compensate": _Knob(
        "ADJUSTMENTS_COMPENSATE",
        "choice",
        doc=(
            "`expired`: a record that misses its window and carries its original event gets a "
            "negative meter event (raw `sum` meters only; see [For finance and "
            "billing](finance.md))"
        ),
    ),
    "compensation_timestamp": _Knob(
        "ADJUSTMENTS_COMPENSATION_TIMESTAMP",
        "choice",
        doc=(
            "the compensating event's timestamp: the original event's (`original`: the same "
            "billing "
            "period; Stripe takes it up to 35 days back) or the time it is sent (`now`: the "
            "current "
            "period, when the original one may be invoiced already)"
        ),
    ),
    "max_attempts": _Knob(
        "ADJUSTMENTS_MAX_ATTEMPTS",
        "int",
        1,
        doc="attempts before `failed`",
    ),
    "backoff_base_s": _Knob(
        "ADJUSTMENTS_BACKOFF_BASE_S",
        "float",
        0,
        doc="backoff base: attempt n waits uniform(0, min(cap, base·2ⁿ⁻¹))",
    ),
    "backoff_cap_s": _Knob(
        "ADJUSTMENTS_BACKOFF_CAP_S",
        "float",
        0,
        doc="backoff cap (also caps `Retry-After`)",
    ),
    "stripe_timeout_s": _Knob(
        "ADJUSTMENTS_STRIPE_TIMEOUT_S",
        "float",
        0.1,
        doc="HTTP timeout of one Stripe call",
    ),
    "lease_s": _Knob(
        "ADJUSTMENTS_LEASE_S",
        "float",
        1,
        default_doc="max(60, 3 x timeout)",
        doc="how long a claim protects a record from other workers; must exceed the timeout",
    ),
    "retention_s": _Knob(
        "ADJUSTMENTS_RETENTION_S",
        "int",
        60,
        default_doc="`2592000` (30 days)",
        doc="terminal records (and their dedupe keys) expire after this",
    ),
    "data_dir": _Knob(
        "ADJUSTMENTS_DATA_DIR",
        "path",
        doc="`REDIS_URL=embedded` data (append-only file), beat's schedule file, demo log",
    ),
    "queue": _Knob(
        "ADJUSTMENTS_QUEUE",
        "text",
        doc="Celery queue name",
    ),
    "key_prefix": _Knob(
        "ADJUSTMENTS_KEY_PREFIX",
        "text",
        doc="prefix of every Redis key we write",
    ),
    "worker_concurrency": _Knob(
        "ADJUSTMENTS_WORKER_CONCURRENCY",
        "int",
        1,
        doc="worker threads",
    ),
    "rate_limit_per_s": _Knob(
        "ADJUSTMENTS_RATE_LIMIT",
        "float",
        0,
        doc="Stripe requests/s shared by every worker process and host (0: no limit)",
    ),
    "rate_burst": _Knob(
        "ADJUSTMENTS_RATE_BURST",
        "float",
        1,
        doc="requests that may go back to back before the spacing applies",
    ),
    "rate_recovery_per_s": _Knob(
        "ADJUSTMENTS_RATE_RECOVERY_PER_S",
        "float",
        0,
        doc="after a 429 cut, requests/s regained per second (linear)",
    ),
    "reconcile_interval_s": _Knob(
        "ADJUSTMENTS_RECONCILE_INTERVAL_S",
        "float",
        1,
        doc="how often `adjustments beat` schedules reconciliation",
    ),
    "metrics_port": _Knob(
        "ADJUSTMENTS_METRICS_PORT",
        "int",
        0,
        default_doc="`0` (off)",
        doc="a worker's Prometheus `/metrics` port",
    ),
    "api_tokens": _Knob(
        "ADJUSTMENTS_API_TOKENS",
        "text",
        default_doc="none",
        doc=(
            "`adjustments serve`'s bearer tokens, `[name=]role:token[,...]` (roles `enqueue`, "
            "`read`, "
            "`operate`; the name, default `<role>-<position>`, is stored as `requested_by` on the "
            "records a token creates); see [HTTP API and operations console](http-api.md)"
        ),
    ),
    "heartbeat_s": _Knob(
        "ADJUSTMENTS_HEARTBEAT_S",
        "float",
        0.2,
        doc="a worker's heartbeat interval; three missed beats and it counts as dead",
    ),
    "reconcile_grace_s": _Knob(
        "ADJUSTMENTS_RECONCILE_GRACE_S",
        "float",
        0,
        doc=(
            "how long a record may sit `queued` (or overdue `retrying`) before reconciliation "
            "publishes it again"
        ),
    ),
}
REQUIRED_TEXT = frozenset({"queue", "key_prefix"})  # text fields that may not be None or empty


def _from_text(knob: _Knob, raw: str) -> object:
    """One environment value as the field's type; ConfigError naming the variable if it is
    not one. Bounds are checked afterwards, by ``Settings.__post_init__``."""
    if knob.kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{knob.env} must be a whole number, got {raw!r}") from None
    if knob.kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{knob.env} must be a number, got {raw!r}") from None
    if knob.kind == "bool":
        lowered = raw.lower()
        if lowered not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigError(f"{knob.env} must be 1 or 0, got {raw!r}")
        return lowered in ("1", "true", "yes")
    if knob.kind in ("api", "order", "choice"):
        return raw.lower()
    return raw  # text, path and durability are checked (and converted) by __post_init__


def _number(label: str, knob: _Knob, value: object) -> float | int:
    """A finite int (or, for float fields, int or float) at or above the knob's minimum."""
    wanted = "a whole number" if knob.kind == "int" else "a number"
    allowed: tuple[type, ...] = (int,) if knob.kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise ConfigError(f"{label} must be {wanted}, got {value!r}")
    number = cast(float | int, value)
    if not math.isfinite(number):
        raise ConfigError(f"{label} must be {wanted}, got {value!r}")
    if knob.minimum is not None and number < knob.minimum:
        raise ConfigError(f"{label} must be >= {knob.minimum:g}, got {value!r}")
    return number if knob.kind == "int" else float(number)


PLATFORMS_ENV = "ADJUSTMENTS_PLATFORMS"
_PLATFORM_NAME = re.compile(r"[a-z0-9-]{1,32}")


@dataclass(frozen=True)
class Platform:
    """One Stripe account of the deployment's own (issue 21): its name, its key and,
    optionally, its own API base and rate limit (None: the deployment's)."""

    name: str
    api_key: str | None = field(default=None, repr=False)
    api_base: str | None = None
    rate_limit_per_s: float | None = None

    @staticmethod
    def env_suffix(name: str) -> str:
        """``eu-2`` → ``EU_2``: how a platform's own variables are named."""
        return name.upper().replace("-", "_")

    @classmethod
    def from_env(cls, name: str, env: Mapping[str, str]) -> Platform:
        suffix = cls.env_suffix(name)
        limit = _get(env, f"ADJUSTMENTS_RATE_LIMIT_{suffix}")
        rate: float | None = None
        if limit is not None:
            try:
                rate = float(limit)
            except ValueError:
                raise ConfigError(
                    f"ADJUSTMENTS_RATE_LIMIT_{suffix} must be a number, got {limit!r}"
                ) from None
        return cls(
            name,
            _get(env, f"STRIPE_API_KEY_{suffix}"),
            _get(env, f"STRIPE_API_BASE_{suffix}"),
            rate,
        )


def parse_platform_names(raw: str) -> tuple[str, ...]:
    """``us,eu`` → ``("us", "eu")``; ConfigError for a bad or repeated name."""
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    for name in names:
        if not _PLATFORM_NAME.fullmatch(name):
            raise ConfigError(
                f"{PLATFORMS_ENV}: {name!r} is not a platform name (lower-case letters, digits "
                "and -, up to 32)"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{PLATFORMS_ENV} names {repeated[0]!r} twice")
    if not names:
        raise ConfigError(f"{PLATFORMS_ENV} is set but names no platform")
    return names


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; see docs/configuration.md (made from ``KNOBS``).

    Build it in code (``Settings(max_attempts=5)``) or from the environment
    (``Settings.from_env()``); both are validated the same way, and an invalid field raises
    ConfigError (a ValueError) naming the field and its environment variable. Construction
    reads no environment variable. ``dataclasses.replace(settings, ...)`` validates again.
    """

    redis_url: str | None = None
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    stripe_api_version: str | None = None
    default_api: Api = "v2"
    # Which waiting record a worker sends next: the one whose 24 h window closes first
    # ("deadline"), or the oldest ("fifo", the order of a plain queue; for comparison).
    order: Order = "deadline"
    # "expired": a record that misses its window and carries its original event gets a
    # negative meter event (sum meters only); "off": it stays expired.
    compensate: str = "off"
    # The compensation's timestamp: the original event's ("original": the same billing
    # period, which may be invoiced already) or the time it is sent ("now": the next one).
    compensation_timestamp: str = "original"
    max_attempts: int = 10
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 300.0
    stripe_timeout_s: float = 20.0
    # None: max(60 s, 3 x stripe_timeout_s). The lease must outlive one Stripe call, or a
    # second worker could take over mid-call.
    lease_s: float | None = None
    retention_s: int = 30 * 24 * 3600
    data_dir: Path = Path(".adjustments")
    queue: str = "adjustments"
    key_prefix: str = "adj"
    worker_concurrency: int = 64  # measured: see docs/performance.md
    rate_limit_per_s: float = 20.0
    rate_burst: float = 2.0
    rate_recovery_per_s: float = 2.0
    reconcile_interval_s: float = 60.0
    reconcile_grace_s: float = 60.0
    durability: Durability = field(default_factory=Durability)
    durability_timeout_ms: int = 2000
    allow_eviction: bool = False
    redis_outage_limit_s: float = 300.0
    heartbeat_s: float = 5.0  # a worker's heartbeat interval; it counts as dead after 3 missed
    metrics_port: int = 0  # a worker's Prometheus /metrics port; 0: off
    # ``adjustments serve``'s bearer tokens: "role:token[,role:token...]" (see http.auth).
    api_tokens: str | None = field(default=None, repr=False)
    sentinel_master: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    # Several Stripe accounts of one's own (ADJUSTMENTS_PLATFORMS); empty: STRIPE_API_KEY alone.
    platforms: tuple[Platform, ...] = ()

    def __post_init__(self) -> None:
        for name, knob in KNOBS.items():
            value = self._checked(name, knob, getattr(self, name))
            object.__setattr__(self, name, value)
        self._check_platforms()
        if self.claim_lease_s <= self.stripe_timeout_s:
            raise ConfigError(
                f"lease_s ({KNOBS['lease_s'].env}) must be longer than stripe_timeout_s "
                f"({KNOBS['stripe_timeout_s'].env})"
            )

    def _check_platforms(self) -> None:
        if not isinstance(self.platforms, tuple) or not all(
            isinstance(p, Platform) for p in self.platforms
        ):
            raise ConfigError("platforms must be a tuple of adjustments.config.Platform")
        parse_platform_names(",".join(p.name for p in self.platforms) or "x")
        for p in self.platforms:
            if p.rate_limit_per_s is not None and not 0 <= p.rate_limit_per_s < float("inf"):
                raise ConfigError(
                    f"ADJUSTMENTS_RATE_LIMIT_{Platform.env_suffix(p.name)} must be >= 0"
                )

    @property
    def platform_names(self) -> tuple[str, ...]:
        """The platforms' names, in order (the first is the default); empty without."""
        return tuple(p.name for p in self.platforms)

    def platform(self, name: str | None) -> Platform:
        """The platform ``name`` (None: the default, the first), or the single-key
        deployment's own as an unnamed platform; ConfigError for an unknown name."""
        if not self.platforms:
            if name is not None:
                raise ConfigError(f"no platforms are configured ({PLATFORMS_ENV}), got {name!r}")
            return Platform("", self.stripe_api_key, self.stripe_api_base, None)
        if name is None:
            return self.platforms[0]
        for p in self.platforms:
            if p.name == name:
                return p
        known = ", ".join(self.platform_names)
        raise ConfigError(f"unknown platform {name!r}; configured: {known}")

    def _checked(self, name: str, knob: _Knob, value: object) -> object:
        label = f"{knob.env} ({name})" if knob.env != name else name
        check = _CHECKS.get(knob.kind)
        if check is not None:
            return check(label, name, value)
        if name == "lease_s" and value is None:
            value = max(60.0, 3 * float(self.stripe_timeout_s))
        return _number(label, knob, value)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``); raise ConfigError if invalid.
        An unset or empty variable leaves the field's default."""
        env = os.environ if env is None else env
        given: dict[str, Any] = {}
        for name, knob in KNOBS.items():
            raw = _get(env, knob.env)
            if raw is not None:
                given[name] = _from_text(knob, raw)
        names = _get(env, PLATFORMS_ENV)
        if names is not None:
            given["platforms"] = tuple(
                Platform.from_env(n, env) for n in parse_platform_names(names)
            )
        return cls(**given)

    def worker_key_problem(self) -> str | None:
        """Why the worker could never finish a task with this STRIPE_API_KEY (or, with
        platforms, one of theirs), or None. Checked when a worker starts (not by producers,
        which never call Stripe); the message names the variable, never the key."""
        if not self.platforms:
            return self._key_problem("STRIPE_API_KEY", self.stripe_api_key)
        for p in self.platforms:
            variable = f"STRIPE_API_KEY_{Platform.env_suffix(p.name)}"
            problem = self._key_problem(variable, p.api_key)
            if problem:
                return f"platform {p.name}: {problem}"
        return None

    def _key_problem(self, variable: str, key: str | None) -> str | None:
        if not key:
            return f"{variable} is not set: the worker cannot call Stripe"
        if key.startswith(("pk_", "pub_")):
            return f"{variable} is a publishable key: the worker needs a secret key (sk_...)"
        if key.startswith("rk_") and self.default_api == "v2":
            return (
                f"{variable} is a restricted key (rk_...), which v2 endpoints refuse: use a "
                "secret key (sk_...) or set ADJUSTMENTS_STRIPE_API=v1"
            )
        if not key.startswith(("sk_", "rk_")):
            return f"{variable} must be a secret (sk_...) or restricted (rk_...) key"
        return None

    def redis_target(self, url: str | None = None) -> RedisTarget:
        """``url`` (default: REDIS_URL) parsed with the Sentinel settings."""
        raw = url or self.redis_url
        if not raw:
            raise ConfigError("REDIS_URL is not set")
        return RedisTarget.parse(
            raw, sentinel_master=self.sentinel_master, sentinel_password=self.sentinel_password
        )

    @property
    def claim_lease_s(self) -> float:
        """``lease_s`` as configured or derived (always set once constructed)."""
        assert self.lease_s is not None  # __post_init__ fills in the derived value
        return self.lease_s

    @property
    def later_queue(self) -> str:
        """Where countdown messages (retries, rate-limit deferrals) go: consumed alongside the
        main queue, so a deep backlog of new work does not delay them past their time."""
        return f"{self.queue}.later"

    @property
    def visibility_timeout_s(self) -> int:
        """Broker visibility timeout: longer than the longest retry countdown plus one call."""
        return int(max(3600.0, 2 * (self.backoff_cap_s + self.claim_lease_s)))


SETTINGS_MODULE_ENV = "ADJUSTMENTS_SETTINGS_MODULE"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings of a worker, beat or CLI process.

    With ``ADJUSTMENTS_SETTINGS_MODULE=myservice.adjustments_settings`` set, the module's
    ``settings`` attribute (a ``Settings``) is used as is, and no other variable is read;
    otherwise ``Settings.from_env(env)``. The module is looked up from the current directory
    as well as the installed packages, as ``celery -A`` does."""
    env = os.environ if env is None else env
    name = _get(env, SETTINGS_MODULE_ENV)
    if name is None:
        return Settings.from_env(env)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"{SETTINGS_MODULE_ENV}={name!r} cannot be imported: {exc}") from None
    settings = getattr(module, "settings", None)
    if not isinstance(settings, Settings):
        raise ConfigError(
            f"{SETTINGS_MODULE_ENV}={name!r}: the module must define "
            f"`settings = adjustments.Settings(...)`, found {type(settings).__name__}"
        )
    return settings


def _check_text(label: str, name: str, value: object) -> object:
    if value is None and name not in REQUIRED_TEXT:
        return None
    if not isinstance(value, str) or not value or value != value.strip():
        shown = "a value that is not shown" if name in SECRETS else repr(value)
        raise ConfigError(f"{label} must be a non-empty string, got {shown}")
    return value


def _check_api(label: str, name: str, value: object) -> object:
    if value not in APIS:
        raise ConfigError(f"{label} must be v1 or v2, got {value!r}")
    return value


def _check_order(label: str, name: str, value: object) -> object:
    if value not in ORDERS:
        raise ConfigError(f"{label} must be deadline or fifo, got {value!r}")
    return value


def _check_bool(label: str, name: str, value: object) -> object:
    if not isinstance(value, bool):
        raise ConfigError(f"{label} must be True or False, got {value!r}")
    return value


def _check_path(label: str, name: str, value: object) -> object:
    if not isinstance(value, str | Path) or not str(value):
        raise ConfigError(f"{label} must be a path, got {value!r}")
    return Path(value)


def _check_durability(label: str, name: str, value: object) -> object:
    if isinstance(value, Durability):
        return value
    if isinstance(value, str):
        return Durability.parse(value)
    raise ConfigError(f"{label} must be memory, fsync or replicas:N, got {value!r}")


CHOICES: dict[str, tuple[str, ...]] = {
    "compensate": ("off", "expired"),
    "compensation_timestamp": ("original", "now"),
}


def _check_choice(label: str, name: str, value: object) -> object:
    allowed = CHOICES[name]
    if value not in allowed:
        raise ConfigError(f"{label} must be {' or '.join(allowed)}, got {value!r}")
    return value


# Each non-numeric kind of knob: (label, field name, value) -> the value to keep.
_CHECKS: dict[str, Callable[[str, str, object], object]] = {
    "text": _check_text,
    "api": _check_api,
    "order": _check_order,
    "choice": _check_choice,
    "bool": _check_bool,
    "path": _check_path,
    "durability": _check_durability,
}


# Variables read outside ``Settings`` fields: (variable, meaning).
OTHER_VARIABLES: tuple[tuple[str, str], ...] = (
    (
        SETTINGS_MODULE_ENV,
        "a module whose `settings` (an `adjustments.Settings`) replaces every other variable",
    ),
    (
        PLATFORMS_ENV,
        "several Stripe accounts of your own in one deployment, e.g. `us,eu` (lower-case "
        "letters, digits, `-`); each takes its key from `STRIPE_API_KEY_<NAME>` "
        "(`STRIPE_API_KEY_US`), and optionally `STRIPE_API_BASE_<NAME>` and "
        "`ADJUSTMENTS_RATE_LIMIT_<NAME>` (default `ADJUSTMENTS_RATE_LIMIT`); "
        '`cancel(..., platform="eu")` (CLI `--platform`, HTTP and import field `platform`) '
        "picks one, the first is the default. The platform is part of what identifies a "
        "request and of its idempotency key; the record stores its name, never its key; a "
        "worker missing a platform's key exits 2 naming it, and so does one whose key for a "
        "platform is of the other mode (test or live) than the deployment's first worker's "
        "(kept in the Redis hash `<prefix>:key-modes`; delete it when a deployment moves from "
        "test to live on purpose). See [Several Stripe accounts]"
        "(stripe.md#several-stripe-accounts-platforms)",
    ),
)


def reference() -> list[tuple[str, str, str]]:
    """Every environment variable as ``(variable, default, meaning)``: the configuration
    reference's table is made from this, so it cannot drift from the code."""
    defaults = Settings()
    rows = []
    for name, knob in KNOBS.items():
        if knob.default_doc is not None:
            default = knob.default_doc
        else:
            value = getattr(defaults, name)
            shown = f"{value:g}" if isinstance(value, float) else value
            shown = int(shown) if isinstance(shown, bool) else shown
            default = "—" if value is None else f"`{shown}`"
        rows.append((knob.env, default, knob.doc))
    rows += [(env, "—", doc) for env, doc in OTHER_VARIABLES]
    return rows
