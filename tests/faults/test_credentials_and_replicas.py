"""An ACL user with a password, and `replicas:1` durability with no replica to confirm it."""

from __future__ import annotations

from pathlib import Path

import pytest

from adjustments.errors import AcceptanceUnknown
from adjustments.sandbox import SandboxServer
from tests.helpers import stop_worker, store_of

from .conftest import (
    RedisProcess,
    assert_all_done_once,
    fault_env,
    producer_for,
    start_fault_worker,
)

PASSWORD = "acl-Pa55word-never-logged"


def test_acl_user_works_and_its_password_is_never_logged(
    fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """A Redis with an ACL user (default user off): worker and producer connect with the
    URL's user and password; the password appears in no log line and no record."""
    acl = ["--user", "default", "off", "--user", "app", "on", f">{PASSWORD}", "~*", "&*", "+@all"]
    proc = RedisProcess(tmp_path / "redis", extra=acl)
    proc.start_check_auth = ("app", PASSWORD)
    proc.start()
    try:
        env = fault_env(
            f"redis://app:{PASSWORD}@127.0.0.1:{proc.port}/0", fault_sandbox, tmp_path / "d"
        )
        worker = start_fault_worker(env, tmp_path / "worker.log")
        producer = producer_for(env)
        try:
            ids = [producer.cancel("ev", f"acl_{n}").id for n in range(5)]
            assert_all_done_once(producer, ids, fault_sandbox, worker=worker)
            stored = str([r.to_dict() for r in store_of(producer).get_many(ids)])
        finally:
            producer.close()
            stop_worker(worker)
        assert PASSWORD not in worker.log_text() and PASSWORD not in stored
    finally:
        proc.stop()


def test_replicas_durability_without_a_synced_replica_raises(
    redis_proc: RedisProcess, fault_sandbox: SandboxServer, tmp_path: Path
) -> None:
    """`replicas:1` on a server with no replica: cancel() raises AcceptanceUnknown after the
    timeout instead of returning a request a failover could lose; a later call finds it."""
    env = fault_env(
        redis_proc.url,
        fault_sandbox,
        tmp_path / "data",
        ADJUSTMENTS_DURABILITY="replicas:1",
        ADJUSTMENTS_DURABILITY_TIMEOUT_MS="200",
    )
    with producer_for(env) as producer:
        with pytest.raises(AcceptanceUnknown, match="0 of 1 replica"):
            producer.cancel("ev", "lonely")
        with pytest.raises(AcceptanceUnknown):
            producer.cancel("ev", "lonely")  # the same record, still unconfirmed
        assert producer.client.zcard("adj:idx:queued") == 1
