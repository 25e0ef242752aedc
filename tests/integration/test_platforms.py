"""Several Stripe accounts in one deployment (issue 21): each request goes with its own
platform's key, the same identifier on two platforms is two cancellations, each platform has
its own rate budget (one platform's 429s leave the other at its rate), no key is written
anywhere, a worker without a platform's key does not start, and a single-key deployment works
unchanged."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from adjustments import keys
from adjustments.config import Settings
from adjustments.embedded import free_port
from adjustments.errors import InvalidInput
from adjustments.models import Status
from adjustments.producer import Producer
from adjustments.sandbox import SandboxServer
from tests.helpers import (
    TOKEN_SPEC,
    TOKENS,
    WorkerProcess,
    console_login,
    run_cli,
    start_server,
    start_worker,
    stop_server,
    stop_worker,
    wait_until,
)

US_KEY = "sk_test_platformUS_aaaa11"
EU_KEY = "sk_test_platformEU_bbbb22"


@pytest.fixture(scope="module")
def platform_env(worker_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in worker_env.items() if k != "STRIPE_API_KEY"}
    env.update(
        ADJUSTMENTS_PLATFORMS="us,eu",
        STRIPE_API_KEY_US=US_KEY,
        STRIPE_API_KEY_EU=EU_KEY,
        ADJUSTMENTS_KEY_PREFIX="plat",
        ADJUSTMENTS_QUEUE="plat-q",
    )
    return env


@pytest.fixture(scope="module")
def platform_worker(
    platform_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    handle = start_worker(platform_env, tmp_path_factory.mktemp("plat") / "worker.log")
    yield handle
    stop_worker(handle)


def test_each_request_goes_with_its_platforms_key(
    platform_env: dict[str, str],
    platform_worker: WorkerProcess,
    sandbox: SandboxServer,
    redis_client: redis.Redis,
    clean: None,
) -> None:
    """The same identifiers on us and eu: ten records, each executed once with its own
    platform's key (v1 and v2); the default platform is the first; an unknown platform is
    refused and writes nothing; no key is in Redis or in the worker's log."""
    with Producer(platform_env["REDIS_URL"], settings=Settings.from_env(platform_env)) as p:
        ids = {}
        for platform in ("us", "eu"):
            for i in range(5):
                record = p.cancel("ev", f"plat_{i}", api="v1" if i % 2 else "v2",
                                  platform=platform)  # fmt: skip
                assert record.created and record.platform == platform
                ids[(platform, i)] = record.id
        assert p.cancel("ev", "plat_0", api="v2").id == ids[("us", 0)]  # the default: us
        with pytest.raises(InvalidInput, match="unknown platform 'asia'"):
            p.cancel("ev", "plat_x", platform="asia")
        wait_until(
            lambda: all(p.get(i).status is Status.PENDING for i in ids.values()),
            what="both platforms' cancellations",
        )
    for i in range(5):
        rows = [r for r in sandbox.logic.requests[f"plat_{i}"] if r["http_status"] == 200]
        assert sorted(r["key_tail"] for r in rows) == sorted([US_KEY[-6:], EU_KEY[-6:]])
        assert sandbox.logic.executions[f"plat_{i}"] == 2  # once per platform
    dump = b"".join(redis_client.dump(k) or b"" for k in redis_client.scan_iter("plat*")).decode(
        "latin-1"
    )
    assert US_KEY not in dump and EU_KEY not in dump
    log = platform_worker.log_text()
    assert US_KEY not in log and EU_KEY not in log


def test_a_worker_without_a_platforms_key_does_not_start(
    platform_env: dict[str, str], tmp_path: Path
) -> None:
    """Exit 2 and one line naming the platform and its variable, never a key."""
    env = {k: v for k, v in platform_env.items() if k != "STRIPE_API_KEY_EU"}
    out = run_cli(["worker"], env, timeout=60)
    assert out.returncode == 2
    assert "platform eu: STRIPE_API_KEY_EU is not set" in out.stderr
    assert US_KEY not in out.stderr + out.stdout


def sends(sandbox: SandboxServer, prefix: str) -> list[tuple[float, str, str]]:
    """(time, identifier, key tail) of every executed request for identifiers ``prefix*``."""
    return sorted(
        (row["at"], identifier, row["key_tail"])
        for identifier, rows in sandbox.logic.requests.items()
        if identifier.startswith(prefix)
        for row in rows
        if row["http_status"] == 200
    )


def most_in_a_second(times: list[float]) -> int:
    """The most sends within any one second (a sliding window)."""
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_one_platforms_429s_leave_the_other_at_its_own_rate(
    platform_env: dict[str, str],
    own_redis_url: str,
    sandbox: SandboxServer,
    clean: None,
    tmp_path: Path,
) -> None:
    """400 cancellations on us and 400 on eu, at 40/s each; eu's first 60 each meet three
    rate limiters' 429s. eu's rate is cut, us's never is: us's sends keep to its own 40/s
    and it is done before eu is. All 800 end pending, each executed once with its own
    platform's key; no key is in Redis, the worker's log or either metrics exposition,
    which carry the platform label."""
    port = free_port()
    env = {
        **platform_env,
        "REDIS_URL": own_redis_url,
        "ADJUSTMENTS_RATE_LIMIT_US": "40",
        "ADJUSTMENTS_RATE_LIMIT_EU": "40",
        "ADJUSTMENTS_RATE_RECOVERY_PER_S": "10",  # eu climbs back within seconds
        "ADJUSTMENTS_METRICS_PORT": str(port),
    }
    for i in range(60):
        sandbox.logic.script(f"eu_{i}", ["rate_limited"] * 3)
    handle = start_worker(env, tmp_path / "worker.log", concurrency=8)
    try:
        with Producer(own_redis_url, settings=Settings.from_env(env)) as p:
            items = [
                {"event_name": "ev", "identifier": f"{platform}_{i}", "platform": platform}
                for platform in ("us", "eu")
                for i in range(400)
            ]
            result = p.cancel_many(items)
            assert result.created == 800 and not result.invalid
            ids = [i for i in result.ids if i]
            wait_until(
                lambda: p.stats().records["pending"] == 800,
                timeout_s=180,
                what="800 cancellations on two platforms",
            )
            stats = p.stats()
            assert {r.status for r in (p.get(i) for i in ids)} == {Status.PENDING}
            listed = p.latest(limit=500, platform="eu")
            assert len(listed) == 400 and {r.platform for r in listed} == {"eu"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            worker_metrics = r.read().decode()
        deployment_metrics = run_cli(["metrics", "--once"], env).stdout
    finally:
        stop_worker(handle)

    us, eu = sends(sandbox, "us_"), sends(sandbox, "eu_")
    assert sorted(i for _, i, _ in us) == sorted(f"us_{i}" for i in range(400))  # each once
    assert sorted(i for _, i, _ in eu) == sorted(f"eu_{i}" for i in range(400))
    assert all(sandbox.logic.executions[i] == 1 for i in (x["identifier"] for x in items))
    assert {tail for _, _, tail in us} == {US_KEY[-6:]}
    assert {tail for _, _, tail in eu} == {EU_KEY[-6:]}
    limited = [
        row
        for identifier, rows in sandbox.logic.requests.items()
        for row in rows
        if row["outcome"] == "rate_limited"
    ]
    assert len(limited) == 180 and {row["key_tail"] for row in limited} == {EU_KEY[-6:]}

    # eu was cut; us never was, and never went past its own 40/s (a 2-send burst, and a
    # quarter of a second of scheduling lag between a grant and its arrival here)
    client = redis.Redis.from_url(own_redis_url, decode_responses=True)
    assert client.hget(keys.rate_limiter("plat", "eu"), "cut_us") is not None
    assert client.hget(keys.rate_limiter("plat", "us"), "cut_us") is None
    assert most_in_a_second([t for t, _, _ in us]) <= 40 * 1.25 + 2
    assert us[-1][0] < eu[-1][0], (  # eu's cut rate did not hold us's sends back
        f"us: 400 in {us[-1][0] - us[0][0]:.1f} s, eu: 400 in {eu[-1][0] - eu[0][0]:.1f} s"
    )
    platforms = stats.platforms
    assert platforms is not None and set(platforms) == {"us", "eu"}
    assert platforms["us"].rate_limit.configured_per_s == 40

    assert 'platform="eu",reason="endpoint-rate"} 180.0' in worker_metrics
    assert 'adjustments_rate_limit_per_second{kind="configured",platform="us"} 40.0' in (
        deployment_metrics
    )
    dump = b"".join(client.dump(k) or b"" for k in client.scan_iter("*")).decode("latin-1")
    for text in (dump, handle.log_text(), worker_metrics, deployment_metrics):
        assert US_KEY not in text and EU_KEY not in text


def test_the_api_and_console_show_each_platform(
    platform_env: dict[str, str], own_redis_url: str, tmp_path: Path
) -> None:
    """Records of two platforms (no worker: they wait): the HTTP list and the console's
    records page filter by platform, the console's overview has a tile per platform with its
    ready records, and stats give each platform's ready count and rate."""
    env = {**platform_env, "REDIS_URL": own_redis_url, "ADJUSTMENTS_API_TOKENS": TOKEN_SPEC}
    with Producer(own_redis_url, settings=Settings.from_env(env)) as p:
        for i in range(3):
            p.cancel("ev", f"tile_us_{i}", platform="us")
        p.cancel("ev", "tile_eu_0", platform="eu")
        stats = p.stats()
    platforms = stats.platforms
    assert platforms is not None
    assert {n: v.ready for n, v in platforms.items()} == {"us": 3, "eu": 1}
    server = start_server(env, tmp_path / "server.log")
    try:
        status, listed = server.json("GET", "/api/v1/cancellations?platform=eu", role="read")
        assert status == 200
        assert [r["identifier"] for r in listed["data"]] == ["tile_eu_0"]
        status, cookie = console_login(server, TOKENS["read"])
        assert status == 303 and cookie
        _, _, page = server.request("GET", "/console", role=None, headers={"Cookie": cookie})
        html = page.decode()
        assert 'data-platform="us"' in html and 'data-platform="eu"' in html
        _, _, page = server.request(
            "GET", "/console/records?platform=us", role=None, headers={"Cookie": cookie}
        )
        html = page.decode()
        assert "tile_us_0" in html and "tile_eu_0" not in html
        assert '<option value="eu"' in html
    finally:
        stop_server(server)
