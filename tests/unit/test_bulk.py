"""Reading import files: JSON Lines and CSV, bad lines with their numbers."""

from __future__ import annotations

import io

import pytest

from adjustments.bulk import NOT_UTF8, detect_format, read_rows
from adjustments.errors import InvalidInput


class TestReadRows:
    def test_csv_payload_and_timestamp_columns_make_the_original_event(self) -> None:
        """payload.<key> and timestamp columns become the row's original_event (epoch
        seconds as a number); a row with them empty has none; reason is a plain column."""
        text = (
            "event_name,identifier,reason,payload.stripe_customer_id,payload.value,timestamp\n"
            "ev,a,dup,cus_1,5,1763719200\n"
            "ev,b,,,,\n"
        )
        rows = list(read_rows(io.StringIO(text), "csv"))
        assert rows == [
            (2, {"event_name": "ev", "identifier": "a", "reason": "dup",
                 "original_event": {"payload": {"stripe_customer_id": "cus_1", "value": "5"},
                                    "timestamp": 1763719200.0}}),
            (3, {"event_name": "ev", "identifier": "b"}),
        ]  # fmt: skip

    def test_jsonl_good_and_bad_lines(self) -> None:
        """JSONL: good lines become rows, each bad one a reason at its line number."""
        text = (
            '{"event_name": "ev", "identifier": "a"}\n'
            "\n"
            '{"event_name": "ev"}\n'
            "not json\n"
            "[1, 2]\n"
            '{"event_name": "ev", "identifier": "b", "api": "v1", "colour": "red"}\n'
            '{"event_name": "ev", "identifier": "c", "stripe_account": "acct_1"}\n'
        )
        rows = list(read_rows(io.StringIO(text), "jsonl"))
        assert rows == [
            (1, {"event_name": "ev", "identifier": "a"}),
            (3, "missing identifier"),
            (4, "invalid JSON: Expecting value"),
            (5, "not a JSON object"),
            (6, "unknown field(s): colour"),
            (7, {"event_name": "ev", "identifier": "c", "stripe_account": "acct_1"}),
        ]

    def test_csv_with_optional_columns(self) -> None:
        """CSV: optional columns may be empty; a short or long row is a bad line."""
        text = (
            "event_name,identifier,api,event_received_at\n"
            "ev,a,v1,\n"
            "ev,b,,1763726400\n"
            ",c,v2,\n"
            "ev,d,v2,2026-11-21T10:00:00Z,extra\n"
        )
        rows = list(read_rows(io.StringIO(text), "csv"))
        assert rows == [
            (2, {"event_name": "ev", "identifier": "a", "api": "v1"}),
            (3, {"event_name": "ev", "identifier": "b", "event_received_at": 1763726400.0}),
            (4, "missing event_name"),
            (5, "more cells than header columns"),
        ]

    @pytest.mark.parametrize(
        ("name", "explicit", "fmt"),
        [
            ("x.csv", None, "csv"),
            ("x.CSV", None, "csv"),
            ("x.jsonl", None, "jsonl"),
            ("<stdin>", None, "jsonl"),
            ("x.txt", "csv", "csv"),
        ],
    )
    def test_format_detection(self, name: str, explicit: str | None, fmt: str) -> None:
        """The format comes from --format, else from the file name."""
        assert detect_format(name, explicit) == fmt


def _text(raw: bytes) -> io.TextIOWrapper:
    """Bytes read as the import opens files (UTF-8, undecodable bytes kept as escapes)."""
    return io.TextIOWrapper(
        io.BytesIO(raw), encoding="utf-8-sig", errors="surrogateescape", newline=""
    )


class TestUndecodableBytes:
    def test_a_latin1_byte_in_a_csv_is_one_bad_line_and_every_other_row_is_read(self) -> None:
        """3,000 good rows, a Latin-1 byte on line 3,002, ten more rows: the bad line alone
        is reported, with its real number, and all 3,010 good rows are read."""
        lines = [b"event_name,identifier"]
        lines += [f"ev,id{i}".encode() for i in range(3000)]
        lines += ["ev,caf\u00e9".encode("latin-1")]
        lines += [f"ev,tail{i}".encode() for i in range(10)]
        rows = list(read_rows(_text(b"\n".join(lines) + b"\n"), "csv"))
        bad = [(n, r) for n, r in rows if isinstance(r, str)]
        assert bad == [(3002, NOT_UTF8)]
        assert sum(1 for _, r in rows if not isinstance(r, str)) == 3010
        assert rows[-1] == (3012, {"event_name": "ev", "identifier": "tail9"})

    def test_a_bad_byte_in_json_lines_is_reported_on_its_own_line(self) -> None:
        """JSONL: a bad byte on line 500 is reported as line 500; the lines after it are read."""
        lines = [b'{"event_name": "ev", "identifier": "id%d"}' % i for i in range(1, 600)]
        lines[499] = b'{"event_name": "ev", "identifier": "\xe9"}'
        rows = list(read_rows(_text(b"\n".join(lines)), "jsonl"))
        assert [(n, r) for n, r in rows if isinstance(r, str)] == [(500, NOT_UTF8)]
        assert len(rows) == 599

    @pytest.mark.parametrize(
        "header",
        ["ev,id1", "event_name;identifier", "event_name,ident", ""],
        ids=["no-header", "semicolons", "misspelt", "blank-first-line"],
    )
    def test_a_csv_header_without_the_required_columns_is_an_input_error(self, header: str) -> None:
        """No header, or another separator: InvalidInput with a hint, before any row."""
        text = io.StringIO(f"{header}\nev,id2\n")
        with pytest.raises(InvalidInput, match=r"CSV header has no .*comma-separated"):
            list(read_rows(text, "csv"))
