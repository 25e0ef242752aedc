"""Reading import files: JSON Lines and CSV, bad lines with their numbers."""

from __future__ import annotations

import io

import pytest

from adjustments.bulk import detect_format, read_rows


class TestReadRows:
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
