"""The ``adjustments`` command as a user runs it: a real process, real Redis, the worker."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from adjustments.sandbox import SandboxServer
from tests.helpers import WorkerProcess, start_worker, stop_worker, wait_until, written_keys
from tests.helpers import run_cli as run


@pytest.mark.usefixtures("clean")
class TestCliAgainstWorker:
    def test_cancel_then_status_reaches_stripe(
        self, worker: WorkerProcess, worker_env: dict[str, str]
    ) -> None:
        """`cancel --json` prints one record; `status --json` then shows Stripe's answer."""
        out = run(["cancel", "ai_search_api", "idmp_1", "--api", "v1", "--json"], worker_env)
        assert out.returncode == 0, out.stderr
        record = json.loads(out.stdout)
        assert record["status"] == "queued" and record["api"] == "v1"

        def settled() -> bool:
            status = run(["status", record["id"], "--json"], worker_env)
            return json.loads(status.stdout)["status"] in ("complete", "pending")

        wait_until(settled, what="the CLI status to settle")
        listed = run(["list", "--status", "pending", "--json"], worker_env)
        assert [r["id"] for r in json.loads(listed.stdout)] == [record["id"]]
        stats = json.loads(run(["stats", "--json"], worker_env).stdout)
        assert stats["records"]["pending"] == 1 and stats["queue"]["waiting"] >= 0

    def test_unknown_request_id(self, worker_env: dict[str, str]) -> None:
        """status of an unknown id is exit 1 with one line naming it."""
        out = run(["status", "adj_doesnotexist"], worker_env)
        assert (
            out.returncode == 1
            and out.stderr.strip() == "adjustments: error: no such request: adj_doesnotexist"
        )


@pytest.mark.usefixtures("clean")
class TestCliBadInput:
    @pytest.mark.parametrize(
        "args",
        [
            ["cancel", "", "idmp_1"],
            ["cancel", "ev", "x" * 101],
            ["cancel", "ev", "id", "--api", "v3"],
            ["cancel", "ev", "id", "--account", "cus_1"],
            ["cancel", "ev", "id", "--received-at", "yesterday"],
            ["cancel", "ev", "id", "--received-at", "2026-01-01T00:00:00"],
            ["cancel", "ev"],
            ["cancel", "ev", "id", "--bogus"],
            ["list", "--status", "lost"],
            ["list", "--limit", "0"],
            ["nonsense"],
        ],
    )
    def test_one_line_exit_2_nothing_written(
        self, args: list[str], worker_env: dict[str, str], redis_client: redis.Redis
    ) -> None:
        """Each bad invocation is exit 2, one line on stderr, nothing on stdout or in Redis."""
        out = run(args, worker_env)
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("adjustments: error: "), out.stderr
        assert out.stdout == ""
        assert written_keys(redis_client) == []

    def test_bad_setting_is_exit_2(self, worker_env: dict[str, str]) -> None:
        """An invalid setting in the environment is exit 2 naming its variable."""
        out = run(["stats"], {**worker_env, "ADJUSTMENTS_MAX_ATTEMPTS": "many"})
        assert out.returncode == 2 and "ADJUSTMENTS_MAX_ATTEMPTS" in out.stderr


class TestEmbeddedRedis:
    def test_records_persist_across_embedded_restarts(
        self, tmp_path: Path, worker_env: dict[str, str]
    ) -> None:
        """With REDIS_URL=embedded a command starts the bundled server and says so in one
        line on stderr; `embedded stop` stops it and the append-only file keeps the record
        for the next start."""
        env = {**worker_env, "REDIS_URL": "embedded", "ADJUSTMENTS_DATA_DIR": str(tmp_path)}
        out = run(["cancel", "ev", "embedded_1", "--json"], env)
        assert out.returncode == 0, out.stderr
        announced = [line for line in out.stderr.splitlines() if "REDIS_URL=embedded" in line]
        assert len(announced) == 1 and "bundled Redis" in announced[0]
        record_id = json.loads(out.stdout)["id"]
        assert run(["embedded", "stop"], env).returncode == 0
        assert not (tmp_path / "redis.json").exists()
        assert (tmp_path / "appendonly.aof").exists() or list(tmp_path.glob("appendonly*"))
        status = run(["status", record_id, "--json"], env)
        run(["embedded", "stop"], env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["identifier"] == "embedded_1"

    @pytest.mark.parametrize(
        "argv",
        [["cancel", "ev", "x"], ["status", "adj_1"], ["list"], ["stats"], ["worker"], ["beat"]],
    )
    def test_no_redis_url_is_one_line_naming_it(
        self, tmp_path: Path, worker_env: dict[str, str], argv: list[str]
    ) -> None:
        """No REDIS_URL: no server of our own, one line naming REDIS_URL, exit 2, no file."""
        env = {
            k: v for k, v in worker_env.items() if k not in ("REDIS_URL", "ADJUSTMENTS_DATA_DIR")
        }
        out = run(argv, env, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("\n") == 1 and "REDIS_URL is not set" in out.stderr
        assert list(tmp_path.iterdir()) == []

    def test_plain_celery_without_redis_url_stops_with_one_line(
        self, tmp_path: Path, worker_env: dict[str, str]
    ) -> None:
        """`celery -A adjustments.celery_app worker` without REDIS_URL: exit 2 and one line,
        never a worker on Celery's default broker."""
        env = {
            k: v for k, v in worker_env.items() if k not in ("REDIS_URL", "ADJUSTMENTS_DATA_DIR")
        }
        out = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "adjustments.celery_app", "worker"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 2, out.stderr[-2000:]
        assert out.stderr.count("\n") == 1 and "REDIS_URL is not set" in out.stderr
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("argv", [["status", "adj_1"], ["list"], ["stats"]])
    def test_read_only_commands_create_nothing(
        self, tmp_path: Path, worker_env: dict[str, str], argv: list[str]
    ) -> None:
        """Reading an embedded store that does not exist says so and creates no directory."""
        env = {**worker_env, "REDIS_URL": "embedded", "ADJUSTMENTS_DATA_DIR": "store"}
        out = run(argv, env, cwd=tmp_path)
        assert out.returncode == 2 and "no embedded store" in out.stderr
        assert list(tmp_path.iterdir()) == []


class TestRedisDown:
    def test_cancel_without_redis_fails_fast_and_says_so(self, worker_env: dict[str, str]) -> None:
        """Redis unreachable: the request is not accepted, and the caller is told at once."""
        from adjustments.embedded import free_port

        env = {**worker_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
        out = run(["cancel", "ev", "no_redis", "--json"], env, timeout=30)
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.startswith("adjustments: error: cannot reach Redis")
        assert len(out.stderr.strip().splitlines()) == 1


class TestOnATerminal:
    def test_import_progress_reaches_100_and_bad_lines_stand_alone(
        self, tmp_path: Path, worker_env: dict[str, str], redis_client: redis.Redis
    ) -> None:
        """stderr on a terminal: the bar ends at 100 % and every bad-line message starts a
        line of its own (the bar's line is cleared first), even with blank and bad lines."""
        lines = [json.dumps({"event_name": "ev", "identifier": f"tty_{n}"}) for n in range(30)]
        lines[4] = "{not json"
        lines[17] = ""
        lines[25] = json.dumps({"event_name": "ev"})
        path = tmp_path / "in.jsonl"
        path.write_text("\n".join(lines) + "\n")
        env = {**worker_env, "ADJUSTMENTS_KEY_PREFIX": "ttytest", "ADJUSTMENTS_QUEUE": "ttyq"}
        main, child = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "adjustments.cli", "import", str(path)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=child,
            )
            os.close(child)
            seen = b""
            while True:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            proc.wait(timeout=60)
        finally:
            os.close(main)
            for key in redis_client.scan_iter("ttytest:*"):
                redis_client.delete(key)
            redis_client.delete("ttyq")
        text = seen.decode()
        assert proc.returncode == 1  # two bad lines
        assert "100%" in text
        messages = re.findall(r"(.)line (\d+): ", text)
        assert [int(n) for _, n in messages] == [5, 26]
        # Each message starts after a newline or after the erase-line sequence.
        for match in re.finditer(r"line \d+: ", text):
            before = text[: match.start()]
            assert before == "" or before.endswith(("\n", "\x1b[2K")), repr(before[-20:])


class TestSettingsModule:
    def test_commands_take_their_settings_from_a_module(
        self, tmp_path: Path, worker_env: dict[str, str]
    ) -> None:
        """ADJUSTMENTS_SETTINGS_MODULE replaces the environment: no REDIS_URL is set, and the
        module's Redis and queue are used."""
        (tmp_path / "svc_settings.py").write_text(
            "from adjustments import Settings\n"
            f"settings = Settings(redis_url={worker_env['REDIS_URL']!r}, queue='modq', "
            "key_prefix='modtest')\n"
        )
        env = {k: v for k, v in worker_env.items() if k != "REDIS_URL"}
        env["ADJUSTMENTS_SETTINGS_MODULE"] = "svc_settings"
        out = run(["cancel", "ev", "from_module", "--json"], env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        client = redis.Redis.from_url(worker_env["REDIS_URL"], decode_responses=True)
        try:
            assert client.exists(f"modtest:rec:{json.loads(out.stdout)['id']}")
            assert client.llen("modq") == 1
        finally:
            for key in [*client.scan_iter("modtest:*"), "modq"]:
                client.delete(key)
            client.close()


def celery_control(command: str, env: dict[str, str]) -> None:
    """``celery control COMMAND adjustments`` against the workers of ``env``'s Redis."""
    argv = [sys.executable, "-m", "celery", "-A", "adjustments.celery_app", "control", command]
    done = subprocess.run([*argv, "adjustments"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr


class TestLivenessAndStats:
    def test_health_follows_the_workers_heartbeat_and_stats_shows_the_shared_rate(
        self, own_redis_url: str, tmp_path: Path, worker_env: dict[str, str], sandbox: SandboxServer
    ) -> None:
        """`health` exits 0 while this host's worker beats and consumes, 1 while it beats but
        has stopped consuming our queue (`celery control cancel_consumer`), and 1 within one
        heartbeat TTL of a kill -9; `workers` lists it; `stats` reports the limit the worker
        uses, not the CLI's."""
        url = own_redis_url
        env = {
            **worker_env,
            "REDIS_URL": url,
            "ADJUSTMENTS_HEARTBEAT_S": "0.5",
            "ADJUSTMENTS_RATE_LIMIT": "7",
        }
        cli_env = {**env, "ADJUSTMENTS_RATE_LIMIT": "20"}
        handle = start_worker(env, tmp_path / "worker.log", concurrency=2)
        try:
            assert run(["health"], cli_env).returncode == 0
            listed = json.loads(run(["workers", "--json"], cli_env).stdout)
            assert [w["pid"] for w in listed] == [handle.process.pid]
            assert run(["cancel", "ev", "hb_1", "--api", "v1"], cli_env).returncode == 0
            wait_until(
                lambda: (
                    json.loads(run(["stats", "--json"], cli_env).stdout)["records"]["pending"] == 1
                ),
                what="the cancellation",
            )
            stats = json.loads(run(["stats", "--json"], cli_env).stdout)
            assert stats["rate_limit"]["configured_per_s"] == 7.0
            assert stats["rate_limit"]["source"] == "workers" and stats["workers_alive"] == 1
            assert set(stats["queue"]) == {"waiting", "held_by_workers", "scheduled_retries"}
            client = redis.Redis.from_url(url)
            try:  # the heartbeat expires three beats after the last one, whatever happens
                ttl_ms = client.pttl(f"adj:worker:{listed[0]['node']}")
            finally:
                client.close()
            assert 0 < ttl_ms <= 3 * 500
            celery_control("cancel_consumer", env)
            wait_until(lambda: run(["health"], cli_env).returncode == 1, what="health to fail")
            out = run(["health"], cli_env)
            assert "alive but not consuming: not consuming from queue adjustments" in out.stderr
            celery_control("add_consumer", env)
            wait_until(lambda: run(["health"], cli_env).returncode == 0, what="health to pass")
            handle.process.kill()  # no goodbye: the heartbeat has to expire
            handle.process.wait(timeout=10)
            wait_until(lambda: run(["health"], cli_env).returncode == 1, timeout_s=30)
            out = run(["health"], cli_env)
            assert out.stderr.count("\n") == 1 and "no live worker on" in out.stderr
        finally:
            if handle.process.poll() is None:
                stop_worker(handle)
