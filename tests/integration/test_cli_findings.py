"""The CLI as a newcomer and an operator on call use it (issue 18): imports that keep every
good line, replay's preview and typos, readable lists and records, the shared embedded
server. Each test failed before its fix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from adjustments import Producer
from adjustments.models import CancelRequest
from adjustments.sandbox import SandboxServer
from tests.helpers import create_record
from tests.helpers import run_cli as run


@pytest.fixture
def import_env(worker_env: dict[str, str], redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    """The CLI's environment with a key prefix and queue of its own: the shared worker does
    not take these records, and no other process writes under the prefix."""
    yield {**worker_env, "ADJUSTMENTS_KEY_PREFIX": "imptest", "ADJUSTMENTS_QUEUE": "impq"}
    for key in redis_client.scan_iter("imptest:*"):
        redis_client.delete(key)
    for key in redis_client.scan_iter("impq*"):
        redis_client.delete(key)


class TestImport:
    def test_a_latin1_byte_costs_one_line_not_the_rest_of_the_file(
        self, import_env: dict[str, str], tmp_path: Path, redis_client: redis.Redis
    ) -> None:
        """3,000 good rows, a Latin-1 byte on line 3,002, ten more: exit 1, line 3002 named,
        all 3,010 good rows enqueued, "1 bad line"."""
        lines = [b"event_name,identifier"] + [f"ev,imp{i}".encode() for i in range(3000)]
        lines += ["ev,caf\u00e9".encode("latin-1")] + [f"ev,tail{i}".encode() for i in range(10)]
        path = tmp_path / "rows.csv"
        path.write_bytes(b"\n".join(lines) + b"\n")
        out = run(["import", str(path)], import_env)
        assert out.returncode == 1, out.stderr
        assert "line 3002: not UTF-8 text" in out.stderr
        assert "enqueued 3010 (3010 new, 0 already known), 1 bad line" in out.stdout
        assert redis_client.zcard("imptest:idx:queued") == 3010

    def test_bad_lines_are_reported_in_file_order(
        self, import_env: dict[str, str], tmp_path: Path
    ) -> None:
        """A line refused by validation (line 1) before an unparseable one (line 2): reported
        in that order, on stderr and in --json."""
        path = tmp_path / "rows.jsonl"
        path.write_text(
            '{"event_name": "ev", "identifier": "a", "api": "v9"}\n'
            "not json\n"
            '{"event_name": "ev", "identifier": "b"}\n'
        )
        out = run(["import", str(path)], import_env)
        reported = [line.split(":")[0] for line in out.stderr.splitlines() if "line " in line]
        assert reported == ["line 1", "line 2"], out.stderr
        summary = json.loads(run(["import", str(path), "--json"], import_env).stdout)
        assert [b["line"] for b in summary["bad"]] == [1, 2]

    @pytest.mark.parametrize(
        "text", ["ev,id1\nev,id2\n", "event_name;identifier\nev;id1\n"], ids=["none", "semicolon"]
    )
    def test_a_csv_without_the_required_header_is_an_input_error(
        self, import_env: dict[str, str], tmp_path: Path, redis_client: redis.Redis, text: str
    ) -> None:
        """No header, or `;` between columns: exit 2, one line with a hint, nothing written."""
        path = tmp_path / "rows.csv"
        path.write_text(text)
        out = run(["import", str(path)], import_env)
        assert out.returncode == 2, out
        assert out.stderr.count("\n") == 1 and "comma-separated" in out.stderr
        assert list(redis_client.scan_iter("imptest:*")) == []
        assert list(redis_client.scan_iter("impq*")) == []


def _failed(producer: Producer, sandbox: SandboxServer, settle: Any, identifier: str) -> str:
    sandbox.logic.script(identifier, ["400"])
    record = producer.cancel("ev", identifier, api="v1")
    assert settle(record.id).status.value == "failed"
    return record.id


class TestOperatorViews:
    def test_replay_preview_needs_no_force_and_an_unknown_id_fails(
        self, producer: Producer, worker_env: dict[str, str], settle: Any
    ) -> None:
        """`replay --status expired --dry-run` previews without --force (and says a real
        replay needs it); `replay --id adj_unknown` is exit 1 naming the id."""
        now = datetime.now(UTC)
        old = CancelRequest("v1", "ev", "cli_exp_1", None, now - timedelta(hours=25))
        record = create_record(producer, old, now=now)
        assert settle(record.id).status.value == "expired"
        out = run(["replay", "--status", "expired", "--dry-run"], worker_env)
        assert out.returncode == 0, out.stderr
        assert record.id in out.stdout and "would replay 1" in out.stdout
        assert "--force" in out.stdout
        assert producer.get(record.id).status.value == "expired"
        out = run(["replay", "--id", "adj_unknown"], worker_env)
        assert out.returncode == 1 and out.stderr.strip().endswith("adj_unknown"), out

    def test_list_shows_the_error_code_and_status_a_table_of_attempts(
        self,
        producer: Producer,
        sandbox: SandboxServer,
        worker_env: dict[str, str],
        settle: Any,
    ) -> None:
        """`list --status failed` shows each record's error code (the runbook reads it
        there); `status` shows the attempts as a table, and after a successful replay the
        old error is labelled as an earlier attempt's."""
        record_id = _failed(producer, sandbox, settle, "cli_err_1")
        listed = run(["list", "--status", "failed"], worker_env).stdout
        assert "error=invalid_cancel_configuration" in listed or "error=" in listed, listed
        shown = run(["status", record_id], worker_env).stdout
        assert "attempts:" in shown and "outcome" in shown and "error code" in shown
        assert "{" not in shown  # no raw JSON
        assert "(from an earlier attempt)" not in shown
        producer.operations.replay(ids=[record_id])
        assert settle(record_id).status.value in ("pending", "complete")
        shown = run(["status", record_id], worker_env).stdout
        assert "(from an earlier attempt)" in shown

    def test_empty_answers_say_so(
        self, clean: None, redis_client: redis.Redis, worker_env: dict[str, str]
    ) -> None:
        """`list` and `workers` with nothing to show say so; `stats` with nothing live says
        "none live", not "0.0 s"."""
        env = {**worker_env, "ADJUSTMENTS_KEY_PREFIX": "nobody"}
        assert run(["list"], env).stdout.strip() == "no records"
        assert run(["list", "--status", "failed"], env).stdout.strip() == "no failed records"
        assert run(["workers"], env).stdout.startswith("no workers alive")
        stats = run(["stats"], env).stdout
        assert "none live" in stats and "0.0 s" not in stats


class TestSharedEmbeddedServer:
    def test_the_bundled_server_outlives_the_process_that_started_it(
        self, tmp_path: Path, worker_env: dict[str, str]
    ) -> None:
        """The `cancel` that started the bundled server exits; the server runs on for the
        next process (which says it uses the running one), until `embedded stop`; its data
        survives that stop."""
        env = {**worker_env, "REDIS_URL": "embedded", "ADJUSTMENTS_DATA_DIR": str(tmp_path)}
        try:
            out = run(["cancel", "ev", "shared_1", "--json"], env)
            assert out.returncode == 0, out.stderr
            assert "started the bundled Redis" in out.stderr
            url = json.loads((tmp_path / "redis.json").read_text())["url"]
            assert redis.Redis.from_url(url).ping()  # still up after its starter exited
            status = run(["status", json.loads(out.stdout)["id"], "--json"], env)
            assert status.returncode == 0 and "using the running bundled Redis" in status.stderr
        finally:
            stopped = run(["embedded", "stop"], env)
        assert stopped.returncode == 0 and "stopped the bundled Redis" in stopped.stdout
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        again = run(["status", json.loads(out.stdout)["id"], "--json"], env)
        run(["embedded", "stop"], env)
        assert json.loads(again.stdout)["identifier"] == "shared_1"
