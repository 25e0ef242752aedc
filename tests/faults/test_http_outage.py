"""``adjustments serve`` while its Redis is killed and restarted under a real worker."""

from __future__ import annotations

from pathlib import Path

from adjustments.sandbox import SandboxServer
from tests.helpers import (
    TOKEN_SPEC,
    start_server,
    stop_server,
    wait_until,
)

from .conftest import (
    Deploy,
    RedisProcess,
    assert_all_done_once,
)


def test_the_server_answers_503_while_redis_is_down_and_loses_nothing(
    redis_proc: RedisProcess, fault_sandbox: SandboxServer, tmp_path: Path, deploy: Deploy
) -> None:
    """Redis killed: POST and /healthz answer 503 (nothing accepted) and the server keeps
    running; Redis back on its port: POSTs are accepted again, and every accepted
    cancellation ends terminal, executed once."""
    deployment = deploy(ADJUSTMENTS_API_TOKENS=TOKEN_SPEC)
    producer, worker = deployment.producer, deployment.worker
    server = start_server(deployment.env, tmp_path / "server.log")
    accepted: list[str] = []

    def post(identifier: str) -> tuple[int, dict[str, object]]:
        body = {"event_name": "ev", "identifier": identifier, "api": "v1"}
        return server.json("POST", "/api/v1/cancellations", body, role="enqueue")

    try:
        status, first = post("http_before")
        assert status == 202
        accepted.append(str(first["id"]))
        redis_proc.kill()
        status, answer = post("http_during")
        assert status == 503 and answer["error"]["type"] == "store_unavailable"  # type: ignore[index]
        assert server.request("GET", "/healthz", role=None)[0] == 503
        assert server.process.poll() is None
        redis_proc.start()
        wait_until(lambda: server.request("GET", "/healthz", role=None)[0] == 200)
        status, after = post("http_during")  # the caller's retry
        assert status == 202
        accepted.append(str(after["id"]))
        assert_all_done_once(producer, accepted, fault_sandbox, worker=worker)
    finally:
        stop_server(server)
