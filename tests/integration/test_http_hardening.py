"""``adjustments serve`` against what an attacker and a careless client send (issue 18): a
real server process and Redis; each test failed before its fix."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from adjustments import Producer
from adjustments.embedded import free_port
from tests.helpers import (
    FORM,
    TOKEN_SPEC,
    TOKENS,
    Server,
    console_login,
    start_server,
    stop_server,
    wait_until,
    written_keys,
)


@pytest.fixture
def api(http_server: Server, producer: Producer) -> Server:
    """The shared server, with a clean store and the shared worker running."""
    return http_server


def cancellation(identifier: str, **extra: object) -> dict[str, object]:
    return {"event_name": "ev", "identifier": identifier, **extra}


OVERFLOW = "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk6MA"  # 9999...:0, past a float's whole numbers


class TestInput:
    @pytest.mark.parametrize("api_value", [False, "", 0, [], {}])
    def test_a_falsy_api_is_refused_not_defaulted(
        self, api: Server, redis_client: redis.Redis, api_value: object
    ) -> None:
        """`api` false, "", 0, [] or {}: 422 alone and invalid in a batch; nothing written."""
        status, body = api.json("POST", "/api/v1/cancellations", cancellation("f1", api=api_value))
        assert status == 422 and "api must be" in body["error"]["message"]
        items = {"items": [cancellation("f2", api=api_value)]}
        status, body = api.json("POST", "/api/v1/cancellations/batch", items, role="enqueue")
        assert status == 200 and body["invalid"] == 1 and body["created"] == 0
        assert written_keys(redis_client) == []

    def test_a_body_that_is_not_json_content_is_refused(
        self, api: Server, redis_client: redis.Redis
    ) -> None:
        """text/plain (or no Content-Type) on an API write is 415: a cross-site fetch cannot
        send JSON without a preflight, so it cannot post at all."""
        raw = json.dumps(cancellation("plain_1")).encode()
        for headers in (
            {"Content-Type": "text/plain"},
            {"Content-Type": "application/x-www-form-urlencoded"},
        ):
            status, _, body = api.request("POST", "/api/v1/cancellations", raw=raw, headers=headers)
            assert status == 415 and b"application/json" in body
        assert written_keys(redis_client) == []

    @pytest.mark.parametrize(
        ("method", "path", "raw", "status"),
        [
            ("POST", "/api/v1/cancellations", b"[" * 2000, 400),
            ("POST", "/api/v1/cancellations/batch", b"[" * 2000, 400),
            ("POST", "/api/v1/replays", b"[" * 2000, 400),
            ("GET", "/api/v1/cancellations?limit=%C2%B2", None, 422),
            ("GET", "/api/v1/cancellations?limit=99999999999999999999", None, 422),
            ("GET", "/api/v1/cancellations?until=", None, 422),
            ("GET", "/api/v1/cancellations?cursor=" + OVERFLOW, None, 422),
            ("GET", "/api/v1/cancellations?cursor=MTAwOi01", None, 422),  # 100:-5
            ("GET", "/api/v1/cancellations?cursor=MTAwOjk5OTk5OTk5OTk5OQ", None, 422),
        ],
        ids=["deep-json", "deep-batch", "deep-replay", "limit-superscript", "limit-huge",
             "until-empty", "cursor-overflow", "cursor-negative-skip", "cursor-huge-skip"],
    )  # fmt: skip
    def test_malformed_requests_are_4xx_with_a_json_error(
        self, api: Server, method: str, path: str, raw: bytes | None, status: int
    ) -> None:
        """Each was a 500 with a traceback (or a 503 echoing Redis commands): now a 4xx with
        one JSON error, and the server logged no traceback."""
        got, _, body = api.request(method, path, raw=raw)
        assert got == status, body
        assert "error" in json.loads(body) and "Traceback" not in api.log_path.read_text()

    def test_a_bidirectional_identifier_is_shown_escaped_in_the_console(
        self, api: Server, producer: Producer
    ) -> None:
        """U+202E in an identifier would reverse the text an operator reads: shown as
        \\u202e on the record's page and in lists."""
        record = producer.cancel("ev", "inv\u202eoice_1", api="v1")
        _, cookie = console_login(api, TOKENS["read"])
        for path in (f"/console/records/{record.id}", "/console/records"):
            page = api.request("GET", path, role=None, headers={"Cookie": cookie})[2].decode()
            assert "\u202e" not in page and "inv\\u202eoice_1" in page


class TestIdempotencyKey:
    def test_concurrent_posts_with_one_key_and_different_bodies_one_wins(
        self, api: Server, redis_client: redis.Redis
    ) -> None:
        """50 pairs of concurrent POSTs, each pair one key and two bodies: one 202 and one
        409 in every pair, and one record per pair."""
        results: dict[int, list[int]] = {i: [] for i in range(50)}

        def post(pair: int, side: str) -> None:
            status, _, _ = api.request(
                "POST", "/api/v1/cancellations", cancellation(f"race_{pair}_{side}"),
                role="enqueue", headers={"Idempotency-Key": f"race-{pair}"},
            )  # fmt: skip
            results[pair].append(status)

        threads = [
            threading.Thread(target=post, args=(pair, side)) for pair in range(50) for side in "ab"
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(sorted(statuses) == [202, 409] for statuses in results.values()), results
        identifiers = [
            str(redis_client.hget(key, "identifier"))
            for key in redis_client.scan_iter("adj:rec:*")
            if str(redis_client.hget(key, "identifier")).startswith("race_")
        ]
        pairs = sorted(int(i.split("_")[1]) for i in identifiers)
        assert pairs == list(range(50)), identifiers  # one record for each pair

    def test_a_repeated_post_gets_the_first_answer(
        self, api: Server, producer: Producer, settle: Any
    ) -> None:
        """The same key and body again, after the record moved on: the first answer (202 and
        the queued record), marked Idempotent-Replayed; another token's same key is its own."""
        headers = {"Idempotency-Key": "first-answer-1"}
        body = cancellation("first_1", api="v1")
        status, _, first = api.request("POST", "/api/v1/cancellations", body, headers=headers)
        assert status == 202
        settle(json.loads(first)["id"])
        again, replay_headers, second = api.request(
            "POST", "/api/v1/cancellations", body, headers=headers
        )
        assert (again, second) == (202, first)
        assert replay_headers["idempotent-replayed"] == "true"
        other, _, _ = api.request(
            "POST", "/api/v1/cancellations", cancellation("first_2"), role="enqueue",
            headers=headers,
        )  # fmt: skip
        assert other == 202  # the operate token's key does not bind the enqueue token


class TestHeadersAndRoutes:
    def test_security_headers_on_pages_and_answers(self, api: Server) -> None:
        """Console pages and API answers cannot be framed, sniffed or cached."""
        _, cookie = console_login(api, TOKENS["read"])
        for path, kw in (
            ("/console", {"role": None, "headers": {"Cookie": cookie}}),
            ("/console/login", {"role": None}),
            ("/api/v1/cancellations", {}),
        ):
            status, headers, _ = api.request("GET", path, **kw)
            assert status == 200, path
            assert headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer"
            assert headers["cache-control"] == "no-store"

    def test_an_unknown_host_is_refused(self, api: Server) -> None:
        """A Host name the server was not told about (DNS rebinding) gets 400."""
        status, _, body = api.request("GET", "/healthz", headers={"Host": "attacker.example"})
        assert status == 400 and b"unknown_host" in body
        assert api.request("GET", "/healthz", headers={"Host": f"localhost:{api.port}"})[0] == 200

    def test_small_protocol_answers(self, api: Server) -> None:
        """An enqueue token on /metrics is 403 (it is authenticated); 405 says Allow; the
        trailing-slash redirect is relative, whatever the Host header says."""
        status, _, body = api.request("GET", "/metrics", role="enqueue")
        assert status == 403 and b"an enqueue token" in body
        assert api.request("GET", "/metrics", role=None)[0] == 401
        status, headers, _ = api.request("DELETE", "/api/v1/cancellations")
        assert status == 405 and headers["allow"] == "GET, HEAD, POST"
        status, headers, _ = api.request(
            "GET", "/api/v1/cancellations/?limit=5", headers={"Host": "localhost"}
        )
        assert status == 307 and headers["location"] == "/api/v1/cancellations?limit=5"


class TestSessions:
    def test_each_login_is_its_own_session_and_logout_revokes_it(self, api: Server) -> None:
        """Two logins with one token in the same second get different sessions; after
        logout the old cookie no longer opens a page."""
        first = console_login(api, TOKENS["operate"])[1]
        second = console_login(api, TOKENS["operate"])[1]
        assert first and second and first != second
        page = api.request("GET", "/console", role=None, headers={"Cookie": first})[2].decode()
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        status, _, _ = api.request(
            "POST", "/console/logout", role=None,
            raw=urllib.parse.urlencode({"csrf": csrf}).encode(),
            headers={**FORM, "Cookie": first},
        )  # fmt: skip
        assert status == 303
        assert api.request("GET", "/console", role=None, headers={"Cookie": first})[0] == 303
        assert api.request("GET", "/console", role=None, headers={"Cookie": second})[0] == 200

    def test_the_login_form_needs_its_csrf_token(self, api: Server) -> None:
        """A cross-site login form (no login cookie, no CSRF field) logs nobody in."""
        body = urllib.parse.urlencode({"token": TOKENS["operate"]}).encode()
        status, headers, _ = api.request(
            "POST", "/console/login", raw=body, role=None, headers=FORM
        )
        assert status == 403 and "adjustments_session" not in headers.get("set-cookie", "")

    @pytest.mark.parametrize(
        ("path", "raw"),
        [
            ("/console/login", b"token=" + b"a" * 17_000),
            ("/console/login", b"token=\xff\xfe"),
            ("/console/logout", b"csrf=" + b"a" * 17_000),
            ("/console/logout", b"csrf=\xff"),
            ("/console/replay", b"ids=" + b"a" * 17_000),
            ("/console/replay", b"ids=\xff"),
        ],
        ids=[
            "login-big",
            "login-bytes",
            "logout-big",
            "logout-bytes",
            "replay-big",
            "replay-bytes",
        ],
    )
    def test_oversized_or_undecodable_forms_are_4xx_pages(
        self, api: Server, path: str, raw: bytes
    ) -> None:
        """Forms over 16 KiB or with bytes that are not UTF-8: a 4xx HTML page, no 500."""
        _, cookie = console_login(api, TOKENS["operate"])
        status, headers, _ = api.request(
            "POST", path, raw=raw, role=None, headers={**FORM, "Cookie": cookie}
        )
        assert 400 <= status < 500 and headers["content-type"].startswith("text/html")


class TestInsecureLocal:
    def test_sessions_and_csrf_cannot_be_forged_without_tokens(
        self, worker_env: dict[str, str], producer: Producer, tmp_path: Path
    ) -> None:
        """--insecure-local: the CSRF key is random for each process, so a token computed
        the way the old empty-token-list key allowed is refused; every visitor has a session
        of their own."""
        import hashlib
        import hmac

        server = start_server(worker_env, tmp_path / "server.log", "--insecure-local")
        try:
            _, headers, _ = server.request("GET", "/console", role=None)
            cookie = headers["set-cookie"].split(";")[0]
            session = cookie.split("=", 1)[1]
            old_key = hashlib.sha256(b"adjustments-session\0").digest()
            forged = hmac.new(old_key, ("csrf|" + session).encode(), hashlib.sha256).hexdigest()
            status, _, _ = server.request(
                "POST", "/console/replay", role=None,
                raw=urllib.parse.urlencode({"csrf": forged, "status": "failed"}).encode(),
                headers={**FORM, "Cookie": cookie},
            )  # fmt: skip
            assert status == 403
            other = server.request("GET", "/console", role=None)[1]["set-cookie"]
            assert other.split(";")[0] != cookie
        finally:
            stop_server(server)


def _raw(port: int, data: bytes, *, timeout: float = 30) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


class TestRequestHeads:
    def test_an_oversized_header_is_refused_early(self, api: Server) -> None:
        """A 4 MiB header is answered 431 after the first few KiB, not parsed to the end."""
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
        with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
            sock.sendall(head)
            sent = 0
            try:
                while sent < 4 * 1024 * 1024:
                    sock.sendall(b"a" * 65536)
                    sent += 65536
            except OSError:  # the server answered and closed: the rest is refused
                pass
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
        assert api.request("GET", "/healthz", role=None)[0] == 200

    def test_slow_headers_time_out(self, producer: Producer) -> None:
        """A head that has not arrived HEAD_TIMEOUT_S after its first byte gets 408 and the
        connection closes (a real uvicorn server with our protocol, the timeout shortened)."""
        import uvicorn

        from adjustments.http.limits import GuardedHttpToolsProtocol

        class Quick(GuardedHttpToolsProtocol):
            head_timeout_s = 0.5

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        port = free_port()
        config = uvicorn.Config(app, port=port, http=Quick, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, what="uvicorn")
        try:
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
                answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert time.monotonic() - started < 20
            whole = _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert whole.startswith(b"HTTP/1.1 200") and b"\r\nok\r\n" in whole
        finally:
            server.should_exit = True
            thread.join(timeout=10)


@pytest.fixture
def own_server(
    own_redis_url: str, worker_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[Server, redis.Redis]]:
    """A server on a Redis of its own (the test fills or stops it), and a client of it."""
    env = {**worker_env, "REDIS_URL": own_redis_url, "ADJUSTMENTS_API_TOKENS": TOKEN_SPEC}
    env["ADJUSTMENTS_DURABILITY"] = "memory"
    server = start_server(env, tmp_path / "server.log")
    client = redis.Redis.from_url(own_redis_url, decode_responses=True)
    yield server, client
    client.config_set("maxmemory", 0)
    client.close()
    stop_server(server)


class TestFullRedis:
    def test_a_batch_meeting_a_full_redis_writes_nothing_and_health_says_so(
        self, own_server: tuple[Server, redis.Redis]
    ) -> None:
        """At maxmemory: a batch is 503 with nothing of it written (all or nothing), and
        /healthz is 503 saying Redis refuses writes; after room is made both work."""
        server, client = own_server
        client.config_set("maxmemory-policy", "noeviction")
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 150_000)  # room for part of a batch, not all
        items = {"items": [cancellation(f"full_{i}") for i in range(1000)]}
        status, body = server.json("POST", "/api/v1/cancellations/batch", items, role="enqueue")
        assert status == 503, body
        assert client.zcard("adj:idx:queued") == 0
        client.config_set("maxmemory", 1)
        status, body = server.json("GET", "/healthz", role=None)
        assert status == 503 and "out of memory" in body["redis"]
        client.config_set("maxmemory", 0)
        assert server.json("GET", "/healthz", role=None)[0] == 200
        status, body = server.json("POST", "/api/v1/cancellations/batch", items, role="enqueue")
        assert status == 200 and body["created"] == 1000


class TestStartAndOutage:
    def test_serve_starts_without_redis_answers_503_and_recovers(
        self, worker_env: dict[str, str], tmp_path: Path
    ) -> None:
        """serve started while Redis is down: it starts, answers 503 (and /metrics 200 with
        adjustments_redis_up 0), and serves normally once Redis is there."""
        from adjustments.embedded import EmbeddedRedis

        redis_port = free_port()
        env = {
            **worker_env,
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "ADJUSTMENTS_API_TOKENS": TOKEN_SPEC,
            "ADJUSTMENTS_DURABILITY": "memory",
        }
        port = free_port()
        log_path = tmp_path / "server.log"
        with open(log_path, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "adjustments.cli", "serve", "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = Server(f"http://127.0.0.1:{port}", port, process, log_path)

        def answers() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                return server.request("GET", "/healthz", role=None)[0] == 503
            except OSError:
                return False

        try:
            wait_until(answers, what="serve to answer without Redis")
            status, _ = server.json("POST", "/api/v1/cancellations", cancellation("down_1"))
            assert status == 503
            status, _, metrics = server.request("GET", "/metrics", role="read")
            assert status == 200 and b"adjustments_redis_up 0.0" in metrics
            own = EmbeddedRedis(tmp_path / "redis", port=redis_port)
            own.start()
            try:
                wait_until(
                    lambda: server.request("GET", "/healthz", role=None)[0] == 200,
                    what="health after Redis started",
                )
                status, _ = server.json("POST", "/api/v1/cancellations", cancellation("up_1"))
                assert status == 202
                metrics = server.request("GET", "/metrics", role="read")[2]
                assert b"adjustments_redis_up 1.0" in metrics
            finally:
                own.stop()
        finally:
            stop_server(server)

    def test_a_busy_port_is_one_line_and_no_serving_log(
        self, worker_env: dict[str, str], tmp_path: Path
    ) -> None:
        """A taken port: exit 1 with one line naming it, and no http.serving line before."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            env = {**worker_env, "ADJUSTMENTS_API_TOKENS": TOKEN_SPEC}
            out = subprocess.run(
                [sys.executable, "-m", "adjustments.cli", "serve", "--port", str(port)],
                env=env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
        assert out.returncode == 1, out
        assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
        assert "http.serving" not in out.stderr + out.stdout
