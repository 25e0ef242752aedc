"""`make chaos`: a whole deployment on loopback under a steady mix of traffic while a seeded
nemesis injects faults in combination; then a checker over the whole history.

    CHAOS_MINUTES=5 CHAOS_SEED=1234 make chaos      (python -m benchmarks.chaos --help)

The deployment (benchmarks/chaos_cluster.py): a Redis master and replica each behind a TCP
proxy, three sentinels, two workers, beat, ``adjustments serve`` and the sandbox, two
platforms (Stripe accounts) with their own keys and budgets, compensation of missed windows.

The traffic: ``cancel()`` (duplicates, the same identifier on both platforms, records whose
window closes within a minute, original events for compensation), batches over HTTP, bulk
imports, replays (forced ones too) and compensations after the fact.

The nemesis: each kind of fault on its own seeded schedule, so faults overlap: kill -9 and
SIGSTOP/SIGCONT of a worker, beat or the server; kill -9 of the Redis master (a failover)
and clean restarts; the proxy stalling, dropping or resetting connections; the sandbox
answering 500s, marked and unmarked 429s, timing out after executing, dropping connections;
a worker's clock ahead or behind by seconds. The seed is printed: the same seed replays the
same schedule of faults and traffic (the machine's timing still varies).

After the run every fault is healed, the deployment settles, and the checker
(benchmarks/chaos_checker.py) proves the rules over the history or names the records that
break one. Exit 0 when every rule holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from adjustments.config import Settings
from adjustments.embedded import free_port
from adjustments.errors import AcceptanceUnknown, StoreError
from adjustments.listing import Query
from adjustments.models import Status
from adjustments.producer import Producer
from adjustments.sandbox import SandboxConfig, SandboxServer
from benchmarks.chaos_checker import Acked, Evidence, Verdict, check, table
from benchmarks.chaos_cluster import (
    MASTER_NAME,
    RedisNode,
    Sentinels,
    Service,
    cli,
)
from benchmarks.harness import ROOT
from benchmarks.harness import wait_until as wait_for

KEYS = {"us": "sk_test_chaosPlatformUS01", "eu": "sk_test_chaosPlatformEU02"}
TOKEN = "op_chaos0123456789abcdef"
METER = "chaos_usage"
RESULTS = ROOT / "benchmarks" / "results" / "chaos.json"
DAY = timedelta(hours=24)


class History:
    """Every operation's invocation and result, and every fault, in order (JSON lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._out = open(path, "w")  # noqa: SIM115 - closed in close()
        self.acked: list[Acked] = []
        self.ops: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.forced: set[str] = set()  # records a forced replay put back

    def write(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._out.write(json.dumps({"t": round(time.time(), 3), **entry}) + "\n")

    def op(self, name: str, outcome: str, acked: list[Acked], **detail: Any) -> None:
        with self._lock:
            self.acked += acked
            self.ops[f"{name} {outcome}"] += 1
        self.write({"op": name, "outcome": outcome, "ids": [a.record_id for a in acked], **detail})

    def fault(self, kind: str, **detail: Any) -> None:
        with self._lock:
            self.faults[kind] += 1
        self.write({"fault": kind, **detail})

    def close(self) -> None:
        self._out.close()


class Deployment:
    def __init__(self, workdir: Path, seed: int) -> None:
        self.workdir = workdir
        self.sandbox = SandboxServer(SandboxConfig(latency_ms=20, slow_s=3.0, seed=seed))
        self.sandbox.__enter__()
        self.sandbox.logic.meters.define({"event_name": METER})
        self.redis = [RedisNode(workdir, "a")]
        self.redis[0].start()
        self.redis.append(RedisNode(workdir, "b", replica_of=self.redis[0].proxy.port))
        self.redis[1].start()
        wait_for(self._synced, 30, "the replica to sync")
        self.sentinels = Sentinels(workdir, self.redis[0].proxy.port)
        wait_for(self._watched, 30, "the sentinels to see the replica")
        self.server_port = free_port()
        self.env = self._env()
        self.workers = [
            Service(
                f"worker{i}",
                cli("worker", "--concurrency", "8"),
                self.env,
                workdir / f"worker{i}.log",
            )
            for i in (1, 2)
        ]
        self.beat = Service("beat", cli("beat"), self.env, workdir / "beat.log")
        self.server = Service(
            "server",
            cli("serve", "--port", str(self.server_port)),
            self.env,
            workdir / "server.log",
        )
        for service in (*self.workers, self.beat, self.server):
            service.start()
        wait_for(self._workers_ready, 90, "the workers")
        wait_for(self._server_up, 60, "the server")
        self.producer = Producer(self.env["REDIS_URL"], settings=Settings.from_env(self.env))

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ADJUSTMENTS_", "STRIPE_"))}
        env.update(
            REDIS_URL=self.sentinels.url,
            ADJUSTMENTS_SENTINEL_MASTER=MASTER_NAME,
            ADJUSTMENTS_PLATFORMS=",".join(KEYS),
            STRIPE_API_BASE=self.sandbox.url,
            ADJUSTMENTS_DATA_DIR=str(self.workdir / "data"),
            ADJUSTMENTS_KEY_PREFIX="chaos",
            ADJUSTMENTS_QUEUE="chaos",
            # A request is accepted once it is on the replica too: a failover loses nothing
            # a producer was told it accepted.
            ADJUSTMENTS_DURABILITY="replicas:1",
            ADJUSTMENTS_STRIPE_TIMEOUT_S="2",
            ADJUSTMENTS_LEASE_S="8",
            ADJUSTMENTS_BACKOFF_BASE_S="0.1",
            ADJUSTMENTS_BACKOFF_CAP_S="2",
            ADJUSTMENTS_MAX_ATTEMPTS="10",
            ADJUSTMENTS_RATE_LIMIT="25",
            ADJUSTMENTS_RECONCILE_INTERVAL_S="5",
            ADJUSTMENTS_RECONCILE_GRACE_S="10",
            ADJUSTMENTS_HEARTBEAT_S="1",
            ADJUSTMENTS_COMPENSATE="expired",
            ADJUSTMENTS_API_TOKENS=f"chaos=operate:{TOKEN}",
            PYTHONPATH=str(ROOT),
        )
        env.update({f"STRIPE_API_KEY_{name.upper()}": key for name, key in KEYS.items()})
        return env

    def _synced(self) -> bool:
        try:
            with self.redis[1].client() as c:
                return bool(c.info("replication").get("master_link_status") == "up")
        except redis.RedisError:
            return False

    def _watched(self) -> bool:
        for port in self.sentinels.ports:
            try:
                with redis.Redis(port=port, decode_responses=True, socket_timeout=1) as c:
                    if not c.execute_command("SENTINEL", "REPLICAS", MASTER_NAME):
                        return False
            except redis.RedisError:
                return False
        return True

    def _workers_ready(self) -> bool:
        return all(" ready." in w.log.read_text(errors="replace") for w in self.workers)

    def _server_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.server_port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    def master(self) -> RedisNode | None:
        port = self.sentinels.master_port()
        return next((n for n in self.redis if n.proxy.port == port), None)

    def close(self) -> None:
        self.producer.close()
        for service in (*self.workers, self.beat, self.server):
            service.close()
        self.sentinels.stop()
        for node in self.redis:
            node.stop()
        self.sandbox.__exit__(None, None, None)


# --- traffic -----------------------------------------------------------------------------------
class Traffic:
    """Producers at a steady pace, each a thread of its own, until ``stop`` is set."""

    def __init__(self, d: Deployment, history: History, seed: int) -> None:
        self.d = d
        self.history = history
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.n = 0
        # (platform, identifier, api) sent so far: a duplicate keeps its API (a v1 and a v2
        # cancellation of one event are two requests, and Stripe would execute both)
        self.known: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def item(self) -> dict[str, Any]:
        """One cancellation: new, a duplicate, or a known identifier on the other platform;
        a fifth close to their deadline; most with their original event."""
        rng = self.rng
        with self.lock:
            roll = rng.random()
            if roll < 0.1 and self.known:
                platform, identifier, api = rng.choice(self.known)
            elif roll < 0.15 and self.known:
                other, identifier, api = rng.choice(self.known)
                platform = "eu" if other == "us" else "us"
            else:
                self.n += 1
                platform, identifier = rng.choice(list(KEYS)), f"c{self.n}"
                api = "v1" if self.n % 2 else "v2"
            self.known.append((platform, identifier, api))
            near = rng.random() < 0.2
            left_s = rng.uniform(4, 45) if near else rng.uniform(600, 3600)
            compensable = rng.random() < 0.7
        received = datetime.now(UTC) - DAY + timedelta(seconds=left_s)
        item: dict[str, Any] = {
            "event_name": METER,
            "identifier": identifier,
            "platform": platform,
            "api": api,
            "event_received_at": received.isoformat(),
        }
        if compensable:
            item["original_event"] = {
                "payload": {"stripe_customer_id": f"cus_{identifier}", "value": "3"},
                "timestamp": int(received.timestamp()),
            }
        return item

    def run(self, name: str, period_s: float, body: Callable[[], None]) -> threading.Thread:
        def loop() -> None:
            while not self.stop.wait(self.rng.uniform(0.5, 1.5) * period_s):
                body()

        thread = threading.Thread(target=loop, name=f"traffic-{name}", daemon=True)
        thread.start()
        return thread

    def start(self) -> list[threading.Thread]:
        return [
            self.run("cancel", 0.12, self.cancel),
            self.run("batch", 2.0, self.batch),
            self.run("import", 10.0, self.bulk),
            self.run("replay", 15.0, self.replay),
            self.run("compensate", 20.0, self.compensate),
        ]

    def cancel(self) -> None:
        item = self.item()
        args = {k: v for k, v in item.items() if k not in ("event_name", "identifier")}
        try:
            record = self.d.producer.cancel(item["event_name"], item["identifier"], **args)
        except AcceptanceUnknown as exc:
            self.history.op("cancel", "unknown", [], error=type(exc).__name__)
            return
        except StoreError as exc:
            self.history.op("cancel", "refused", [], error=type(exc).__name__)
            return
        acked = Acked(record.id, item["platform"], item["identifier"])
        self.history.op(
            "cancel", "ok", [acked], platform=item["platform"], identifier=item["identifier"]
        )

    def batch(self) -> None:
        items = [self.item() for _ in range(10)]
        body = json.dumps({"items": items}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.d.server_port}/api/v1/cancellations/batch",
            data=body,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http
                answer = json.loads(response.read())
        except (OSError, ValueError) as exc:
            self.history.op("batch", "unknown", [], error=type(exc).__name__)
            return
        acked = [
            Acked(r["id"], items[r["index"]]["platform"], items[r["index"]]["identifier"])
            for r in answer.get("results", [])
            if r.get("id")
        ]
        self.history.op("batch", "ok", acked)

    def bulk(self) -> None:
        items = [self.item() for _ in range(50)]
        try:
            result = self.d.producer.cancel_many(items)
        except StoreError as exc:
            self.history.op("import", "unknown", [], error=type(exc).__name__)
            return
        acked = [
            Acked(rid, item["platform"], item["identifier"])
            for rid, item in zip(result.ids, items, strict=True)
            if rid
        ]
        self.history.op("import", "ok", acked, invalid=len(result.invalid))

    def replay(self) -> None:
        force = self.rng.random() < 0.2
        status = Status.EXPIRED if force else Status.FAILED
        try:
            report = self.d.producer.operations.replay(status=status, force=force, limit=20)
        except StoreError as exc:
            self.history.op("replay", "unknown", [], error=type(exc).__name__)
            return
        if force:
            self.history.forced.update(report.replayed)
        self.history.op("replay", "ok", [], forced=force, replayed=report.replayed)

    def compensate(self) -> None:
        try:
            report = self.d.producer.operations.compensate(dry_run=False, limit=50)
        except (StoreError, OSError) as exc:
            self.history.op("compensate", "unknown", [], error=type(exc).__name__)
            return
        self.history.op("compensate", "ok", [], begun=len(report.begun))


# --- the nemesis --------------------------------------------------------------------------------
class Nemesis:
    """Each kind of fault on a schedule of its own (seeded), so that they overlap."""

    SANDBOX = {
        "sandbox_500": {"error_500": 0.3},
        "sandbox_429_marked": {"rps_limit": 4.0},
        "sandbox_429_unmarked": {"error_429": 0.3},
        "sandbox_timeout": {"slow": 0.25},
        "sandbox_drop": {"drop": 0.25},
    }

    def __init__(self, d: Deployment, history: History, seed: int, period_s: float) -> None:
        self.d = d
        self.history = history
        self.seed = seed
        self.period_s = period_s
        self.stop = threading.Event()
        self.redis_lock = threading.Lock()  # one Redis fault at a time: the pair must survive
        self.skew_lock = threading.Lock()

    def kinds(self) -> dict[str, Callable[[random.Random], None]]:
        out: dict[str, Callable[[random.Random], None]] = {
            "worker_kill": lambda r: self.kill(r.choice(self.d.workers), r),
            "worker_stop": lambda r: self.pause(r.choice(self.d.workers), r),
            "beat_kill": lambda r: self.kill(self.d.beat, r),
            "beat_stop": lambda r: self.pause(self.d.beat, r),
            "server_kill": lambda r: self.kill(self.d.server, r),
            "server_stop": lambda r: self.pause(self.d.server, r),
            "redis_master_kill": self.kill_master,
            "redis_restart": self.restart_redis,
            "proxy_stall": lambda r: r.choice(self.d.redis).proxy.stall(r.uniform(0.3, 2.5)),
            "proxy_drop": lambda r: self.cut(r, reset=False),
            "proxy_reset": lambda r: self.cut(r, reset=True),
            "clock_skew": self.skew,
        }
        for name, changes in self.SANDBOX.items():
            out[name] = self.sandbox_fault(changes)
        return out

    def start(self) -> list[threading.Thread]:
        threads = []
        for i, (name, fault) in enumerate(sorted(self.kinds().items())):
            rng = random.Random(self.seed * 1000 + i)
            threads.append(
                threading.Thread(
                    target=self.lane, args=(name, fault, rng), name=f"nemesis-{name}", daemon=True
                )
            )
            threads[-1].start()
        return threads

    def lane(self, name: str, fault: Callable[[random.Random], None], rng: random.Random) -> None:
        """Start ``fault`` every ``period_s`` on average (0.5-1.5x, seeded), whatever it lasts:
        a fault that outlasts the interval is followed at once by the next."""
        next_at = time.monotonic() + rng.uniform(0, self.period_s)
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += rng.uniform(0.5, 1.5) * self.period_s
            self.history.fault(name)
            try:
                fault(rng)
            except Exception as exc:  # a fault that could not be injected is reported, not fatal
                self.history.write({"fault_error": name, "error": repr(exc)})

    def cut(self, rng: random.Random, *, reset: bool) -> None:
        rng.choice(self.d.redis).proxy.cut(reset=reset)

    def kill(self, service: Service, rng: random.Random) -> None:
        service.kill()
        time.sleep(rng.uniform(0.5, 3))
        service.start()

    def pause(self, service: Service, rng: random.Random) -> None:
        service.pause()
        time.sleep(rng.uniform(0.5, 4))
        service.resume()

    def sandbox_fault(self, changes: dict[str, float]) -> Callable[[random.Random], None]:
        def inject(rng: random.Random) -> None:
            self.d.sandbox.logic.configure(changes)
            time.sleep(rng.uniform(1, 4))
            self.d.sandbox.logic.configure(dict.fromkeys(changes, 0.0))

        return inject

    def kill_master(self, rng: random.Random) -> None:
        with self.redis_lock:
            master = self.d.master()
            if master is None:
                return
            master.kill()
            wait_for(lambda: self.d.master() not in (None, master), 30, "a failover")
            time.sleep(rng.uniform(0.5, 2))
            self.restart(master)

    def restart_redis(self, rng: random.Random) -> None:
        with self.redis_lock:
            node = rng.choice(self.d.redis)
            node.shutdown()
            time.sleep(rng.uniform(0.2, 1.5))
            self.restart(node)

    def restart(self, node: RedisNode) -> None:
        """Start ``node`` again as what the sentinels say it is: the master's replica, or
        the master (as a node whose sentinel-rewritten config names its master would)."""
        master = self.d.master()
        node.replica_of = master.proxy.port if master is not None and master is not node else None
        node.start()

    def skew(self, rng: random.Random) -> None:
        """The second worker, restarted (warm) with its clock off by 2-5 s for a while."""
        worker = self.d.workers[1]
        with self.skew_lock:
            skew = rng.choice([-1, 1]) * rng.uniform(2, 5)
            worker.terminate()
            worker.env = {**worker.env, "CHAOS_SKEW_S": f"{skew:.2f}"}
            worker.start(argv=[worker.argv[0], "-m", "benchmarks.chaos_skew", *worker.argv[3:]])
            time.sleep(rng.uniform(3, 10))
            worker.terminate()
            worker.env = {k: v for k, v in worker.env.items() if k != "CHAOS_SKEW_S"}
            worker.start()

    def heal(self) -> None:
        """Everything back up, nothing stopped, the sandbox well."""
        for service in (*self.d.workers, self.d.beat, self.d.server):
            service.resume()
            if not service.alive():
                service.start()
        for node in self.d.redis:
            if not node.alive():
                self.restart(node)
        self.d.sandbox.logic.configure(
            {k: 0.0 for changes in self.SANDBOX.values() for k in changes}
        )


# --- evidence and the run ----------------------------------------------------------------------
def settle(d: Deployment, timeout_s: float) -> bool:
    """Wait until no record is live (two looks a few seconds apart)."""
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while time.monotonic() < deadline:
        try:
            counts = d.producer.counts()
        except (StoreError, redis.RedisError):
            time.sleep(1)
            continue
        live = counts["queued"] + counts["processing"] + counts["retrying"]
        quiet = quiet + 1 if live == 0 else 0
        if quiet >= 3:
            return True
        time.sleep(2)
    return False


def gather(d: Deployment, history: History) -> Evidence:
    records: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        page = d.producer.page(Query(limit=500), cursor)
        for r in page.records:
            full = d.producer.get(r.id, with_history=True)
            records[r.id] = {
                "status": full.status.value,
                "platform": full.platform or "",
                "identifier": full.identifier,
                "expires_at_ms": d.producer.client.hget(f"chaos:rec:{r.id}", "expires_at_ms"),
                "replays": full.replays,
                "key_outcome": full.key_outcome,
                "compensation_identifier": d.producer.client.hget(
                    f"chaos:rec:{r.id}", "compensation_identifier"
                ),
                "history": list(full.history),
            }
        cursor = page.next_cursor
        if cursor is None:
            break
    offset = time.time() - time.monotonic()
    platform_of = {key[-6:]: name for name, key in KEYS.items()}
    executions: dict[tuple[str, str], list[float]] = {}
    with d.sandbox.logic._lock:
        requests = {i: list(rows) for i, rows in d.sandbox.logic.requests.items()}
        events = list(d.sandbox.logic.meters.events)
    for identifier, rows in requests.items():
        for row in rows:
            if row["http_status"] == 200 and row["outcome"] in ("ok", "timeout"):
                key = (platform_of.get(row["key_tail"], row["key_tail"]), identifier)
                executions.setdefault(key, []).append(float(row["at"]) + offset)
    text = subprocess.run(
        cli("metrics", "--once"), env=d.env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    metrics = {
        m.group(1): int(float(m.group(2)))
        for m in re.finditer(r'^adjustments_records\{status="(\w+)"\} (\S+)$', text, re.M)
    }
    return Evidence(
        acked=history.acked,
        records=records,
        executions=executions,
        compensation_events=Counter(e.identifier for e in events),
        metrics_records=metrics,
        forced=history.forced,
    )


def run(minutes: float, seed: int, period_s: float, keep: bool) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="adjustments-chaos-"))
    print(
        f"chaos: seed {seed}, {minutes:g} min, a fault of each kind every ~{period_s:g} s "
        f"(again: CHAOS_SEED={seed} CHAOS_MINUTES={minutes:g} make chaos)",
        flush=True,
    )
    history = History(workdir / "history.jsonl")
    d = Deployment(workdir, seed)
    started = time.monotonic()
    try:
        traffic = Traffic(d, history, seed)
        nemesis = Nemesis(d, history, seed, period_s)
        threads = traffic.start() + nemesis.start()
        time.sleep(minutes * 60)
        nemesis.stop.set()
        traffic.stop.set()
        for thread in threads:
            thread.join()  # every fault ends (a failover wait is bounded): nothing restarts later
        nemesis.heal()
        settled = settle(d, 240)
        evidence = gather(d, history)
        verdicts = check(evidence)
        if not settled:
            verdicts.append(Verdict("the deployment settled after the faults", 1, ["timed out"]))
    finally:
        history.close()
        d.close()
    ok = all(v.ok for v in verdicts)
    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "minutes": minutes,
        "wall_s": round(time.monotonic() - started),
        "operations": dict(sorted(history.ops.items())),
        "acknowledged": len(history.acked),
        "records": len(evidence.records),
        "faults": dict(sorted(history.faults.items())),
        "rules": [
            {"rule": v.rule, "checked": v.checked, "violations": v.violations[:20]}
            for v in verdicts
        ],
        "ok": ok,
    }
    print("\noperations:")
    for name, count in sorted(history.ops.items()):
        print(f"  {name:<24} {count}")
    print(f"\nfaults ({sum(history.faults.values())}):")
    for name, count in sorted(history.faults.items()):
        print(f"  {name:<24} {count}")
    print(f"\n{table(verdicts)}")
    for v in verdicts:
        for violation in v.violations[:20]:
            print(f"VIOLATION ({v.rule}): {violation}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\n{'passed' if ok else 'FAILED'} (seed {seed}); report: {RESULTS}; history: "
        f"{workdir / 'history.jsonl'}"
    )
    if ok and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes", type=float, default=float(os.environ.get("CHAOS_MINUTES") or 5)
    )
    parser.add_argument("--seed", type=int, default=int(os.environ.get("CHAOS_SEED") or 0) or None)
    parser.add_argument(
        "--period",
        type=float,
        default=float(os.environ.get("CHAOS_PERIOD_S") or 15),
        help="seconds between two faults of one kind, on average",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    return run(args.minutes, seed, args.period, args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
