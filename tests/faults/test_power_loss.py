"""Power loss, emulated: the server runs with a page cache that a SIGKILL empties (see
powerloss/page_cache.c), so a crash loses exactly what was written but not fsynced. Each
configuration loses what the durability table (docs/reliability.md) says, and `fsync` loses
nothing."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from adjustments.config import Settings
from adjustments.errors import StoreError, UnsafeRedis
from adjustments.producer import Producer

from .conftest import RedisProcess

SOURCE = Path(__file__).parent / "powerloss" / "page_cache.c"
CC = shutil.which("cc") or shutil.which("gcc")
WRITERS = 4
pytestmark = pytest.mark.skipif(CC is None, reason="needs a C compiler for the page-cache shim")


@pytest.fixture(scope="module")
def page_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert CC is not None
    out = tmp_path_factory.mktemp("shim") / "page_cache.so"
    subprocess.run(
        [CC, "-shared", "-fPIC", "-O2", "-o", str(out), str(SOURCE), "-ldl", "-lpthread"],
        check=True,
        capture_output=True,
    )
    return out


def crash_while_writing(
    page_cache: Path, workdir: Path, *, appendfsync: str, durability: str, seconds: float
) -> tuple[dict[str, float], set[str], float]:
    """Acknowledged cancel()s (identifier → when), what survived the crash, and its time."""
    server = RedisProcess(
        workdir, extra=["--appendfsync", appendfsync], env={"LD_PRELOAD": str(page_cache)}
    ).start()
    settings = Settings.from_env({"REDIS_URL": server.url, "ADJUSTMENTS_DURABILITY": durability})
    acknowledged: dict[str, float] = {}
    stop = threading.Event()

    def write(writer: int) -> None:
        with Producer(server.url, settings=settings) as producer:
            n = 0
            while not stop.is_set():
                identifier = f"w{writer}_{n}"
                try:
                    producer.cancel("ev", identifier)
                except StoreError:
                    return  # the server is gone
                acknowledged[identifier] = time.monotonic()
                n += 1

    threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    try:
        for t in threads:
            t.start()
        time.sleep(seconds)
        crashed_at = time.monotonic()
        server.kill()  # the power cut: what the page cache held is gone
        stop.set()
        for t in threads:
            t.join(timeout=30)
        server.env = {}  # back on, with a plain page cache
        server.start()
        with server.client() as client:
            present = {str(client.hget(k, "identifier")) for k in client.scan_iter("adj:rec:*")}
    finally:
        stop.set()
        server.stop()
    return {k: v for k, v in acknowledged.items() if v <= crashed_at}, present, crashed_at


def test_the_emulation_loses_what_was_never_fsynced(page_cache: Path, tmp_path: Path) -> None:
    """appendfsync no, durability memory: Redis never fsyncs, so every acknowledged request is
    gone after the crash (the emulation works)."""
    acknowledged, present, _ = crash_while_writing(
        page_cache, tmp_path / "r", appendfsync="no", durability="memory", seconds=1.0
    )
    assert len(acknowledged) > 50
    assert not present & set(acknowledged)


def test_memory_with_everysec_loses_at_most_the_last_seconds(
    page_cache: Path, tmp_path: Path
) -> None:
    """appendfsync everysec, durability memory: the durability table's "up to about a second".
    Whatever is lost was acknowledged in the last 2.5 s before the crash (Redis may postpone
    an everysec fsync by up to 2 s while the previous one runs); everything older survived."""
    acknowledged, present, crashed_at = crash_while_writing(
        page_cache, tmp_path / "r", appendfsync="everysec", durability="memory", seconds=3.5
    )
    lost = set(acknowledged) - present
    assert all(crashed_at - acknowledged[i] <= 2.5 for i in lost), sorted(
        round(crashed_at - acknowledged[i], 2) for i in lost
    )[:5]
    older = [i for i, at in acknowledged.items() if crashed_at - at > 2.5]
    assert older and set(older) <= present


@pytest.mark.parametrize("durability", ["memory", "fsync"])
def test_appendfsync_always_loses_nothing(
    durability: str, page_cache: Path, tmp_path: Path
) -> None:
    """appendfsync always, with either level: every acknowledged cancel() survives the power
    cut (Redis fsyncs before it answers; `fsync` then confirms it with WAITAOF)."""
    appendfsync = "always"
    acknowledged, present, _ = crash_while_writing(
        page_cache, tmp_path / "r", appendfsync=appendfsync, durability=durability, seconds=2.0
    )
    assert len(acknowledged) > 5
    assert set(acknowledged) <= present


def test_fsync_durability_refuses_everysec(page_cache: Path, tmp_path: Path) -> None:
    """fsync durability on an everysec server is refused before anything is written: there,
    WAITAOF confirmed writes this emulated power cut then lost (redis/redis#13793, present in
    the bundled Valkey 8.1), so the promise could not be kept."""
    server = RedisProcess(tmp_path / "r", extra=["--appendfsync", "everysec"]).start()
    try:
        settings = Settings.from_env({"REDIS_URL": server.url, "ADJUSTMENTS_DURABILITY": "fsync"})
        with (
            Producer(server.url, settings=settings) as producer,
            pytest.raises(UnsafeRedis, match="needs appendfsync always"),
        ):
            producer.cancel("ev", "never_written")
        with server.client() as client:
            assert client.dbsize() == 0
    finally:
        server.stop()
