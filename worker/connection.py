"""Where Redis is and how to reach it, for our client and for Celery's broker alike.

``REDIS_URL`` is parsed once into a ``RedisTarget``; both sides are built from it, so TLS and
Sentinel settings given once apply to both:

- ``redis://[user:password@]host:port/db``
- ``rediss://…?ssl_ca_certs=…&ssl_certfile=…&ssl_keyfile=…&ssl_cert_reqs=required`` — the
  certificate is verified by default (kombu alone would default to ``CERT_NONE``);
  ``ssl_cert_reqs`` takes ``required``/``optional``/``none`` or ``CERT_REQUIRED``/….
- ``sentinel://h1:p1;sentinel://h2:p2/db`` with ``ADJUSTMENTS_SENTINEL_MASTER`` (and
  ``ADJUSTMENTS_SENTINEL_PASSWORD`` when the sentinels need one); the master's own password
  is the URL's.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from .errors import ConfigError

SSL_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
    "cert_required": ssl.CERT_REQUIRED,
    "cert_optional": ssl.CERT_OPTIONAL,
    "cert_none": ssl.CERT_NONE,
}
SCHEMES = ("redis", "rediss", "sentinel")
DEFAULT_PORT = {"redis": 6379, "rediss": 6379, "sentinel": 26379}


def _cert_reqs(raw: str) -> ssl.VerifyMode:
    try:
        return _CERT_REQS[raw.lower()]
    except KeyError:
        raise ConfigError(
            f"ssl_cert_reqs must be required, optional or none, got {raw!r}"
        ) from None


@dataclass(frozen=True)
class RedisTarget:
    """One Redis deployment: a server (plain or TLS) or a Sentinel-managed master."""

    scheme: str
    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ssl: dict[str, Any] = field(default_factory=dict)  # redis-py's ssl_* keyword arguments
    sentinel_master: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        sentinel_master: str | None = None,
        sentinel_password: str | None = None,
    ) -> RedisTarget:
        """Parse ``url``; raise ConfigError (never quoting a password) if it is unusable."""
        parts = [p.strip() for p in url.split(";") if p.strip()]
        if not parts:
            raise ConfigError("REDIS_URL is empty")
        hosts: list[tuple[str, int]] = []
        first = None
        for part in parts:
            split = urlsplit(part)
            if split.scheme not in SCHEMES:
                raise ConfigError(
                    f"REDIS_URL must start with redis://, rediss:// or sentinel://, "
                    f"got {split.scheme or 'no scheme'!r}"
                )
            if first is not None and split.scheme != first.scheme:
                raise ConfigError("REDIS_URL: only sentinel:// URLs can be joined with ';'")
            try:
                port = split.port or DEFAULT_PORT[split.scheme]
            except ValueError:
                raise ConfigError("REDIS_URL has an invalid port") from None
            hosts.append((split.hostname or "127.0.0.1", port))
            first = first or split
        assert first is not None
        if first.scheme != "sentinel" and len(parts) > 1:
            raise ConfigError("REDIS_URL: only sentinel:// URLs can be joined with ';'")
        last = urlsplit(parts[-1])  # the db may sit on the last sentinel URL
        path = (last.path or first.path).strip("/")
        try:
            db = int(path or 0)
        except ValueError:
            raise ConfigError(f"REDIS_URL's database must be a number, got {path!r}") from None
        query = dict(parse_qsl(first.query))
        unknown = sorted(set(query) - set(SSL_PARAMS))
        if unknown:
            raise ConfigError(f"REDIS_URL has unknown parameter(s): {', '.join(unknown)}")
        tls: dict[str, Any] = {}
        if first.scheme == "rediss" or (query and first.scheme == "sentinel"):
            tls = {k: v for k, v in query.items() if k != "ssl_cert_reqs"}
            tls["ssl_cert_reqs"] = _cert_reqs(query.get("ssl_cert_reqs", "required"))
        elif query:
            raise ConfigError("ssl_* parameters need a rediss:// (or sentinel://) REDIS_URL")
        if first.scheme == "sentinel" and not sentinel_master:
            raise ConfigError("sentinel:// needs ADJUSTMENTS_SENTINEL_MASTER (the master's name)")
        return cls(
            scheme=first.scheme,
            hosts=tuple(hosts),
            db=db,
            username=unquote(first.username) if first.username else None,
            password=unquote(first.password) if first.password else None,
            ssl=tls,
            sentinel_master=sentinel_master if first.scheme == "sentinel" else None,
            sentinel_password=sentinel_password,
        )

    # --- our client ---------------------------------------------------------------------------
    def client(
        self,
        *,
        max_connections: int | None = None,
        socket_timeout_s: float = 5.0,
        retry_for_s: float = 0.0,
        retry_on: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError),
    ) -> redis.Redis:
        """A pooled client (``decode_responses=True``). ``retry_for_s`` > 0 retries a command
        whose connection failed for about that long, so a worker rides out a Redis restart."""
        kwargs: dict[str, Any] = {
            "db": self.db,
            "username": self.username,
            "password": self.password,
            "decode_responses": True,
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": 2,
            "health_check_interval": 30,
            "max_connections": max_connections,
        }
        if retry_for_s <= 0:
            # redis-py 6+ retries every command 3 times by default: a producer must fail within
            # its socket timeout, not after a minute of hidden retries.
            kwargs["retry"] = Retry(NoBackoff(), retries=0)
        else:
            # 0.05 s doubling to 1 s: about retry_for_s in all, across a restart or failover.
            kwargs["retry"] = Retry(
                ExponentialBackoff(cap=1.0, base=0.05), retries=int(retry_for_s) + 5
            )
            kwargs["retry_on_error"] = list(retry_on)
        if self.scheme == "sentinel":
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(self.hosts),
                sentinel_kwargs=self._sentinel_kwargs(),
                socket_connect_timeout=2,
                **({"ssl": True, **self.ssl} if self.ssl else {}),
            )
            master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
                self.sentinel_master or "", redis.Redis, **kwargs
            )
            return master
        host, port = self.hosts[0]
        if self.ssl:
            kwargs.update(ssl=True, **self.ssl)
        return redis.Redis(host=host, port=port, **kwargs)

    def _sentinel_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2}
        if self.sentinel_password:
            out["password"] = self.sentinel_password
        return out

    # --- Celery's broker ----------------------------------------------------------------------
    def broker_url(self) -> str:
        """The URL kombu parses (credentials included; kombu masks them in its logs)."""
        auth = ""
        if self.password is not None or self.username is not None:
            auth = f"{_q(self.username or '')}:{_q(self.password or '')}@"
        scheme = "sentinel" if self.scheme == "sentinel" else "redis"
        return ";".join(f"{scheme}://{auth}{h}:{p}/{self.db}" for h, p in self.hosts)

    def celery_options(self) -> dict[str, Any]:
        """``broker_transport``, ``broker_use_ssl`` and the transport options for this target."""
        options: dict[str, Any] = {}
        transport_options: dict[str, Any] = {}
        if self.scheme == "sentinel":
            options["broker_transport"] = "adjustments.transport:SentinelTransport"
            transport_options["master_name"] = self.sentinel_master
            transport_options["sentinel_kwargs"] = self._sentinel_kwargs()
        else:
            options["broker_transport"] = "adjustments.transport:RedisTransport"
        options["broker_use_ssl"] = dict(self.ssl) if self.ssl else None
        options["transport_options"] = transport_options
        return options

    def describe(self) -> str:
        """Where, without credentials (for logs and errors)."""
        where = ",".join(f"{h}:{p}" for h, p in self.hosts)
        extra = f" master={self.sentinel_master}" if self.sentinel_master else ""
        return f"{self.scheme}://{where}/{self.db}{extra}"


def _q(text: str) -> str:
    return quote(text, safe="")
