"""Real parts: a redis-server process, the sandbox over HTTP, a Celery worker process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from adjustments.config import Settings
from adjustments.embedded import EmbeddedRedis
from adjustments.models import Record
from adjustments.producer import Producer
from adjustments.sandbox import SandboxServer
from tests.helpers import (
    SANDBOX_DEFAULTS,
    TOKEN_SPEC,
    Server,
    Settle,
    WorkerProcess,
    start_server,
    start_worker,
    stop_server,
    stop_worker,
    wait_until,
    worker_environment,
)

pytestmark = pytest.mark.integration


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


@pytest.fixture(scope="session")
def worker_env(
    redis_url: str, sandbox: SandboxServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return worker_environment(redis_url, sandbox.url, tmp_path_factory.mktemp("data"))


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


@pytest.fixture(scope="module")
def http_server(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """``adjustments serve`` with a token per role, one per test module."""
    env = {**worker_env, "ADJUSTMENTS_API_TOKENS": TOKEN_SPEC}
    handle = start_server(env, tmp_path_factory.mktemp("http") / "server.log")
    yield handle
    stop_server(handle)
