"""The ASGI app and ``adjustments serve``.

Starlette rather than FastAPI: the API is seven routes whose validation must be exactly
``Producer``'s (so a model layer would only restate it), the OpenAPI document is written by
hand to say precisely that, and Starlette's smaller per-request cost is what the 2 ms / 2,000
requests per second target needs. uvicorn serves it (with httptools and uvloop).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import ConfigError
from ..logging import get_logger
from ..metrics.deployment import DeploymentCollector
from ..producer import Producer
from . import console
from .api import Api, problem
from .auth import Auth, allowed
from .openapi import document

log = get_logger("adjustments.http")
STATIC = console.HERE / "static"


def create_app(producer: Producer, auth: Auth) -> Starlette:
    """The whole server over ``producer``: API, console, health, metrics, OpenAPI."""
    api = Api(producer, auth)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeploymentCollector(producer))
    spec = document()

    async def healthz(_: Request) -> Response:
        if not producer.ping():
            return JSONResponse({"status": "unavailable", "redis": "unreachable"}, 503)
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        role = auth.role_for_header(request.headers.get("authorization"))
        if auth.enabled and not allowed(role, "read"):
            return problem(401, "unauthorized", "a read or operate token is required")
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

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
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        Mount("/console/static", StaticFiles(directory=STATIC), name="static"),
        *console.routes(producer, auth),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})


async def not_found(request: Request, exc: Exception) -> Response:
    return problem(404, "not_found", f"no route {request.url.path}")


async def not_allowed(request: Request, exc: Exception) -> Response:
    return problem(405, "method_not_allowed", f"{request.method} is not allowed here")


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


def serve(producer: Producer, auth: Auth, host: str, port: int, **options: Any) -> None:
    import uvicorn

    app = create_app(producer, auth)
    log.info("http.serving", host=host, port=port, authentication=auth.enabled)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # we read no client address
        **options,
    )
