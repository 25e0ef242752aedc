"""Reading cancellations from JSON Lines or CSV, each row with its line number."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from .errors import InvalidInput

FIELDS = (
    "event_name",
    "identifier",
    "api",
    "stripe_account",
    "event_received_at",
    "original_event",
    "reason",
    "requested_by",
    "platform",
)
REQUIRED = ("event_name", "identifier")

Row = dict[str, Any]


def detect_format(name: str, explicit: str | None) -> str:
    """``jsonl`` or ``csv``: from --format, else from the file's extension (stdin: jsonl)."""
    if explicit:
        return explicit
    lower = name.lower()
    if lower.endswith(".csv"):
        return "csv"
    return "jsonl"


def _original_from_columns(raw: dict[str, Any]) -> dict[str, Any]:
    """A CSV row's ``payload.<key>`` and ``timestamp`` columns as its ``original_event``
    (empty cells left out; no such columns: the row as it was)."""
    columns = [k for k in raw if k.startswith("payload.") or k == "timestamp"]
    if not columns:
        return raw
    row = {k: v for k, v in raw.items() if k not in columns}
    payload = {k[len("payload.") :]: raw[k] for k in columns if k != "timestamp" and raw[k]}
    stamp = raw.get("timestamp")
    if payload or stamp:
        with contextlib.suppress(ValueError):  # else an ISO time, validated with the rest
            stamp = float(stamp) if isinstance(stamp, str) else stamp
        row["original_event"] = {"payload": payload, "timestamp": stamp or None}
    return row


def _normalise(raw: dict[str, Any]) -> Row | str:
    raw = _original_from_columns(raw)
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        return f"unknown field(s): {', '.join(unknown)}"
    row = {k: v for k, v in raw.items() if v not in (None, "")}
    missing = [f for f in REQUIRED if f not in row]
    if missing:
        return f"missing {', '.join(missing)}"
    received = row.get("event_received_at")
    if isinstance(received, str):
        with contextlib.suppress(ValueError):  # else an ISO time, validated with the rest
            row["event_received_at"] = float(received)  # epoch seconds in a CSV cell
    return row


# Files are opened with errors="surrogateescape" (see ``open_input``): a byte that is not
# UTF-8 becomes a lone surrogate in its own line's text, so that line alone is bad and every
# other line is still read, with its true line number.
NOT_UTF8 = "not UTF-8 text"
UNDECODABLE = "not UTF-8 text from here on (the rest of the file is skipped)"
_ESCAPED_BYTE = re.compile(r"[\udc80-\udcff]")
CSV_HEADER_HINT = (
    "the first line must name the columns, comma-separated, e.g. "
    "event_name,identifier,api,stripe_account,event_received_at"
)


def open_input(path: str) -> IO[str]:
    """``path`` (or ``-`` for stdin) as text for ``read_rows``: UTF-8, a leading byte-order
    mark dropped (Excel writes one), undecodable bytes kept as escapes so that each bad line
    can be reported on its own."""
    if path == "-":
        return io.TextIOWrapper(
            sys.stdin.buffer, encoding="utf-8-sig", errors="surrogateescape", newline=""
        )
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def read_rows(stream: IO[str], fmt: str) -> Iterator[tuple[int, Row | str]]:
    """Yield ``(line number, row)`` or ``(line number, reason)`` for a bad line, in file
    order. Raises InvalidInput, before yielding anything, for a CSV whose header lacks a
    required column (no header, or another separator)."""
    if fmt == "csv":
        yield from _csv_rows(stream)
        return
    line = 0
    try:
        for line, text in enumerate(stream, start=1):
            if _ESCAPED_BYTE.search(text):
                yield line, NOT_UTF8
                continue
            yield from _json_line(line, text)
    except UnicodeDecodeError:  # a stream opened strictly: nothing after here can be read
        yield line + 1, UNDECODABLE


def _csv_header(reader: csv.DictReader[str]) -> tuple[list[str] | None, str | None]:
    """The header's columns, or why the file cannot be read (None, None: an empty file)."""
    try:
        fieldnames = reader.fieldnames
    except UnicodeDecodeError:
        return None, UNDECODABLE
    except csv.Error as exc:
        return None, f"unreadable CSV header ({exc}); the file is skipped"
    if fieldnames is None:
        return None, None
    repeated = sorted({f for f in fieldnames if fieldnames.count(f) > 1})
    if repeated:
        return None, f"repeated column(s) in the header: {', '.join(repeated)}"
    return list(fieldnames), None


def _csv_rows(stream: IO[str]) -> Iterator[tuple[int, Row | str]]:
    reader = csv.DictReader(stream)
    fieldnames, problem = _csv_header(reader)
    if fieldnames is None:
        if problem:
            yield 1, problem
        return
    absent = [f for f in REQUIRED if f not in fieldnames]
    if absent:
        shown = ",".join(fieldnames)[:80]
        raise InvalidInput(
            f"the CSV header has no {' or '.join(absent)} column (it reads {shown!r}): "
            + CSV_HEADER_HINT
        )
    header_unknown = sorted(
        f
        for f in set(fieldnames) - set(FIELDS)
        if not f.startswith("payload.") and f != "timestamp"
    )
    try:
        for raw in reader:
            line = reader.line_num
            if any(_ESCAPED_BYTE.search(v) for v in raw.values() if isinstance(v, str)):
                yield line, NOT_UTF8
            elif None in raw:
                yield line, "more cells than header columns"
            elif header_unknown:
                yield line, f"unknown field(s): {', '.join(header_unknown)}"
            else:
                yield line, _normalise(dict(raw))
    except UnicodeDecodeError:
        yield reader.line_num + 1, UNDECODABLE
    except csv.Error as exc:  # a NUL byte, an oversized field: the reader cannot go on
        yield reader.line_num, f"unreadable CSV ({exc}); the rest of the file is skipped"


def _json_line(line: int, text: str) -> Iterator[tuple[int, Row | str]]:
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        yield line, f"invalid JSON: {exc.msg}"
        return
    except RecursionError:
        yield line, "JSON nested too deeply"
        return
    except ValueError as exc:  # e.g. an integer past Python's 4,300-digit conversion limit
        yield line, f"invalid JSON: {exc}"
        return
    if not isinstance(data, dict):
        yield line, "not a JSON object"
        return
    yield line, _normalise(data)


T = TypeVar("T")
BATCH_SIZE = 1000  # requests per Redis round trip in bulk enqueue (cancel_many, the import)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter): itertools.batched, which
    Python 3.11 lacks. Bulk enqueue and the import both write in these batches."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
