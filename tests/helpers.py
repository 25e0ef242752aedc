"""Helpers the test tiers share: real processes (workers, the server, the CLI), waits and
the integration settings. Fixtures stay in each tier's conftest.py."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import fakeredis
import redis

from adjustments.celery_config import create_app
from adjustments.config import Durability, Settings
from adjustments.embedded import free_port
from adjustments.messages import TaskMessages
from adjustments.models import CancelRequest, Record
from adjustments.producer import Producer
from adjustments.sandbox import SandboxConfig
from adjustments.store import Outbox, RecordStore

SECRET = "sk_test_integrationSECRET4242"


CLIENT_TIMEOUT_S = 1.0


SANDBOX_DEFAULTS = SandboxConfig(slow_s=CLIENT_TIMEOUT_S + 0.6)


def run_cli(
    args: list[str],
    env: dict[str, str],
    stdin: str | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``adjustments ARGS`` as a user runs it, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "adjustments.cli", *args],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(predicate: Callable[[], object], *, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(0.05)


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def worker_environment(
    redis_url: str, sandbox_url: str, data_dir: Path, **overrides: str
) -> dict[str, str]:
    """The environment of a test's worker: this process's, minus our settings, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADJUSTMENTS_", "STRIPE_"))}
    env.update(
        REDIS_URL=redis_url,
        STRIPE_API_KEY=SECRET,
        STRIPE_API_BASE=sandbox_url,
        ADJUSTMENTS_DATA_DIR=str(data_dir),
        ADJUSTMENTS_STRIPE_TIMEOUT_S=str(CLIENT_TIMEOUT_S),
        ADJUSTMENTS_LEASE_S="5",
        ADJUSTMENTS_BACKOFF_BASE_S="0.02",
        ADJUSTMENTS_BACKOFF_CAP_S="0.2",
        ADJUSTMENTS_MAX_ATTEMPTS="6",
        # Generous: tests of the limiter itself use their own prefix and limit.
        ADJUSTMENTS_RATE_LIMIT="1000",
        ADJUSTMENTS_RATE_RECOVERY_PER_S="1000",
        # Frequent beats: reconciliation's second look at the message count spans one.
        ADJUSTMENTS_HEARTBEAT_S="1",
    )
    env.update(overrides)
    return env


def start_worker(env: dict[str, str], log_path: Path, *, concurrency: int = 8) -> WorkerProcess:
    """``adjustments worker`` as a real process, JSON logs to ``log_path``; waits until ready."""
    argv = [sys.executable, "-m", "adjustments.cli", "worker", "--concurrency", str(concurrency)]
    return start_celery_process(argv, env, log_path)


def start_celery_process(
    argv: list[str], env: dict[str, str], log_path: Path, *, cwd: Path | None = None
) -> WorkerProcess:
    """Any Celery worker command as a real process, output to ``log_path``; waits until it
    says it is ready and fails the test (with its log) if it exits instead."""
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    handle = WorkerProcess(proc, log_path)
    try:
        wait_until(
            lambda: " ready." in handle.log_text() or proc.poll() is not None,
            what=f"{' '.join(argv[1:4])} to be ready",
        )
    except BaseException:
        proc.kill()
        raise
    assert proc.poll() is None, handle.log_text()[-3000:]
    return handle


def stop_worker(handle: WorkerProcess) -> None:
    handle.process.terminate()
    try:
        handle.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        handle.process.kill()
        handle.process.wait()


class Settle(Protocol):
    """``settle(record_id)``: wait for the record to reach a terminal status, return it."""

    def __call__(self, record_id: str, timeout_s: float = 30.0) -> Record: ...


def written_keys(client: redis.Redis) -> list[str]:
    """Our keys in Redis, apart from the live workers' heartbeats."""
    return [k for k in client.scan_iter("adj:*") if not str(k).startswith("adj:worker")]


# adjustments serve: a token per role, and a client for the server's process.
TOKENS = {
    "operate": "op_0123456789abcdef0123",
    "read": "rd_0123456789abcdef0123",
    "enqueue": "en_0123456789abcdef0123",
}


# The enqueue token is named (who asked, on the records it creates); the others take the
# default name <role>-<position>.
TOKEN_SPEC = ",".join(
    f"{'billing-svc=' if role == 'enqueue' else ''}{role}:{token}" for role, token in TOKENS.items()
)


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        role: str | None = "operate",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = dict(headers or {})
        if role:
            sent["Authorization"] = f"Bearer {TOKENS[role]}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload

    def json(self, method: str, path: str, body: object = None, **kw: Any) -> tuple[int, Any]:
        status, _, payload = self.request(method, path, body, **kw)
        return status, json.loads(payload)


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def console_login(server: Server, token: str) -> tuple[int, str]:
    """Log in to the console as a browser does: the login page (its CSRF field and login
    cookie), then the form. (status, the session cookie "name=value" or "")."""
    _, headers, page = server.request("GET", "/console/login", role=None)
    csrf = page.decode().split('name="csrf" value="')[1].split('"')[0]
    nonce = headers["set-cookie"].split(";")[0]
    body = urllib.parse.urlencode({"token": token, "csrf": csrf}).encode()
    status, answer, _ = server.request(
        "POST", "/console/login", raw=body, role=None, headers={**FORM, "Cookie": nonce}
    )
    cookie = answer.get("set-cookie", "")
    if cookie:
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower(), cookie
    session = cookie.split(";")[0] if cookie.startswith("adjustments_session=") else ""
    return status, session


def start_server(env: dict[str, str], log_path: Path, *args: str) -> Server:
    """``adjustments serve ARGS`` as a real process on a free port; waits for /healthz."""
    port = free_port()
    argv = [sys.executable, "-m", "adjustments.cli", "serve", "--port", str(port), *args]
    with open(log_path, "wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", port, process, log_path)

    def up() -> bool:
        assert process.poll() is None, log_path.read_text()
        try:
            return server.request("GET", "/healthz", role=None)[0] == 200
        except OSError:
            return False

    wait_until(up, what="the HTTP server")
    return server


def stop_server(server: Server) -> None:
    server.process.terminate()
    server.process.wait(timeout=15)


def store_of(producer: Producer) -> RecordStore:
    """A store on the producer's Redis with its settings: for what no public call does
    (reading many records at once, a record's raw keys)."""
    return RecordStore.from_settings(producer.client, producer.settings)


def create_record(producer: Producer, request: CancelRequest, *, now: datetime) -> Record:
    """Write ``request`` and its task message as ``cancel()`` does, without its input checks:
    a record whose event Stripe received more than 24 h before ``now``, say."""
    settings = producer.settings
    outbox = Outbox(
        settings.queue,
        TaskMessages(create_app(settings, producer.redis_url), settings.queue).payload,
    )
    record, _ = store_of(producer).create(request, now=now, outbox=outbox)
    return record


class FakeRedis(fakeredis.FakeRedis):
    """fakeredis with an INFO answer for the producer's start checks (it has no INFO)."""

    def info(self, section: str | None = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"redis_version": "7.2.4", "maxmemory_policy": "noeviction"}


def fake_producer() -> Producer:
    """A producer on fakeredis (durability memory): for the checks in front of Redis."""
    settings = Settings(durability=Durability("memory"))
    return Producer(
        "redis://127.0.0.1:1/0", settings=settings, client=FakeRedis(decode_responses=True)
    )
