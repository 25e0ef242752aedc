"""Processes and measurements for `make bench`: Redis, the sandbox, workers, /proc readings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adjustments.embedded import EmbeddedRedis, free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk_test_bench_0000000000"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sandbox:
    """The sandbox in its own process, so its CPU is not counted as ours."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "sandbox.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adjustments.cli", "sandbox", "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._up, 20, "the sandbox")

    def _up(self) -> bool:
        try:
            self.get("/_sandbox/stats")
        except OSError:
            return False
        return True

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(  # noqa: S310 - loopback
            self.url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    def reset(self, **config: Any) -> None:
        self.post("/_sandbox/reset", {})
        defaults = {"latency_ms": 0, "rps_limit": 0, "burst": 0}
        self.post("/_sandbox/config", {**defaults, **config})

    def executed(self) -> int:
        return int(self.get("/_sandbox/stats")["executed_total"])

    def timeline(self) -> list[dict[str, Any]]:
        return list(self.get("/_sandbox/timeline")["requests"])

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=5)
        self.log.close()


class Services:
    """Embedded Redis and the sandbox for one benchmark run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.redis = EmbeddedRedis(workdir / "redis")
        self.redis_url = self.redis.start()
        self.sandbox = Sandbox(workdir)
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ADJUSTMENTS_", "STRIPE_"))}
        env.update(
            REDIS_URL=self.redis_url,
            STRIPE_API_KEY=KEY,
            STRIPE_API_BASE=self.sandbox.url,
            ADJUSTMENTS_DATA_DIR=str(self.workdir / "data"),
            ADJUSTMENTS_MAX_ATTEMPTS="50",
            PYTHONPATH=str(ROOT),
        )
        env.update(overrides)
        return env

    def start(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        """A worker process; returns once its log says it is ready."""
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {log_path.read_text()[-2000:]}")
            return " ready." in log_path.read_text(errors="replace")

        wait_until(ready, 60, name)
        return proc

    def worker(
        self, env: dict[str, str], *, concurrency: int | None = None, name: str = "worker"
    ) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "adjustments.cli", "worker", "--loglevel", "INFO"]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        return self.start(argv, env, name)

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout_s=15)
        self.procs.clear()

    def close(self) -> None:
        self.stop_all()
        self.sandbox.stop()
        self.redis.stop()
