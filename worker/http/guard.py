"""What every answer of ``adjustments serve`` gets, in front of the app: only known ``Host``
names are served (DNS rebinding), and security headers go on every answer (no framing, no
sniffing, no referrer, nothing cached that carries records).

A plain ASGI middleware rather than Starlette's: it adds a few headers to the start message
and nothing else, so it costs next to nothing on the API's fast path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
NO_STORE = (b"cache-control", b"no-store")
CACHEABLE_PREFIX = "/console/static/"  # the stylesheet: the only answer that holds no record


def host_name(value: str) -> str:
    """The name in a ``Host`` header, lower-case, without its port."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts(bind_host: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The loopback names, the address served on (unless a wildcard) and ``extra``; None
    (any host) when ``extra`` holds ``*``."""
    names = {h.strip().lower() for h in extra if h.strip()}
    if "*" in names:
        return None
    if bind_host not in ("0.0.0.0", "::", ""):  # noqa: S104 - compared, not bound
        names.add(host_name(bind_host) if not bind_host.startswith("[") else bind_host)
        if ":" in bind_host and not bind_host.startswith("["):
            names.add(f"[{bind_host}]")
    return frozenset(LOOPBACK_HOSTS | names)


class Guard:
    """Refuses unknown hosts (400) and adds the security headers to every answer."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.hosts is not None:
            host = ""
            for name, value in scope["headers"]:
                if name == b"host":
                    host = host_name(value.decode("latin-1"))
                    break
            if host not in self.hosts:
                await _refuse_host(send)
                return
        extra = list(SECURITY_HEADERS)
        if not scope["path"].startswith(CACHEABLE_PREFIX):
            extra.append(NO_STORE)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse_host(send: Send) -> None:
    body = json.dumps(
        {
            "error": {
                "type": "unknown_host",
                "message": "this server does not answer for that Host (see --allowed-host)",
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
                NO_STORE,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
