"""`make chaos`'s deployment on loopback: a Redis master and replica, each behind a TCP proxy
the nemesis can stall, drop or reset, three sentinels, two workers, beat, `adjustments serve`
and the sandbox. Processes are real and are killed, stopped and restarted for real."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from adjustments.embedded import free_port, redis_binary
from benchmarks.harness import ROOT
from benchmarks.harness import wait_until as wait_for

MASTER_NAME = "chaosmaster"


class Proxy:
    """A TCP proxy in front of one port: passes bytes both ways until told to ``stall``
    (hold every byte for a while), ``drop`` (close every connection) or ``reset`` (close
    every connection with a TCP reset)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stalled_until = 0.0
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        # poll, not select: select() fails on descriptors past 1023, and a long soak's
        # process has more open (the first 30-minute soak's replica could not re-sync for
        # four minutes: every new connection was reset by a ValueError here)
        peers = {a.fileno(): (a, b), b.fileno(): (b, a)}
        poller = select.poll()
        for fd in peers:
            poller.register(fd, select.POLLIN)
        try:
            while True:
                for fd, _ in poller.poll(500):
                    sock, peer = peers[fd]
                    data = sock.recv(65536)
                    if not data:
                        return
                    while time.monotonic() < self._stalled_until:
                        time.sleep(0.02)
                    peer.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            self._forget(a, b)

    def _forget(self, a: socket.socket, b: socket.socket, *, reset: bool = False) -> None:
        with self._lock:
            if (a, b) in self._pairs:
                self._pairs.remove((a, b))
        for sock in (a, b):
            try:
                if reset:
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                sock.close()
            except OSError:
                pass

    def stall(self, seconds: float) -> None:
        self._stalled_until = time.monotonic() + seconds

    def cut(self, *, reset: bool) -> int:
        """Close every connection now (with a reset: RST instead of FIN); how many."""
        with self._lock:
            pairs = list(self._pairs)
        for a, b in pairs:
            self._forget(a, b, reset=reset)
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut(reset=False)


class RedisNode:
    """One valkey-server with AOF, restartable on its port, reached through its proxy."""

    def __init__(self, workdir: Path, name: str, replica_of: int | None = None) -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.proxy = Proxy(self.port)
        self.replica_of = replica_of
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--logfile",
            "redis.log",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            # Sentinels and clients reach this node through its proxy.
            "--replica-announce-ip",
            "127.0.0.1",
            "--replica-announce-port",
            str(self.proxy.port),
        ]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.answers, 20, f"redis {self.name}")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2)

    def answers(self) -> bool:
        try:
            with self.client() as c:
                return bool(c.ping())
        except redis.RedisError:
            return False

    def role(self) -> str:
        try:
            with self.client() as c:
                return str(c.info("replication").get("role"))
        except redis.RedisError:
            return "down"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()

    def shutdown(self) -> None:
        """A clean restart's first half: SHUTDOWN (the AOF is flushed)."""
        try:
            with self.client() as c:
                c.shutdown(nosave=False)
        except redis.RedisError:
            pass
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def stop(self) -> None:
        self.kill()
        self.proxy.close()


class Sentinels:
    """Three sentinels (quorum 2) watching the master through its proxy."""

    def __init__(self, workdir: Path, master_proxy_port: int) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []
        for i, port in enumerate(self.ports):
            conf = workdir / f"sentinel{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_proxy_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1500\n"
                f"sentinel failover-timeout {MASTER_NAME} 6000\n"
                f"sentinel resolve-hostnames no\n"
            )
            self.processes.append(
                subprocess.Popen(
                    [redis_binary(), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.ports) + "/0"

    def master_port(self) -> int | None:
        """The proxy port the sentinels name as the master now."""
        for port in self.ports:
            try:
                with redis.Redis(port=port, decode_responses=True, socket_timeout=1) as c:
                    found = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                    if found:
                        return int(found[1])
            except redis.RedisError:
                continue
        return None

    def stop(self) -> None:
        for proc in self.processes:
            proc.kill()
            proc.wait()


class Service:
    """One of our processes (a worker, beat, the server), restartable with its argv."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned: list[subprocess.Popen[bytes]] = []  # every process started, for close()

    def start(self, *, argv: list[str] | None = None, wait: bool = True) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                argv or self.argv,
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.spawned.append(self.process)

    def close(self) -> None:
        """Kill every process this service ever started (and their groups)."""
        for proc in self.spawned:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def pause(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def terminate(self, timeout_s: float = 20) -> None:
        """A warm shutdown (SIGTERM), then SIGKILL if it does not end in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "adjustments.cli", *args]
