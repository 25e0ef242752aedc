"""`make bench`: each figure measured next to its baseline in the same run.

    python -m benchmarks.bench [--quick] [--json PATH]

Starts everything on loopback (embedded Redis, the sandbox in its own process, workers),
runs every scenario, prints a table and writes JSON (default benchmarks/results/latest.json).
--quick runs every scenario briefly, to keep the script working (a test runs it); its figures
are not meant to meet the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import stripe

from adjustments import keys
from adjustments.config import Settings
from adjustments.models import Status
from adjustments.producer import Producer
from benchmarks.harness import KEY, ROOT, Services, cpu_s, rss_mb, wait_until

RESULTS = ROOT / "benchmarks" / "results" / "latest.json"


@dataclass
class Row:
    scenario: str
    figure: str
    value: float
    unit: str
    baseline: float | None
    target: str
    ok: bool | None

    def cells(self) -> list[str]:
        base = "" if self.baseline is None else f"{self.baseline:,.2f}"
        verdict = {True: "yes", False: "NO", None: "-"}[self.ok]
        return [
            self.scenario,
            self.figure,
            f"{self.value:,.2f} {self.unit}",
            base,
            self.target,
            verdict,
        ]


def producer(services: Services, **env: str) -> Producer:
    settings = Settings.from_env(services.env(**env))
    return Producer(services.redis_url, settings=settings)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- scenarios ---------------------------------------------------------------------------------
def single_enqueue(services: Services, n: int) -> list[Row]:
    """producer.cancel() latency next to Celery's apply_async of a no-op task."""
    from benchmarks import baseline_app

    baseline_app.app.conf.update(broker_url=services.redis_url, task_default_queue="bench-noop")
    ours: list[float] = []
    theirs: list[float] = []
    with producer(services, ADJUSTMENTS_QUEUE="bench-single", ADJUSTMENTS_KEY_PREFIX="single") as p:
        p.cancel("ev", "warm-up")
        baseline_app.noop.apply_async()
        for i in range(n):  # interleaved, so both see the same machine
            t0 = time.perf_counter()
            p.cancel("ev", f"single_{i}")
            t1 = time.perf_counter()
            baseline_app.noop.apply_async()
            t2 = time.perf_counter()
            ours.append((t1 - t0) * 1000)
            theirs.append((t2 - t1) * 1000)
    p50, p99 = percentile(ours, 0.5), percentile(ours, 0.99)
    b50, b99 = percentile(theirs, 0.5), percentile(theirs, 0.99)
    return [
        Row(
            "single enqueue",
            "cancel() p50",
            p50,
            "ms",
            b50,
            "<= 0.5 ms and <= baseline",
            p50 <= 0.5 and p50 <= b50,
        ),
        Row(
            "single enqueue",
            "cancel() p99",
            p99,
            "ms",
            b99,
            "<= 2 ms and <= baseline",
            p99 <= 2.0 and p99 <= b99,
        ),
    ]


HTTP_TOKEN = "enqueue:bench_http_token_0123456789"


def http_enqueue(services: Services, n: int, seconds: float) -> list[Row]:
    """``adjustments serve``: one POST's latency on a keep-alive connection next to cancel()
    in-process, and the requests per second of one server process under keep-alive load."""
    import http.client
    import subprocess
    import urllib.request

    from adjustments.embedded import free_port

    port = free_port()
    env = services.env(
        ADJUSTMENTS_API_TOKENS=HTTP_TOKEN,
        ADJUSTMENTS_QUEUE="bench-http",
        ADJUSTMENTS_KEY_PREFIX="http",
    )
    log_path = services.workdir / "server.log"
    with open(log_path, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "adjustments.cli", "serve", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    token = HTTP_TOKEN.split(":", 1)[1]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ours: list[float] = []
    inproc: list[float] = []
    try:
        wait_until(up, 30, "the HTTP server")
        conn = http.client.HTTPConnection("127.0.0.1", port)
        with producer(services, ADJUSTMENTS_QUEUE="bench-http", ADJUSTMENTS_KEY_PREFIX="http") as p:
            p.cancel("ev", "warm-up")
            for i in range(n):  # interleaved, so both see the same machine
                body = json.dumps({"event_name": "ev", "identifier": f"h_{i}"})
                t0 = time.perf_counter()
                conn.request("POST", "/api/v1/cancellations", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                t1 = time.perf_counter()
                p.cancel("ev", f"p_{i}")
                t2 = time.perf_counter()
                assert response.status == 202, response.status
                ours.append((t1 - t0) * 1000)
                inproc.append((t2 - t1) * 1000)
            conn.close()
            loaded = subprocess.run(
                [sys.executable, "-m", "benchmarks.httpload", str(port), token, str(seconds),
                 "32", "load"],
                capture_output=True, text=True, check=True, cwd=ROOT, env=env,
            )  # fmt: skip
            load = json.loads(loaded.stdout)
            guard_rows = header_guard(port, headers, 200 if n > 100 else 50)
            t0 = time.perf_counter()
            calls = 0
            while time.perf_counter() - t0 < min(seconds, 3):
                p.cancel("ev", f"rate_{calls}")
                calls += 1
            inproc_rate = calls / (time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(timeout=15)
    p50, p99 = percentile(ours, 0.5), percentile(ours, 0.99)
    rate = float(load["per_s"])
    return [
        Row("http enqueue", "POST p50, keep-alive", p50, "ms", percentile(inproc, 0.5),
            "<= 2 ms (baseline: cancel() in-process)", p50 <= 2.0),
        Row("http enqueue", "POST p99, keep-alive", p99, "ms", percentile(inproc, 0.99),
            "- (baseline: cancel() in-process)", None),
        Row("http enqueue", "POSTs/s, 1 process, 32 connections", rate, "/s", inproc_rate,
            ">= 2,000/s (baseline: cancel() in a loop)",
            rate >= 2000 and load["ok"] == load["requests"]),
        *guard_rows,
    ]  # fmt: skip


HUGE_HEADER_BYTES = 32 * 1024 * 1024


def _send_huge_headers(port: int, stop: threading.Event, sent: list[int]) -> None:
    """Send 32 MiB header lines, connection after connection, until ``stop``: the server
    refuses each one after its first 32 KiB and closes it (the attack costs it little)."""
    import socket

    chunk = b"a" * 65536
    while not stop.is_set():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            total = 0
            try:
                while total < HUGE_HEADER_BYTES and not stop.is_set():
                    sock.sendall(chunk)
                    total += len(chunk)
            except OSError:  # refused and closed: the rest of the header is never parsed
                pass
            sent.append(total)


def header_guard(port: int, headers: dict[str, str], n: int) -> list[Row]:
    """Other clients' POST latency while one client sends 32 MiB headers, next to the same
    POSTs with nobody attacking, in the same run."""
    import http.client

    def posts(prefix: str) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        out = []
        for i in range(n):
            body = json.dumps({"event_name": "ev", "identifier": f"{prefix}_{i}"})
            t0 = time.perf_counter()
            conn.request("POST", "/api/v1/cancellations", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            out.append((time.perf_counter() - t0) * 1000)
            assert response.status == 202, response.status
        conn.close()
        return out

    quiet = posts("quiet")
    stop = threading.Event()
    sent: list[int] = []
    attacker = threading.Thread(target=_send_huge_headers, args=(port, stop, sent), daemon=True)
    attacker.start()
    time.sleep(0.2)
    try:
        attacked = posts("attacked")
    finally:
        stop.set()
        attacker.join(timeout=30)
    p99, base = percentile(attacked, 0.99), percentile(quiet, 0.99)
    return [
        Row("header guard", "POST p99 while 32 MiB headers arrive", p99, "ms", base,
            "<= 50 ms (baseline: no attack)", p99 <= 50),
        Row("header guard", "32 MiB-header connections refused", float(len(sent)), "", None,
            "- (each refused after 32 KiB)", None),
    ]  # fmt: skip


def durability_cost(services: Services, n: int) -> list[Row]:
    """The write of cancel() (the store's create, without input validation) for each
    durability level under each appendfsync policy; the baseline is `memory` on the same
    server in the same run. (`fsync` under everysec is refused by the start checks, since
    WAITAOF can confirm early there; it is timed here to show what it would cost.)"""
    from redis import Redis

    from adjustments.celery_config import create_app
    from adjustments.config import Durability
    from adjustments.messages import TaskMessages
    from adjustments.models import CancelRequest
    from adjustments.store import Outbox, RecordStore

    rows: list[Row] = []
    admin = Redis.from_url(services.redis_url)
    try:
        with producer(services, ADJUSTMENTS_QUEUE="bench-durability") as p:
            queue = p.settings.queue  # the message cancel() writes with the record
            outbox = Outbox(queue, TaskMessages(create_app(p.settings, p.redis_url), queue).payload)
            stores = {
                level: RecordStore(
                    p.client, prefix=f"dur-{level}", retention_s=3600,
                    durability=Durability.parse(level),
                )
                for level in ("memory", "fsync")
            }  # fmt: skip
            for appendfsync in ("everysec", "always"):
                admin.config_set("appendfsync", appendfsync)
                samples: dict[str, list[float]] = {level: [] for level in stores}
                for i in range(n):  # interleaved, so both see the same machine
                    for level, store in stores.items():
                        request = CancelRequest("v2", "ev", f"dur_{appendfsync}_{i}")
                        t0 = time.perf_counter()
                        store.create(request, now=datetime.now(UTC), outbox=outbox)
                        samples[level].append((time.perf_counter() - t0) * 1000)
                for q, name in ((0.5, "p50"), (0.99, "p99")):
                    value = percentile(samples["fsync"], q)
                    base = percentile(samples["memory"], q)
                    rows.append(Row(f"durability (appendfsync {appendfsync})",
                                    f"write {name}, fsync vs memory", value, "ms", base,
                                    "reported", None))  # fmt: skip
    finally:
        admin.config_set("appendfsync", "always")
        admin.delete("bench-durability")
        admin.close()
    return rows


def bulk_enqueue(services: Services, n: int) -> list[Row]:
    """cancel_many() throughput next to one-by-one cancel()."""
    with producer(services, ADJUSTMENTS_QUEUE="bench-bulk", ADJUSTMENTS_KEY_PREFIX="bulk") as p:
        one = max(200, n // 10)
        t0 = time.perf_counter()
        for i in range(one):
            p.cancel("ev", f"one_{i}")
        single_rate = one / (time.perf_counter() - t0)
        items = [{"event_name": "ev", "identifier": f"bulk_{i}"} for i in range(n)]
        t0 = time.perf_counter()
        result = p.cancel_many(items)
        bulk_rate = n / (time.perf_counter() - t0)
        assert result.created == n
    return [
        Row(
            "bulk enqueue",
            "cancel_many()",
            bulk_rate,
            "req/s",
            single_rate,
            ">= 10,000/s",
            bulk_rate >= 10_000,
        )
    ]


def finance_export(services: Services, n: int) -> list[Row]:
    """`adjustments export` of n records (each with a reason, who asked and its original
    event) to a CSV file, in its own process: rows/s next to a raw pipelined HGETALL of the
    same records (the floor: reading them), and its peak RSS next to an empty export's."""
    env = services.env(ADJUSTMENTS_KEY_PREFIX="fin", ADJUSTMENTS_QUEUE="bench-fin")
    event = {"payload": {"stripe_customer_id": "cus_1", "value": "3"}, "timestamp": time.time()}
    out = services.workdir / "export.csv"

    def export_run() -> tuple[float, float]:
        # Started from a small launcher: a child's ru_maxrss counts the image it was forked
        # from, and this process holds every item it wrote.
        argv = [sys.executable, "-m", "adjustments.cli", "export", "-o", str(out)]
        launcher = (
            "import os, subprocess, sys, time; t = time.perf_counter(); "
            "p = subprocess.Popen(sys.argv[1:], stderr=subprocess.DEVNULL); "
            "_, s, u = os.wait4(p.pid, 0); "
            "print(time.perf_counter() - t, u.ru_maxrss, os.waitstatus_to_exitcode(s))"
        )
        done = subprocess.run([sys.executable, "-c", launcher, *argv], env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        seconds, rss_kb, code = done.stdout.split()
        assert code == "0", done.stderr
        return float(seconds), int(rss_kb) / 1024

    _, empty_rss = export_run()
    with producer(services, ADJUSTMENTS_KEY_PREFIX="fin", ADJUSTMENTS_QUEUE="bench-fin") as p:
        for start in range(0, n, 50_000):
            items = [
                {"event_name": "ev", "identifier": f"fin_{i}", "reason": f"duplicate {i}",
                 "requested_by": "bench", "original_event": event}
                for i in range(start, min(n, start + 50_000))
            ]  # fmt: skip
            p.cancel_many(items)
        client = p.client
        ids = [str(i) for i in client.zrange(keys.index("fin", Status.QUEUED), 0, -1)]
        t0 = time.perf_counter()
        for first in range(0, len(ids), 2000):
            pipe = client.pipeline(transaction=False)
            for record_id in ids[first : first + 2000]:
                pipe.hgetall(keys.record("fin", record_id))
            pipe.execute()
        raw_rate = len(ids) / (time.perf_counter() - t0)
        client.delete("bench-fin")
    seconds, rss = export_run()
    lines = sum(1 for _ in out.open(encoding="utf-8")) - 1
    assert lines == n, (lines, n)
    rate = n / seconds
    return [
        Row("finance export", f"adjustments export, {n:,} rows", rate, "rows/s", raw_rate,
            ">= 20,000/s", rate >= 20_000),
        Row("finance export", f"peak RSS, {n:,} rows", rss, "MB", empty_rss,
            "<= 150 MB at 1,000,000", rss <= 150),
    ]  # fmt: skip


def _rate_from_timeline(rows: list[dict[str, Any]], *, ok_only: bool = True) -> float:
    done = [float(r["at"]) for r in rows if not ok_only or r["http_status"] == 200]
    if len(done) < 2:
        return 0.0
    return (len(done) - 1) / (done[-1] - done[0])


def end_to_end(services: Services, n: int, n_base: int, concurrency: int | None = None,
               label: str = "") -> tuple[list[Row], dict[str, float]]:  # fmt: skip
    """Completed cancellations/s, Stripe answering in 100 ms: ours vs a plain prefork task."""
    cores = os.cpu_count() or 2
    sandbox = services.sandbox
    prefix = f"e2e{label}"  # each run its own records, so the counts are this run's
    env = services.env(
        ADJUSTMENTS_QUEUE=prefix, ADJUSTMENTS_KEY_PREFIX=prefix, ADJUSTMENTS_RATE_LIMIT="0"
    )
    worker = services.worker(env, concurrency=concurrency, name=f"e2e-worker{label}")
    sandbox.reset(latency_ms=100)
    with producer(services, ADJUSTMENTS_QUEUE=prefix, ADJUSTMENTS_KEY_PREFIX=prefix) as p:
        cpu0 = cpu_s(worker.pid)
        p.cancel_many([{"event_name": "ev", "identifier": f"e2e{label}_{i}"} for i in range(n)])
        wait_until(lambda: p.counts()["pending"] >= n, 300, "our worker to finish")
        cpu_ms = (cpu_s(worker.pid) - cpu0) * 1000 / n
    ours = _rate_from_timeline(sandbox.timeline())
    memory = rss_mb(worker.pid)
    services.stop_all()
    if label:  # a sweep point: no baseline run
        return [Row("worker pool", f"threads x{concurrency}", ours, "req/s", None, "-", None)], {}

    from benchmarks import baseline_app

    base_env = services.env(BASELINE_QUEUE="bench-baseline")
    services.start([sys.executable, "-m", "celery", "-A", "benchmarks.baseline_app", "worker",
                    "--pool", "prefork", "--concurrency", str(cores), "--loglevel", "INFO"],
                   base_env, "baseline-worker")  # fmt: skip
    sandbox.reset(latency_ms=100)
    baseline_app.app.conf.update(broker_url=services.redis_url)
    for i in range(n_base):
        baseline_app.cancel.apply_async(("ev", f"base_{i}"), queue="bench-baseline")
    wait_until(lambda: sandbox.executed() >= n_base, 300, "the baseline worker to finish")
    base = _rate_from_timeline(sandbox.timeline())
    services.stop_all()
    rows = [Row("end to end, Stripe 100 ms", "completed/s, one worker process", ours, "req/s", base,
                ">= 250/s and >= 10x baseline", ours >= 250 and ours >= 10 * base)]  # fmt: skip
    return rows, {"cpu_ms": cpu_ms, "rss_mb": memory}


def worker_cpu(services: Services, ours_ms: float, calls: int) -> list[Row]:
    """Our worker's CPU per cancellation next to one bare SDK call against the same sandbox."""
    services.sandbox.reset(latency_ms=0)
    stripe.enable_telemetry = False
    client = stripe.StripeClient(KEY, base_addresses={"api": services.sandbox.url})
    params: Any = {"event_name": "ev", "type": "cancel", "cancel": {"identifier": "x"}}
    for i in range(20):
        client.v1.billing.meter_event_adjustments.create(
            params={**params, "cancel": {"identifier": f"w{i}"}}  # type: ignore[typeddict-item]
        )
    t0 = time.process_time()
    for i in range(calls):
        client.v1.billing.meter_event_adjustments.create(
            params={**params, "cancel": {"identifier": f"c{i}"}}  # type: ignore[typeddict-item]
        )
    bare_ms = (time.process_time() - t0) * 1000 / calls
    return [Row("worker CPU", "CPU per cancellation", ours_ms, "ms", bare_ms, "<= 2x bare SDK call",
                ours_ms <= 2 * bare_ms)]  # fmt: skip


PREFIX_LIMITED = "limited"


def _limited_workers(services: Services) -> None:
    """3 worker processes sharing ADJUSTMENTS_RATE_LIMIT=50, for both limit scenarios."""
    env = services.env(
        ADJUSTMENTS_QUEUE=f"bench-{PREFIX_LIMITED}",
        ADJUSTMENTS_KEY_PREFIX=PREFIX_LIMITED,
        ADJUSTMENTS_RATE_LIMIT="50",
    )
    for n in range(3):
        services.worker(env, name=f"{PREFIX_LIMITED}-worker{n}")


def _limited_run(
    services: Services, *, sandbox_limit: float, seconds: float, prefix: str
) -> list[dict[str, Any]]:
    """The 3 limited workers against a sandbox limit for ``seconds``; the sandbox's timeline.
    The shared limiter starts afresh (no cut from an earlier run)."""
    from redis import Redis

    with Redis.from_url(services.redis_url) as admin:
        admin.delete(f"{PREFIX_LIMITED}:ratelimit")
    services.sandbox.reset(latency_ms=50, rps_limit=sandbox_limit)
    with producer(
        services, ADJUSTMENTS_QUEUE=f"bench-{PREFIX_LIMITED}", ADJUSTMENTS_KEY_PREFIX=PREFIX_LIMITED
    ) as p:
        p.cancel_many(
            [{"event_name": "ev", "identifier": f"{prefix}_{i}"} for i in range(int(60 * seconds))]
        )
        time.sleep(seconds)
        rows = services.sandbox.timeline()
        # The rest of this run's work must not spill into the next one's timeline.
        p.client.delete(f"bench-{PREFIX_LIMITED}", f"{PREFIX_LIMITED}:ready")
    return rows


def shared_limit(services: Services, seconds: float) -> list[Row]:
    rows = _limited_run(services, sandbox_limit=60, seconds=seconds, prefix="shared")
    start = float(rows[0]["at"])
    window = [r for r in rows if start + 1 <= float(r["at"]) <= start + seconds - 0.5]
    achieved = sum(1 for r in window if r["http_status"] == 200) / (seconds - 1.5)
    too_many = sum(1 for r in rows if r["http_status"] == 429)
    return [
        Row("shared limit (3 procs, 50/s; sandbox 60/s)", "achieved rate", achieved, "req/s", 50.0,
            "95-100 % of 50/s", 47.5 <= achieved <= 50.5),
        Row("shared limit (3 procs, 50/s; sandbox 60/s)", "429 answers", too_many, "", None, "0",
            too_many == 0),
    ]  # fmt: skip


def adaptive_limit(services: Services, seconds: float) -> list[Row]:
    rows = _limited_run(services, sandbox_limit=30, seconds=seconds, prefix="adaptive")
    start = float(rows[0]["at"])
    settle = min(5.0, seconds / 3)
    late = [r for r in rows if start + settle <= float(r["at"]) <= start + seconds - 0.5]
    length = seconds - settle - 0.5
    achieved = sum(1 for r in late if r["http_status"] == 200) / length
    share = sum(1 for r in late if r["http_status"] == 429) / max(1, len(late))
    return [
        Row("adaptive limit (50/s; sandbox 30/s)", "achieved rate", achieved, "req/s", 30.0,
            ">= 80 % of 30/s", achieved >= 24),
        Row("adaptive limit (50/s; sandbox 30/s)", f"429 share after {settle:g} s", share * 100,
            "%", None, "<= 5 %", share <= 0.05),
    ]  # fmt: skip


PLATFORM_KEYS = {"us": "sk_test_benchPlatformUS01", "eu": "sk_test_benchPlatformEU02"}


def _platforms_run(
    services: Services, env: dict[str, str], seconds: float, tag: str, *, eu_limited: bool
) -> dict[str, float]:
    """Both platforms given more than ``seconds`` of work at once (eu's each meeting three
    rate limiters' 429s when ``eu_limited``); each platform's achieved rate, from the
    sandbox's timeline, over the run minus its first second and last half second."""
    from redis import Redis

    with Redis.from_url(services.redis_url) as admin:
        admin.delete(*(keys.rate_limiter("plat", name) for name in PLATFORM_KEYS))
    services.sandbox.reset(latency_ms=50)
    n = int(20 * seconds * 1.5)
    if eu_limited:
        outcomes = ["rate_limited"] * 3
        for i in range(n):
            services.sandbox.post(
                "/_sandbox/script", {"identifier": f"{tag}_eu_{i}", "outcomes": outcomes}
            )
    with producer(services, **{k: v for k, v in env.items() if k.startswith("ADJUSTMENTS_")}) as p:
        items = [
            {"event_name": "ev", "identifier": f"{tag}_{name}_{i}", "platform": name}
            for i in range(n)
            for name in PLATFORM_KEYS
        ]
        p.cancel_many(items)
        time.sleep(seconds)
        rows = services.sandbox.timeline()
        # The rest of this run's work must not spill into the next one's timeline.
        p.client.delete("bench-plat", *(keys.ready("plat", name) for name in PLATFORM_KEYS))
    start = float(rows[0]["at"])
    window = [r for r in rows if start + 1 <= float(r["at"]) <= start + seconds - 0.5]
    return {
        name: sum(1 for r in window if r["http_status"] == 200 and r["key_tail"] == key[-6:])
        / (seconds - 1.5)
        for name, key in PLATFORM_KEYS.items()
    }


def platforms(services: Services, seconds: float) -> list[Row]:
    """Two platforms (Stripe accounts) at 20/s each, one worker: together, and with eu's
    every request meeting rate limiters' 429s (its rate cut) while us drains."""
    env = services.env(
        ADJUSTMENTS_QUEUE="bench-plat",
        ADJUSTMENTS_KEY_PREFIX="plat",
        ADJUSTMENTS_PLATFORMS=",".join(PLATFORM_KEYS),
        ADJUSTMENTS_RATE_LIMIT="20",
        **{f"STRIPE_API_KEY_{name.upper()}": key for name, key in PLATFORM_KEYS.items()},
    )
    services.worker(env, name="plat-worker")
    clean = _platforms_run(services, env, seconds, "clean", eu_limited=False)
    limited = _platforms_run(services, env, seconds, "limited", eu_limited=True)
    services.stop_all()
    name = "two platforms (20/s each; one worker)"
    together = clean["us"] + clean["eu"]
    return [
        Row(name, "together", together, "req/s", 40.0, ">= 95 % of 40/s", together >= 38),
        Row(name, "us while eu meets 429s", limited["us"], "req/s", clean["us"],
            ">= 95 % of 20/s (baseline: no 429s)", limited["us"] >= 19),
        Row(name, "eu meeting 429s (cut)", limited["eu"], "req/s", clean["eu"],
            "- (baseline: no 429s)", None),
    ]  # fmt: skip


def _pace(p: Producer, rate: float, seconds: float, prefix: str) -> list[float]:
    """cancel() at ``rate`` per second for ``seconds``; returns each call's latency (ms)."""
    samples: list[float] = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        due = start + i / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter()
        p.cancel("ev", f"{prefix}_{i}")
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def backlog(services: Services, queued: int, seconds: float, limit: float = 20.0) -> list[Row]:
    """One worker (default concurrency) at a shared limit of ``limit``/s, Stripe at 50 ms:
    first with no backlog (requests arrive a little below the limit), then with ``queued``
    records waiting. The costs must not grow with the backlog."""
    from redis import Redis

    name = f"backlog {queued:,} at {limit:g}/s"
    queue, prefix = "bench-backlog", "backlog"
    env = services.env(
        ADJUSTMENTS_QUEUE=queue, ADJUSTMENTS_KEY_PREFIX=prefix, ADJUSTMENTS_RATE_LIMIT=f"{limit}"
    )
    worker = services.worker(env, name="backlog-worker")
    services.sandbox.reset(latency_ms=50)
    admin = Redis.from_url(services.redis_url)
    rows: list[Row] = []
    with (
        producer(services, ADJUSTMENTS_QUEUE=queue, ADJUSTMENTS_KEY_PREFIX=prefix) as p,
        producer(
            services, ADJUSTMENTS_QUEUE="bench-probe", ADJUSTMENTS_KEY_PREFIX="probe"
        ) as probe,
    ):
        # No backlog: arrivals at 90 % of the limit; probe latency while idle.
        idle_latency = _pace(probe, 50, min(seconds, 10), "idle")
        cpu0, done0 = cpu_s(worker.pid), p.counts()["pending"]
        steady = len(_pace(p, limit * 0.9, seconds, "steady"))
        wait_until(lambda: p.counts()["pending"] - done0 >= steady, 60, "the steady arrivals")
        steady_done = p.counts()["pending"] - done0
        steady_cpu_ms = (cpu_s(worker.pid) - cpu0) * 1000 / max(1, steady_done)
        # The backlog.
        memory0 = int(admin.info("memory")["used_memory"])
        for start in range(0, queued, 50_000):
            stop = min(queued, start + 50_000)
            p.cancel_many(
                [{"event_name": "ev", "identifier": f"bl_{i}"} for i in range(start, stop)]
            )
        bytes_per_record = (int(admin.info("memory")["used_memory"]) - memory0) / queued
        services.sandbox.reset(latency_ms=50)  # the drain's timeline only
        cpu0, done0 = cpu_s(worker.pid), p.counts()["pending"]
        rss: list[float] = []
        drain_latency: list[float] = []
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            rss.append(rss_mb(worker.pid))
            drain_latency += _pace(probe, 50, 1.0, f"drain{len(rss)}")
        drained = p.counts()["pending"] - done0
        backlog_cpu_ms = (cpu_s(worker.pid) - cpu0) * 1000 / max(1, drained)
        timeline = services.sandbox.timeline()
        stats = services.sandbox.get("/_sandbox/stats")
        t0 = time.perf_counter()
        report = p.operations.reconcile(grace_s=60)
        reconcile_ms = (time.perf_counter() - t0) * 1000
    services.stop_all()
    admin.flushdb()  # the rest of the backlog: later scenarios start from an empty server
    admin.close()
    ok = [float(r["at"]) for r in timeline if r["http_status"] == 200]
    window = [t for t in ok if ok[0] + 2 <= t <= ok[0] + seconds - 1] if ok else []
    achieved = len(window) / max(1e-9, seconds - 3)
    too_many = sum(1 for r in timeline if r["http_status"] == 429)
    twice = max(stats["executions"].values(), default=0)
    i50, i99 = percentile(idle_latency, 0.5), percentile(idle_latency, 0.99)
    d50, d99 = percentile(drain_latency, 0.5), percentile(drain_latency, 0.99)
    rows += [
        Row(name, "worker CPU per cancellation", backlog_cpu_ms, "ms", steady_cpu_ms,
            "<= 1.5x no backlog", backlog_cpu_ms <= 1.5 * steady_cpu_ms),
        Row(name, "worker RSS, max over the drain", max(rss), "MB", rss[0],
            "<= 200 MB, flat", max(rss) <= 200 and max(rss) - rss[0] <= 20),
        Row(name, "drain rate", achieved, "req/s", limit, "95-100 % of the limit",
            0.95 * limit <= achieved <= 1.02 * limit),
        Row(name, "429 answers", too_many, "", None, "0", too_many == 0),
        Row(name, "most executions of one identifier", twice, "", None, "1", twice <= 1),
        Row(name, "Redis memory per queued record", bytes_per_record, "bytes", None, "< 1 KB",
            bytes_per_record < 1024),
        Row(name, "cancel() p50 while draining", d50, "ms", i50, "<= 1.5x idle", d50 <= 1.5 * i50),
        Row(name, "cancel() p99 while draining", d99, "ms", i99, "<= 1.5x idle", d99 <= 1.5 * i99),
        Row(name, "reconciliation run", reconcile_ms, "ms", None, "reported (no full scan)",
            None if report.ran else False),
    ]  # fmt: skip
    return rows


def _order_run(
    services: Services, order: str, fresh: int, urgent: int, left_s: float, rate: float
) -> dict[str, float]:
    """``fresh`` cancellations with 24 h left queued first, then ``urgent`` ones whose window
    closes in ``left_s``, one worker at a shared ``rate``, in ``order``: what expired, the
    drain rate, the worker's CPU per cancellation and cancel()'s latency with the backlog."""
    from datetime import timedelta

    prefix = f"order-{order}"
    env = services.env(
        ADJUSTMENTS_QUEUE=f"bench-{prefix}",
        ADJUSTMENTS_KEY_PREFIX=prefix,
        ADJUSTMENTS_RATE_LIMIT=f"{rate}",
        ADJUSTMENTS_ORDER=order,
    )
    worker = services.worker(env, name=f"{prefix}-worker")
    services.sandbox.reset(latency_ms=20)
    with producer(services, **{k: v for k, v in env.items() if k.startswith("ADJUSTMENTS_")}) as p:
        cpu0 = cpu_s(worker.pid)
        p.cancel_many([{"event_name": "ev", "identifier": f"{prefix}_f{i}"} for i in range(fresh)])
        received = datetime.now(UTC) - timedelta(hours=24) + timedelta(seconds=left_s)
        latencies = []
        urgent_ids = []
        for i in range(urgent):
            t0 = time.perf_counter()
            urgent_ids.append(
                p.cancel("ev", f"{prefix}_u{i}", event_received_at=received.isoformat()).id
            )
            latencies.append((time.perf_counter() - t0) * 1000)

        def drained() -> bool:
            counts = p.counts()
            return counts["queued"] + counts["processing"] + counts["retrying"] == 0

        wait_until(drained, fresh / rate + left_s + 120, f"the {order} drain")
        counts = p.counts()
        sent = sorted(
            float(r["at"]) for r in services.sandbox.timeline() if r["http_status"] == 200
        )
        cpu_ms = (cpu_s(worker.pid) - cpu0) * 1000 / max(1, counts["pending"])
        urgent_expired = sum(1 for i in urgent_ids if p.get(i).status is Status.EXPIRED)
    services.stop_all()
    return {
        "urgent_expired": float(urgent_expired),
        "fresh_expired": float(counts["expired"] - urgent_expired),
        "drain_per_s": (len(sent) - 1) / max(1e-9, sent[-1] - sent[0]) if len(sent) > 1 else 0.0,
        "cpu_ms": cpu_ms,
        "cancel_p50_ms": percentile(latencies, 0.5),
        "twice": float(
            max(services.sandbox.get("/_sandbox/stats")["executions"].values(), default=0)
        ),
    }


def deadline_order(services: Services, quick: bool) -> list[Row]:
    """A backlog whose arrival order is the opposite of its deadlines, at a fixed rate:
    deadline-first against first-in-first-out (its baseline, in the same run)."""
    fresh, urgent, left_s, rate = (300, 30, 2.0, 100.0) if quick else (3000, 600, 60.0, 40.0)
    fifo = _order_run(services, "fifo", fresh, urgent, left_s, rate)
    edf = _order_run(services, "deadline", fresh, urgent, left_s, rate)
    name = f"deadline first ({fresh:,} fresh, then {urgent} closing in {left_s:g} s; {rate:g}/s)"
    return [
        Row(name, "urgent ones expired", edf["urgent_expired"], "", fifo["urgent_expired"],
            "<= 1 % (baseline: FIFO)", edf["urgent_expired"] <= 0.01 * urgent),
        Row(name, "fresh ones expired", edf["fresh_expired"], "", fifo["fresh_expired"],
            "0 (every fresh one accepted)", edf["fresh_expired"] == 0),
        Row(name, "drain rate", edf["drain_per_s"], "req/s", fifo["drain_per_s"],
            f">= 95 % of {rate:g}/s (baseline: FIFO)", edf["drain_per_s"] >= 0.95 * rate),
        Row(name, "worker CPU per cancellation", edf["cpu_ms"], "ms", fifo["cpu_ms"],
            "<= 1.2x FIFO", edf["cpu_ms"] <= 1.2 * fifo["cpu_ms"]),
        Row(name, "cancel() p50 with the backlog", edf["cancel_p50_ms"], "ms",
            fifo["cancel_p50_ms"], "<= 1.5x FIFO",
            edf["cancel_p50_ms"] <= 1.5 * fifo["cancel_p50_ms"]),
        Row(name, "most executions of one identifier", max(edf["twice"], fifo["twice"]), "", None,
            "1", max(edf["twice"], fifo["twice"]) <= 1),
    ]  # fmt: skip


# --- the run -----------------------------------------------------------------------------------
def run(quick: bool, scale: bool = False) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="adjustments-bench-"))
    services = Services(workdir)
    rows: list[Row] = []
    try:
        if scale:  # `make bench-scale`: the backlog scenario alone, a million records deep
            rows += backlog(services, 1_000_000, 60)
            rows += finance_export(services, 1_000_000)
            return _report(rows, quick)
        rows += single_enqueue(services, 300 if quick else 3000)
        rows += http_enqueue(services, 100 if quick else 2000, 1 if quick else 10)
        rows += durability_cost(services, 30 if quick else 400)
        rows += bulk_enqueue(services, 2000 if quick else 30_000)
        rows += finance_export(services, 2000 if quick else 200_000)
        e2e, measured = end_to_end(services, 150 if quick else 4000, 10 if quick else 300)
        rows += e2e
        rows += worker_cpu(services, measured["cpu_ms"], 100 if quick else 1000)
        rows.append(Row("memory", "worker RSS, default concurrency", measured["rss_mb"], "MB", None,
                        "<= 200 MB", measured["rss_mb"] <= 200))  # fmt: skip
        if not quick:
            for concurrency in (16, 32):
                rows += end_to_end(services, 2000, 0, concurrency, label=f"-c{concurrency}")[0]
        _limited_workers(services)  # shared by the next two scenarios
        rows += shared_limit(services, 2 if quick else 30)
        rows += adaptive_limit(services, 3 if quick else 30)
        services.stop_all()
        rows += platforms(services, 4 if quick else 20)
        rows += deadline_order(services, quick)
        rows += backlog(services, 1_000 if quick else 100_000, 2 if quick else 30)
    finally:
        services.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return _report(rows, quick)


def _report(rows: list[Row], quick: bool) -> dict[str, Any]:
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "rows": [asdict(r) for r in rows],
    }


def print_table(report: dict[str, Any]) -> None:
    header = ["scenario", "figure", "value", "baseline", "target", "met"]
    rows = [Row(**r).cells() for r in report["rows"]]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if report["quick"]:
        print("(--quick: brief runs that keep the script working; figures are not the targets')")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every scenario, briefly")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument(
        "--scale", action="store_true", help="only the backlog scenario, 1,000,000 records"
    )
    args = parser.parse_args(argv)
    report = run(args.quick, args.scale)
    print_table(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
