"""The sandbox's HTTP layer: Stripe's two endpoints plus a small control API under /_sandbox/."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from ..sandbox.config import SandboxConfig
from ..sandbox.meters import MeterError
from ..sandbox.stripe_logic import Reply, StripeLogic

PATHS = {"/v1/billing/meter_event_adjustments": "v1", "/v2/billing/meter_event_adjustments": "v2"}
METER_EVENT_PATHS = {"/v1/billing/meter_events": "v1", "/v2/billing/meter_events": "v2"}
_SUMMARIES = re.compile(r"/v1/billing/meters/(mtr_[A-Za-z0-9]+)/event_summaries")


def _not_found(path: str) -> Reply:
    message = f"Unrecognized request URL ({path})"
    return Reply(404, {"error": {"type": "invalid_request_error", "message": message}})


def _unauthorized() -> Reply:
    message = "You did not provide an API key."
    return Reply(401, {"error": {"type": "invalid_request_error", "message": message}})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's session expects
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle plus the client's
    # delayed ACK would add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: the sandbox is a test double

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply) -> None:
        if reply.drop:
            self.close_connection = True
            return
        if reply.delay_s:
            threading.Event().wait(reply.delay_s)
        payload = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            version = self.headers.get("Stripe-Version")
            if version:
                self.send_header("Stripe-Version", version)
            key = self.headers.get("Idempotency-Key")
            if key:
                self.send_header("Idempotency-Key", key)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout fault): expected

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        logic = self.server.logic
        api = PATHS.get(path) or METER_EVENT_PATHS.get(path)
        if api is not None:
            reply = logic.handle(
                api,
                self.headers.get("Authorization"),
                self.headers.get("Stripe-Account"),
                self.headers.get("Idempotency-Key"),
                body,
                context=self.headers.get("Stripe-Context"),
                kind="meter_event" if path in METER_EVENT_PATHS else "adjustment",
            )
            self._send(reply)
            return
        try:
            data = json.loads(body or b"{}")
            if path == "/_sandbox/config":
                self._send(Reply(200, logic.configure(data).to_dict()))
            elif path == "/_sandbox/script":
                logic.script(str(data["identifier"]), [str(o) for o in data["outcomes"]])
                self._send(Reply(200, {"ok": True}))
            elif path == "/_sandbox/meters":
                self._send(Reply(200, logic.meters.define(data).to_stripe()))
            elif path == "/_sandbox/reset":
                logic.reset()
                self._send(Reply(200, {"ok": True}))
            else:
                self._send(_not_found(path))
        except (ValueError, KeyError, TypeError) as exc:
            self._send(
                Reply(400, {"error": {"type": "invalid_request_error", "message": str(exc)}})
            )

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        logic = self.server.logic
        query = dict(parse_qsl(url.query))
        summaries = _SUMMARIES.fullmatch(url.path)
        keyed = (self.headers.get("Authorization") or "").startswith("Bearer sk_")
        if (url.path == "/v1/billing/meters" or summaries) and not keyed:
            self._send(_unauthorized())
            return
        if url.path == "/v1/billing/meters":
            try:
                limit = max(1, min(100, int(query.get("limit") or 10)))
            except ValueError:
                limit = 10
            self._send(Reply(200, logic.meters.list_page(limit, query.get("starting_after"))))
        elif summaries:
            try:
                self._send(Reply(200, logic.meters.summaries(summaries.group(1), query)))
            except MeterError as exc:
                status = 404 if exc.code == "resource_missing" else 400
                body = {"error": {"type": "invalid_request_error", "message": str(exc),
                                  "code": exc.code}}  # fmt: skip
                self._send(Reply(status, body))
        elif url.path == "/_sandbox/stats":
            self._send(Reply(200, logic.stats()))
        elif url.path == "/_sandbox/timeline":
            with logic._lock:
                rows = [
                    {
                        "at": r["at"],
                        "outcome": r["outcome"],
                        "http_status": r["http_status"],
                        "key_tail": r["key_tail"],
                    }
                    for group in logic.requests.values()
                    for r in group
                ]
            rows.sort(key=lambda r: float(r["at"]))
            self._send(Reply(200, {"now": time.monotonic(), "requests": rows}))
        elif url.path == "/_sandbox/requests":
            ident = parse_qs(url.query).get("identifier", [""])[0]
            with logic._lock:
                rows = list(logic.requests.get(ident, []))
            self._send(Reply(200, {"identifier": ident, "requests": rows}))
        else:
            self._send(_not_found(url.path))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    logic: StripeLogic


class SandboxServer:
    """Run the sandbox on loopback: ``with SandboxServer(cfg) as s: s.url``."""

    def __init__(
        self, config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._server = _HTTPServer((host, port), _Handler)
        self._server.logic = StripeLogic(config or SandboxConfig())
        self._thread: threading.Thread | None = None

    @property
    def logic(self) -> StripeLogic:
        return self._server.logic

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sandbox", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
