"""The finance export (issue 20): every record in a range as CSV or JSONL, streamed.

Records are read page by page from the status indexes (each scored by the time the record
reached its status, i.e. its ``updated_at``), so memory stays flat however many there are,
and each page is one pipelined round trip of HMGETs (no record objects are built: the rows
are made from the hash fields directly). ``since``/``until`` select on that time: an export
of November holds every record whose last change fell in November, with its status then.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from . import keys
from .errors import InvalidInput
from .models import ErrorInfo, Status, to_ms
from .store import RecordStore

FORMATS = ("csv", "jsonl")
PAGE = 2000
COLUMNS = (
    "id",
    "api",
    "event_name",
    "identifier",
    "account",
    "status",
    "created_at",
    "updated_at",
    "reason",
    "requested_by",
    "customer",
    "value",
    "stripe_request_id",
    "adjustment_id",
    "compensation_identifier",
    "compensation_error",
    "last_error_code",
)
# The hash fields a row is made of (absent ones read as empty; see Record.from_hash).
_FIELDS = (
    "id",
    "api",
    "event_name",
    "identifier",
    "stripe_account",
    "status",
    "created_at",
    "updated_at",
    "reason",
    "requested_by",
    "original_event",
    "stripe_request_id",
    "adjustment_id",
    "compensation_identifier",
    "compensation_error",
    "last_error",
)
CUSTOMER_KEY, VALUE_KEY = "stripe_customer_id", "value"  # Stripe's default payload keys


@dataclass(frozen=True)
class ExportFilter:
    """Which records: statuses (default all), a range on ``updated_at``, an event name, an
    account ("" for the platform's own)."""

    statuses: Sequence[Status] = tuple(Status)
    since: datetime | None = None
    until: datetime | None = None
    event_name: str | None = None
    account: str | None = None

    def keeps(self, row: dict[str, str]) -> bool:
        if self.event_name is not None and row["event_name"] != self.event_name:
            return False
        return self.account is None or row["account"] == self.account


def rows(store: RecordStore, flt: ExportFilter) -> Iterator[dict[str, str]]:
    """Every selected record as a flat row of COLUMNS, status by status, oldest change
    first; a record that changes status while the export runs may appear in neither or
    both statuses (the export is not a snapshot) — its id tells."""
    low = to_ms(flt.since) if flt.since else "-inf"
    high = to_ms(flt.until) if flt.until else "+inf"
    for status in flt.statuses:
        offset = 0
        while True:
            ids = store.ids_by_score(status, low_ms=low, high_ms=high, offset=offset, limit=PAGE)
            if not ids:
                break
            offset += len(ids)
            pipe = store.client.pipeline(transaction=False)
            for record_id in ids:
                pipe.hmget(keys.record(store.prefix, record_id), _FIELDS)
            for values in cast(list[list[str | None]], pipe.execute()):
                if values[0] is None:  # gone (retention) since the index was read
                    continue
                row = _row(dict(zip(_FIELDS, values, strict=True)))
                if flt.keeps(row):
                    yield row


def _row(data: dict[str, str | None]) -> dict[str, str]:
    def get(name: str) -> str:
        return data.get(name) or ""

    payload: dict[str, Any] = {}
    if get("original_event"):
        payload = json.loads(get("original_event")).get("payload", {})
    error = ErrorInfo.from_json(get("last_error"))
    return {
        "id": get("id"),
        "api": get("api"),
        "event_name": get("event_name"),
        "identifier": get("identifier"),
        "account": get("stripe_account"),
        "status": get("status"),
        "created_at": get("created_at"),
        "updated_at": get("updated_at") or get("created_at"),
        "reason": get("reason"),
        "requested_by": get("requested_by"),
        "customer": str(payload.get(CUSTOMER_KEY, "")),
        "value": str(payload.get(VALUE_KEY, "")),
        "stripe_request_id": get("stripe_request_id"),
        "adjustment_id": get("adjustment_id"),
        "compensation_identifier": get("compensation_identifier"),
        "compensation_error": get("compensation_error"),
        "last_error_code": (error.code or error.type or "") if error else "",
    }


def encode(records: Iterator[dict[str, str]], fmt: str) -> Iterator[str]:
    """``records`` as text chunks of CSV (a header first) or JSONL, a page of rows each."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format must be csv or jsonl, got {fmt!r}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if fmt == "csv":
        writer.writeheader()
    for count, row in enumerate(records, start=1):
        if fmt == "csv":
            writer.writerow(_safe_cells(row))
        else:
            buffer.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        if count % 1000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    tail = buffer.getvalue()
    if tail or fmt == "csv":
        yield tail


def _safe_cells(row: dict[str, str]) -> dict[str, str]:
    """Cells a spreadsheet would run as a formula (=, +, -, @ first) get a leading quote:
    a reason typed by anyone must not become code on a finance laptop (CSV injection). A
    negative number stays a number."""
    safe = {}
    for name, value in row.items():
        if value[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(value):
            value = "'" + value
        safe[name] = value
    return safe


def _number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
