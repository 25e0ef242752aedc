"""Input that used to slip through or crash: each is now one clear InvalidInput, nothing
written (issue 9, point 7, the cases that do not depend on its redesign)."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from adjustments.bulk import read_rows
from adjustments.cli.common import printable
from adjustments.errors import InvalidInput
from adjustments.models import CancelRequest, parse_time
from adjustments.producer import Producer
from tests.helpers import fake_producer

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def producer() -> Iterator[Producer]:
    """A producer whose store is fakeredis (only the validation in front of it is tested)."""
    with fake_producer() as p:
        yield p


class TestAccount:
    @pytest.mark.parametrize("account", ["acct_1\n", "acct_1 ", "xacct_1", "acct_"])
    def test_account_is_matched_in_full(self, account: str) -> None:
        """A trailing newline no longer passes (the pattern was matched with $)."""
        with pytest.raises(InvalidInput, match="stripe_account"):
            CancelRequest.build("ev", "id", api="v2", stripe_account=account, now=NOW)


class TestCancelMany:
    def test_a_misspelt_key_is_refused(self, producer: Producer) -> None:
        """stripe_acount would have sent the cancellation to the platform account."""
        result = producer.cancel_many(
            [{"event_name": "e", "identifier": "i", "stripe_acount": "acct_1"}]
        )
        assert result.invalid == [(0, "unknown field(s): stripe_acount")] and result.created == 0

    @pytest.mark.parametrize("items", [None, 5, "abc", {"event_name": "e"}])
    def test_items_that_are_not_a_list_of_mappings(self, producer: Producer, items: object) -> None:
        """cancel_many of a string, a mapping or a number is InvalidInput."""
        with pytest.raises(InvalidInput, match="iterable of mappings"):
            producer.cancel_many(items)  # type: ignore[arg-type]

    @pytest.mark.parametrize("now", [datetime(2026, 11, 22, 12, 0), "2026-11-22", 5])
    def test_now_must_be_an_aware_datetime(self, producer: Producer, now: object) -> None:
        """now= must be a timezone-aware datetime."""
        with pytest.raises(InvalidInput, match="timezone-aware"):
            producer.cancel("ev", "id", now=now)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="timezone-aware"):
            producer.cancel_many([], now=now)  # type: ignore[arg-type]


class TestFiles:
    def test_a_repeated_header_column_is_one_bad_line(self) -> None:
        """A CSV header that repeats a column is one bad line, and nothing is read."""
        rows = list(read_rows(io.StringIO("event_name,identifier,identifier\ne,a,b\n"), "csv"))
        assert rows == [(1, "repeated column(s) in the header: identifier")]

    def test_excel_byte_order_mark_is_read_away(self) -> None:
        """`import` opens files as utf-8-sig, so Excel's BOM does not spoil the header."""
        raw = "\ufeffevent_name,identifier\ne,a\n".encode()
        text = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig")
        assert list(read_rows(text, "csv")) == [(2, {"event_name": "e", "identifier": "a"})]

    def test_the_since_hint_is_a_value_that_is_accepted(self) -> None:
        """The example a refused --since suggests is itself accepted."""
        with pytest.raises(InvalidInput) as info:
            parse_time("--since", "2026-11-22")
        hint = str(info.value).rsplit("e.g. ", 1)[1]
        assert parse_time("--since", hint) == datetime(2026, 11, 22, tzinfo=UTC)


class TestMoreEdges:
    def test_a_received_at_before_year_one_in_utc_is_out_of_range(self) -> None:
        """A received-at before year 1 in UTC is out of range, not a crash."""
        with pytest.raises(InvalidInput, match="out of range"):
            CancelRequest.build(
                "ev", "id", api="v2", event_received_at="0001-01-01T00:00:00+14:00", now=NOW
            )

    def test_an_undecodable_file_is_one_bad_line(self) -> None:
        """Latin-1 bytes read as UTF-8: one bad line (at or before the bad bytes: text is
        decoded a block at a time), not a traceback."""
        raw = b'{"event_name": "e", "identifier": "a"}\n{"identifier": "caf\xe9"}\n'
        rows = list(read_rows(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"), "jsonl"))
        assert rows == [(1, "not UTF-8 text from here on (the rest of the file is skipped)")]

    def test_deeply_nested_json_is_a_bad_line(self) -> None:
        """Deeply nested JSON is a bad line, not a RecursionError."""
        text = "[" * 100_000 + "]" * 100_000 + "\n"
        assert list(read_rows(io.StringIO(text), "jsonl")) == [(1, "JSON nested too deeply")]

    @pytest.mark.parametrize(
        ("raw", "shown"),
        [
            ("a\x9bb", "a\\x9bb"),
            ("a\x1b[31mb", "a\\x1b[31mb"),
            ("a\ud800b", "a\\ud800b"),
            ("a\u202eb", "a\\u202eb"),
        ],
    )
    def test_control_characters_are_escaped_when_printed(self, raw: str, shown: str) -> None:
        """A C1 CSI, an ANSI escape, a lone surrogate: shown escaped, never sent raw."""
        assert printable(raw) == shown


class TestCliSurface:
    def test_no_arguments_prints_the_help_on_several_lines(self) -> None:
        """adjustments with no arguments prints the whole help and exits 2."""
        result = subprocess.run(
            [sys.executable, "-m", "adjustments.cli"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 2
        assert result.stderr.count("\n") > 10 and "Commands:" in result.stderr
