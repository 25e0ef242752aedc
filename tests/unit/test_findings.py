"""Issue 18's findings that need no server: each test failed before its fix."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import click
import pytest

from adjustments import InvalidInput, Producer, StoreError
from adjustments.cli import COMMANDS, cli
from adjustments.errors import ConfigError, UnsafeRedis
from adjustments.http.auth import Auth, Token, parse_tokens
from adjustments.http.guard import allowed_hosts, host_name
from adjustments.listing import decode_cursor, encode_cursor
from adjustments.models import Status
from adjustments.replay import ReplayFilter
from adjustments.text import printable
from tests.helpers import fake_producer

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def producer() -> Iterator[Producer]:
    """A producer whose store is fakeredis (only the checks in front of Redis are tested)."""
    with fake_producer() as p:
        yield p


class TestApiValues:
    @pytest.mark.parametrize("value", [False, "", 0, [], {}])
    def test_a_falsy_api_is_invalid_not_the_default(
        self, producer: Producer, value: object
    ) -> None:
        """cancel() and cancel_many() refuse api false, "", 0, [] and {}: only v1, v2 or
        absent (None) are valid."""
        with pytest.raises(InvalidInput, match="api must be"):
            producer.cancel("ev", "id1", api=value, now=NOW)  # type: ignore[arg-type]
        result = producer.cancel_many([{"event_name": "ev", "identifier": "id2", "api": value}])
        assert result.created == 0 and len(result.invalid) == 1

    def test_an_absent_api_takes_the_default(self, producer: Producer) -> None:
        """api=None (or no api key) is the configured default."""
        assert producer.cancel("ev", "id3", now=NOW).api == producer.settings.default_api


class TestStatusesAsText:
    def test_list_and_replay_take_a_status_name(self, producer: Producer) -> None:
        """producer.latest("failed") and a replay filter with status="failed" work like the
        enum; an unknown name is InvalidInput naming the valid ones."""
        assert producer.latest("failed") == []
        assert ReplayFilter(status="failed").status is Status.FAILED  # type: ignore[arg-type]
        assert producer.operations.replay(status="failed", dry_run=True).selected == []
        with pytest.raises(InvalidInput, match="status must be one of"):
            producer.latest("lost")
        with pytest.raises(InvalidInput, match="status must be one of"):
            ReplayFilter(status="lost")  # type: ignore[arg-type]


class TestTokens:
    def test_one_secret_under_two_roles_is_refused(self) -> None:
        """The same token as read and operate: which would it be? Refused at start."""
        secret = "s" * 20
        with pytest.raises(ConfigError, match="same token is given the roles read and operate"):
            parse_tokens(f"read:{secret},operate:{secret}")
        with pytest.raises(ConfigError) as info:
            parse_tokens(f"read:{secret},operate:{secret}")
        assert secret not in str(info.value)

    def test_csrf_keys_without_tokens_are_random_per_process(self) -> None:
        """--insecure-local: two servers' CSRF tokens for the same session differ (the key
        is random), so no page can compute one."""
        assert Auth([]).csrf_token("session") != Auth([]).csrf_token("session")
        tokens = [Token("read", "r" * 20)]
        assert Auth(tokens).csrf_token("s") == Auth(tokens).csrf_token("s")  # shared by processes


class TestHosts:
    @pytest.mark.parametrize(
        ("header", "name"),
        [("localhost:8000", "localhost"), ("[::1]:8000", "[::1]"), ("Example.COM", "example.com")],
    )
    def test_host_names(self, header: str, name: str) -> None:
        """The Host header's name, lower-case and without its port."""
        assert host_name(header) == name

    def test_allowed_hosts(self) -> None:
        """Loopback names, the bound address and --allowed-host; * allows any."""
        hosts = allowed_hosts("0.0.0.0", ["adjustments.internal"])  # noqa: S104
        assert hosts is not None and {"localhost", "127.0.0.1", "adjustments.internal"} <= hosts
        assert "0.0.0.0" not in hosts  # noqa: S104
        assert allowed_hosts("0.0.0.0", ["*"]) is None  # noqa: S104


class TestCursor:
    @pytest.mark.parametrize(
        "cursor",
        [
            "!!!",
            "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk6MA",
            "x" * 100,
        ],
        ids=["not-base64", "overflow", "long"],
    )
    def test_out_of_range_cursors_are_refused(self, cursor: str) -> None:
        """Numbers a cursor of ours never holds are InvalidInput, never a query."""
        with pytest.raises(InvalidInput):
            decode_cursor(cursor)

    def test_a_negative_skip_is_refused(self) -> None:
        """A skip below zero (which read a whole index) is refused."""
        import base64

        forged = base64.urlsafe_b64encode(b"100:-5").decode().rstrip("=")
        with pytest.raises(InvalidInput):
            decode_cursor(forged)
        assert decode_cursor(encode_cursor(1700000000000, 3)) == (1700000000000.0, 3)


class TestSmallThings:
    def test_bidirectional_and_invisible_characters_are_escaped(self) -> None:
        """U+202E, U+2066, U+200B and U+FEFF are shown as escapes, not applied."""
        assert printable("a\u202eb\u2066c\u200bd\ufeff") == "a\\u202eb\\u2066c\\u200bd\\ufeff"

    def test_unsafe_redis_is_a_store_error(self) -> None:
        """The Python API's `except StoreError` handles a Redis that cannot keep the promise
        (and the CLI still exits 2 for it, as a configuration error)."""
        assert issubclass(UnsafeRedis, StoreError) and issubclass(UnsafeRedis, ConfigError)

    def test_every_command_loads_under_its_own_name(self) -> None:
        """The CLI loads each command's module only when it runs: every name in its table
        loads a command of that name."""
        context = click.Context(cli)
        loaded = {name: cli.get_command(context, name) for name in COMMANDS}
        assert {name: c.name for name, c in loaded.items() if c} == {n: n for n in COMMANDS}

    @pytest.mark.parametrize("command", ["metrics", "serve"])
    def test_servers_bind_loopback_by_default(self, command: str) -> None:
        """`adjustments metrics` listens on loopback by default, like `serve`."""
        cmd = cli.get_command(click.Context(cli), command)
        assert isinstance(cmd, click.Command)
        host = next(p for p in cmd.params if p.name == "host")
        assert host.default == "127.0.0.1"
