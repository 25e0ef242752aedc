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
from datetime import UTC, datetime
from typing import Any, cast

from . import keys
from .bulk import batched
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
# Statuses a record never leaves: an export need not remember which of those it gave.
SETTLED = frozenset({Status.PENDING, Status.COMPLETE, Status.COMPENSATED})
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
    """Every selected record as a flat row of COLUMNS, each once, as of the export's start.
    Status by status, oldest change first. A record that changed after the start and was
    not given yet is read again at the end, once, as it stands then; one created after the
    start is left for the next export. To give none twice, the ids given in a status a
    record can still leave (queued, retrying, failed, expired, ...) are remembered; the
    settled ones (most of a large export) are not, so memory stays flat."""
    started = to_ms(datetime.now(UTC))
    changed: dict[str, None] = {}  # ids that changed since the start: read again at the end
    # Ids given in a status they may still leave, as their 64-bit hashes (a third of the
    # memory of the ids; a collision among a million is a 1 in 10^7 chance).
    given: set[int] = set()
    for status in flt.statuses:
        for record_id, row in _scan(store, status, flt):
            if _ms(row["created_at"]) > started:
                continue
            if row["status"] != status.value or _ms(row["updated_at"]) > started:
                if hash(record_id) not in given:
                    changed[record_id] = None
                continue
            if status not in SETTLED:
                given.add(hash(record_id))
            if flt.keeps(row):
                yield row
    for chunk in batched([i for i in changed if hash(i) not in given], PAGE):
        for _, row in _read(store, list(chunk)):
            if flt.keeps(row) and Status(row["status"]) in flt.statuses:
                yield row


def _scan(
    store: RecordStore, status: Status, flt: ExportFilter
) -> Iterator[tuple[str, dict[str, str]]]:
    """One status index in score order, paged by score (not offset: entries leaving the
    index while it is read must not make others skipped)."""
    low: float | str = to_ms(flt.since) if flt.since else "-inf"
    high = to_ms(flt.until) if flt.until else "+inf"
    at_low: set[str] = set()
    while True:
        page = cast(
            list[tuple[str, float]],
            store.client.zrangebyscore(
                store.index_key(status), low, high, 0, PAGE + len(at_low), withscores=True
            ),
        )
        fresh = [(i, score) for i, score in page if not (score == low and i in at_low)]
        if not fresh:
            return
        yield from _read(store, [i for i, _ in fresh])
        if len(page) < PAGE + len(at_low):
            return  # the rest of the range was in this page
        top = fresh[-1][1]
        at_low = {i for i, score in page if score == top} | (at_low if top == low else set())
        low = top


def _read(store: RecordStore, ids: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """The rows of ``ids``, one pipelined round trip; ids gone meanwhile are left out."""
    pipe = store.client.pipeline(transaction=False)
    for record_id in ids:
        pipe.hmget(keys.record(store.prefix, record_id), _FIELDS)
    for record_id, values in zip(ids, cast(list[list[str | None]], pipe.execute()), strict=True):
        if values[0] is not None:  # gone (retention) since the index was read
            yield record_id, _row(dict(zip(_FIELDS, values, strict=True)))


def _ms(iso_time: str) -> int:
    return to_ms(datetime.fromisoformat(iso_time)) if iso_time else 0


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
