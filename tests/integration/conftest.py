"""Real parts: a redis-server process, the sandbox over HTTP, a Celery worker process."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis

from adjustments.config import Settings
from adjustments.embedded import EmbeddedRedis, free_port
from adjustments.models import Record
from adjustments.producer import Producer
from adjustments.sandbox import SandboxConfig, SandboxServer

SECRET = "sk_test_integrationSECRET4242"
CLIENT_TIMEOUT_S = 1.0
SANDBOX_DEFAULTS = SandboxConfig(slow_s=CLIENT_TIMEOUT_S + 0.6)

pytestmark = pytest.mark.integration


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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server.start()
    server.stop()


@pytest.fixture
def own_redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own (its keys, heartbeats and commandstats are the
    test's alone), stopped after the test."""
    server = EmbeddedRedis(tmp_path / "redis")
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SANDBOX_DEFAULTS) as server:
        yield server


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


@pytest.fixture(scope="session")
def worker_env(
    redis_url: str, sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return worker_environment(redis_url, sandbox.url, tmp_path_factory.mktemp("data"))


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


@pytest.fixture(scope="session")
def worker(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """The shared worker on the default queue."""
    handle = start_worker(worker_env, tmp_path_factory.mktemp("logs") / "worker.log")
    yield handle
    stop_worker(handle)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def clean(redis_client: redis.Redis, sandbox: SandboxServer) -> None:
    """Our keys only: flushing would also drop kombu's queue bindings under the live worker."""
    for key in redis_client.scan_iter("adj:*"):
        redis_client.delete(key)
    sandbox.logic.reset()
    sandbox.logic.config = SANDBOX_DEFAULTS


@pytest.fixture
def producer(worker: WorkerProcess, clean: None, worker_env: dict[str, str]) -> Iterator[Producer]:
    settings = Settings.from_env(worker_env)
    with Producer(worker_env["REDIS_URL"], settings=settings) as p:
        yield p


class Settle(Protocol):
    """``settle(record_id)``: wait for the record to reach a terminal status, return it."""

    def __call__(self, record_id: str, timeout_s: float = 30.0) -> Record: ...


@pytest.fixture
def settle(producer: Producer) -> Settle:
    """Wait for a record to reach a terminal status and return it."""

    def wait(record_id: str, timeout_s: float = 30.0) -> Record:
        wait_until(
            lambda: producer.get(record_id).status.terminal,
            timeout_s=timeout_s,
            what=f"{record_id} to settle",
        )
        return producer.get(record_id)

    return wait


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


@pytest.fixture(scope="module")
def http_server(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """``adjustments serve`` with a token per role, one per test module."""
    env = {**worker_env, "ADJUSTMENTS_API_TOKENS": TOKEN_SPEC}
    handle = start_server(env, tmp_path_factory.mktemp("http") / "server.log")
    yield handle
    stop_server(handle)
