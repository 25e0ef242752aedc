"""The ASGI app and ``adjustments serve``.

Starlette rather than FastAPI: the API is seven routes whose validation must be exactly
``Producer``'s (so a model layer would only restate it), the OpenAPI document is written by
hand to say precisely that, and Starlette's smaller per-request cost is what the 2 ms / 2,000
requests per second target needs. uvicorn serves it (with httptools and uvloop).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from ..errors import AdjustmentsError, ConfigError
from ..logging import get_logger
from ..metrics.deployment import DeploymentCollector
from ..producer import Producer
from . import console
from .api import Api, problem
from .auth import Auth, allowed, article
from .guard import LOOPBACK_HOSTS, Guard, allowed_hosts
from .limits import GuardedHttpToolsProtocol
from .openapi import document

log = get_logger("adjustments.http")
STATIC = console.HERE / "static"


def create_app(
    producer: Producer, auth: Auth, *, hosts: frozenset[str] | None = LOOPBACK_HOSTS
) -> ASGIApp:
    """The whole server over ``producer``: API, console, health, metrics, OpenAPI; behind
    the ``Guard`` (``hosts``: the Host names answered, None for any)."""
    api = Api(producer, auth)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeploymentCollector(producer.readouts))
    spec = document()

    async def healthz(_: Request) -> Response:
        problem_text = await run_in_threadpool(producer.write_problem)
        if problem_text is not None:  # down, or up but refusing writes (full, read-only)
            return JSONResponse({"status": "unavailable", "redis": problem_text}, 503)
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        role = auth.role_for_header(request.headers.get("authorization"))
        if auth.enabled and role is None:
            return problem(401, "unauthorized", "a read or operate token is required")
        if auth.enabled and not allowed(role, "read"):
            return problem(403, "forbidden", f"{article(role)} {role} token may not read metrics")
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type="text/plain; version=0.0.4")

    async def openapi(_: Request) -> Response:
        return JSONResponse(spec)

    routes = [
        Route("/api/v1/cancellations", api.guarded("enqueue", api.create), methods=["POST"]),
        Route(
            "/api/v1/cancellations/batch",
            api.guarded("enqueue", api.create_batch),
            methods=["POST"],
        ),
        Route("/api/v1/cancellations", api.guarded("read", api.list), methods=["GET"]),
        Route(
            "/api/v1/cancellations/{record_id}", api.guarded("read", api.get_one), methods=["GET"]
        ),
        Route("/api/v1/replays", api.guarded("operate", api.replays), methods=["POST"]),
        Route("/api/v1/compensations", api.guarded("operate", api.compensations), methods=["POST"]),
        Route("/api/v1/exports", api.guarded("read", api.exports), methods=["GET"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        Mount("/console/static", StaticFiles(directory=STATIC), name="static"),
        *console.routes(producer, auth),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
    # Starlette's own slash redirect is an absolute URL built from the Host header; ours
    # (in not_found) is relative.
    app.router.redirect_slashes = False
    return Guard(app, hosts)


def _methods_for(request: Request) -> list[str]:
    """The methods some route serves at this request's path (for 405's Allow)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.path_regex.match(request.url.path):
            methods |= route.methods or set()
    return sorted(methods)


def _slash_twin(request: Request) -> str | None:
    """The path with its trailing slash added or removed, if a route serves that one."""
    path = request.url.path
    twin = path.rstrip("/") if path.endswith("/") and path != "/" else path + "/"
    scope = {**request.scope, "path": twin}
    for route in request.app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return twin
    return None


async def not_found(request: Request, exc: Exception) -> Response:
    twin = _slash_twin(request)
    if twin is not None:
        query = request.url.query
        return RedirectResponse(twin + (f"?{query}" if query else ""), status_code=307)
    return problem(404, "not_found", f"no route {request.url.path}")


async def not_allowed(request: Request, exc: Exception) -> Response:
    response = problem(405, "method_not_allowed", f"{request.method} is not allowed here")
    response.headers["allow"] = ", ".join(_methods_for(request))
    return response


def is_loopback(host: str) -> bool:
    try:
        return all(
            ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None)
        )
    except (OSError, ValueError):
        return False


def check_exposure(auth: Auth, host: str, insecure_local: bool) -> None:
    """No tokens: refuse to start, unless --insecure-local on a loopback address."""
    if auth.enabled:
        return
    if not insecure_local:
        raise ConfigError(
            "ADJUSTMENTS_API_TOKENS is not set: configure tokens, or pass --insecure-local "
            "to serve without authentication on a loopback address"
        )
    if not is_loopback(host):
        raise ConfigError(f"--insecure-local serves only on a loopback address, not {host}")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound before anything says it is serving;
    AdjustmentsError (one line, exit 1) when the port is taken or the address unusable."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise AdjustmentsError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise AdjustmentsError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def serve(
    producer: Producer,
    auth: Auth,
    host: str,
    port: int,
    *,
    extra_hosts: Sequence[str] = (),
    **options: Any,
) -> None:
    """Serve until interrupted. Starts whether or not Redis answers: requests then get 503
    (and /healthz says why) until it does, as the workers ride an outage out."""
    import uvicorn

    sock = bind(host, port)
    app = create_app(producer, auth, hosts=allowed_hosts(host, extra_hosts))
    config = uvicorn.Config(
        app,
        http=GuardedHttpToolsProtocol,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # we read no client address
        **options,
    )
    log.info(
        "http.serving",
        host=host,
        port=sock.getsockname()[1],
        authentication=auth.enabled,
        redis_up=producer.ping(),
    )
    uvicorn.Server(config).run(sockets=[sock])
