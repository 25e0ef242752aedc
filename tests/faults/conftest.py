"""Fault tests: real Redis (Valkey) processes that are killed, stopped, filled and failed over
under a real worker, with the sandbox counting what Stripe would have executed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from adjustments.config import Settings
from adjustments.embedded import free_port, redis_binary
from adjustments.producer import Producer
from adjustments.sandbox import SandboxConfig, SandboxServer
from tests.helpers import (
    WorkerProcess,
    start_worker,
    stop_worker,
    store_of,
    wait_until,
    worker_environment,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@dataclass
class RedisProcess:
    """One valkey-server on loopback that a test can kill, stop and start again on its port."""

    workdir: Path
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    start_check_auth: tuple[str, str] | None = None  # (user, password) when ACLs are on
    env: dict[str, str] = field(default_factory=dict)  # extra environment (LD_PRELOAD)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        user, password = self.start_check_auth or (None, None)
        return redis.Redis(
            port=self.port,
            username=user,
            password=password,
            decode_responses=True,
            socket_timeout=5,
        )

    def start(self) -> RedisProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [redis_binary(), "--bind", "127.0.0.1", "--port", str(self.port)]
        argv += ["--dir", str(self.workdir), "--save", "", "--logfile", "redis.log"]
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
        argv += ["--maxmemory-policy", "noeviction", *self.extra]
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **self.env},
        )
        wait_until(self._answers, timeout_s=15, what=f"redis on {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """SIGKILL: a crash (what was fsynced survives)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def shutdown(self) -> None:
        with self.client() as c, contextlib.suppress(redis.ConnectionError):
            c.shutdown()
        assert self.process is not None
        self.process.wait(timeout=10)

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    proc = RedisProcess(tmp_path / "redis").start()
    yield proc
    proc.stop()


@pytest.fixture
def fault_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(latency_ms=100, slow_s=5.6)) as server:
        yield server


def fault_env(
    redis_url: str, sandbox: SandboxServer, data_dir: Path, **extra: str
) -> dict[str, str]:
    """The integration tests' worker environment, with timeouts and leases long enough for an
    outage, and reconciliation out of the way: recovery here must not depend on it."""
    settings = {
        "ADJUSTMENTS_STRIPE_TIMEOUT_S": "5",
        "ADJUSTMENTS_LEASE_S": "60",
        "ADJUSTMENTS_BACKOFF_BASE_S": "0.05",
        "ADJUSTMENTS_BACKOFF_CAP_S": "0.5",
        "ADJUSTMENTS_MAX_ATTEMPTS": "8",
        "ADJUSTMENTS_RECONCILE_GRACE_S": "3600",
    }
    return worker_environment(redis_url, sandbox.url, data_dir, **{**settings, **extra})


@dataclass
class Deployment:
    """What a fault test runs against: its environment, a worker and a producer."""

    env: dict[str, str]
    worker: WorkerProcess
    producer: Producer


Deploy = Callable[..., Deployment]  # the deploy fixture: deploy(redis_url=None, **settings)


@pytest.fixture
def deploy(
    request: pytest.FixtureRequest, fault_sandbox: SandboxServer, tmp_path: Path
) -> Iterator[Deploy]:
    """Starts a worker (its log ``worker.log``) and a producer on ``fault_env``'s environment:
    on ``redis_proc`` unless a ``redis_url`` is given, with the settings given as keywords.
    Both are stopped when the test ends, whatever it did to them."""
    started: list[Deployment] = []

    def start(
        redis_url: str | None = None, *, concurrency: int = 16, **settings: str
    ) -> Deployment:
        url = redis_url or request.getfixturevalue("redis_proc").url
        env = fault_env(url, fault_sandbox, tmp_path / "data", **settings)
        worker = start_fault_worker(env, tmp_path / "worker.log", concurrency)
        started.append(Deployment(env, worker, producer_for(env)))
        return started[-1]

    yield start
    for deployment in reversed(started):
        deployment.producer.close()
        stop_worker(deployment.worker)


def producer_for(env: dict[str, str]) -> Producer:
    return Producer(env["REDIS_URL"], settings=Settings.from_env(env))


def assert_all_done_once(
    producer: Producer,
    ids: Iterable[str],
    sandbox: SandboxServer,
    *,
    timeout_s: float = 45.0,
    worker: WorkerProcess | None = None,
) -> None:
    """Every request ends terminal (without reconciliation), each executed exactly once."""
    ids = list(ids)

    def done() -> bool:
        try:
            records = store_of(producer).get_many(ids)
        except redis.RedisError:
            return False
        return len(records) == len(ids) and all(r.status.terminal for r in records)

    try:
        wait_until(done, timeout_s=timeout_s, what="every accepted request to end terminal")
    except AssertionError:
        counts = producer.counts()
        log = worker.log_text()[-3000:] if worker else ""
        raise AssertionError(f"not all terminal: {counts}\n{log}") from None
    records = store_of(producer).get_many(ids)
    executions = sandbox.logic.executions
    twice = [r.identifier for r in records if executions[r.identifier] > 1]
    never = [
        r.identifier
        for r in records
        if r.status.value == "pending" and not executions[r.identifier]
    ]
    assert not twice, f"executed more than once: {twice[:5]}"
    assert not never, f"pending but never executed: {never[:5]}"
    assert {r.status.value for r in records} == {"pending"}


def start_fault_worker(env: dict[str, str], log_path: Path, concurrency: int = 16) -> WorkerProcess:
    return start_worker(env, log_path, concurrency=concurrency)
