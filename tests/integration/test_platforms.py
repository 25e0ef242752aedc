"""Several Stripe accounts in one deployment (issue 21, the part built so far): each request
goes with its own platform's key, the same identifier on two platforms is two cancellations,
no key is written anywhere, a worker without a platform's key does not start, and a
single-key deployment works unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from adjustments.config import Settings
from adjustments.errors import InvalidInput
from adjustments.models import Status
from adjustments.producer import Producer
from adjustments.sandbox import SandboxServer

from .conftest import WorkerProcess, run_cli, start_worker, stop_worker, wait_until

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
