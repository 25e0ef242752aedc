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
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from . import keys
from .bulk import batched
from .errors import InvalidInput
from .models import ErrorInfo, Status, iso, to_ms
from .store import RecordStore

FORMATS = ("csv", "jsonl")
PAGE = 2000
ANCHORS = 8  # entries tried as the next page's anchor before re-reading a tie
COLUMNS = (
    "id",
    "platform",
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
    "platform",
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
    """Which records: statuses (default all), a range on ``updated_at``, an event name, a
    connected account ("" for the Stripe account's own), a platform."""

    statuses: Sequence[Status] = tuple(Status)
    since: datetime | None = None
    until: datetime | None = None
    event_name: str | None = None
    account: str | None = None
    platform: str | None = None  # one of ADJUSTMENTS_PLATFORMS

    def keeps(self, row: dict[str, str]) -> bool:
        """Whether an exported ``row`` passes the filters that are not read from an index."""
        if self.event_name is not None and row["event_name"] != self.event_name:
            return False
        if self.platform is not None and row["platform"] != self.platform:
            return False
        return self.account is None or row["account"] == self.account


def rows(store: RecordStore, flt: ExportFilter) -> Iterator[dict[str, str]]:
    """Every selected record as a flat row of COLUMNS, each once, as of the export's start.

    Status by status, oldest change first. A record that changes after the start (every
    change sets ``updated_at`` and re-scores it in its new status's index) is not given by
    the scan but read again at the end, once, as it stands then, unless the scan gave it
    before it changed; a record created after the start is left for the next export. To
    tell, the ids given in a status a record can still leave (queued, retrying, failed,
    expired, ...) are kept as 64-bit hashes in an array (8 MB a million); the settled ones
    (pending, complete, compensated: most of a large export) are not."""
    started = iso(datetime.now(UTC))  # ISO 8601 in UTC with a Z: compared as text
    changed: dict[str, None] = {}
    # 8 bytes an id (a collision among a million: a 1 in 10^7 chance), looked through once.
    given = array("q")
    for status in flt.statuses:
        for record_id, row in _scan(store, status, flt):
            if row["created_at"] > started:
                continue
            if row["status"] != status.value or row["updated_at"] > started:
                changed[record_id] = None
                continue
            if status not in SETTLED:
                given.append(hash(record_id))
            if flt.keeps(row):
                yield row
    # Every record that changed since the start sits in some index with a score at or after
    # it (the time it got there; for processing, its lease's end): those the scan missed
    # (moved into an index it had passed) are found here.
    since_start = to_ms(parse_time_z(started))
    for status in Status:
        for record_id in _ids_from(store, status, since_start):
            changed[record_id] = None
    wanted = {hash(i) for i in changed}
    seen = {h for h in given if h in wanted} if wanted else set()
    late = [i for i in changed if hash(i) not in seen]
    low = iso(flt.since) if flt.since else ""
    high = iso(flt.until) if flt.until else "~"
    for chunk in batched(late, PAGE):
        for _, row in _read(store, list(chunk)):
            if (
                row["created_at"] <= started
                and Status(row["status"]) in flt.statuses
                and low <= row["updated_at"] <= high
                and flt.keeps(row)
            ):
                yield row


def parse_time_z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ids_from(store: RecordStore, status: Status, low_ms: int) -> Iterator[str]:
    key = store.index_key(status)
    offset = 0
    while True:
        ids = cast(list[str], store.client.zrangebyscore(key, low_ms, "+inf", offset, PAGE))
        yield from ids
        if len(ids) < PAGE:
            return
        offset += len(ids)


def _scan(
    store: RecordStore, status: Status, flt: ExportFilter
) -> Iterator[tuple[str, dict[str, str]]]:
    """One status index in score order. Paged by rank from the last entry read (looked up
    again each page), not by offset or score: entries leaving the index while it is read
    must not make others skipped, and a cancel_many writes thousands with one score."""
    key = store.index_key(status)
    low = to_ms(flt.since) if flt.since else None
    high = to_ms(flt.until) if flt.until else None
    client = store.client
    start = int(client.zcount(key, "-inf", f"({low}")) if low is not None else 0
    read_up_to: tuple[float, str] | None = None  # after a restart: (score, id) read already
    while True:
        page = cast(
            list[tuple[str, float]], client.zrange(key, start, start + PAGE - 1, withscores=True)
        )
        inside = [
            (i, sc)
            for i, sc in page
            if (high is None or sc <= high) and (read_up_to is None or (sc, i) > read_up_to)
        ]
        yield from _read(store, [i for i, _ in inside])
        if len(page) < PAGE or (high is not None and page[-1][1] > high):
            return
        start, restarted = _after(store, key, page)
        last_id, last_score = page[-1]
        # Redis orders equal scores by id, so after a restart at the start of the last
        # score's entries, those up to the last id read are skipped: no set of ids is kept
        # (a cancel_many of a million records gives them all one score).
        read_up_to = (last_score, last_id) if restarted else None


def _after(store: RecordStore, key: str, page: list[tuple[str, float]]) -> tuple[int, bool]:
    """The rank after the last entry of ``page`` still in the index with its score; if none
    of the last few is, the rank where the last score's entries begin (and True)."""
    pipe = store.client.pipeline(transaction=False)
    tail = page[-ANCHORS:][::-1]
    for record_id, _ in tail:
        pipe.zrank(key, record_id)
        pipe.zscore(key, record_id)
    answers = pipe.execute()
    for n, (_, score) in enumerate(tail):
        rank, now_score = answers[2 * n], answers[2 * n + 1]
        if rank is not None and now_score == score:
            return int(rank) + 1, False
    return int(store.client.zcount(key, "-inf", f"({page[-1][1]}")), True


def _read(store: RecordStore, ids: list[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """The rows of ``ids``, one pipelined round trip; ids gone meanwhile are left out."""
    pipe = store.client.pipeline(transaction=False)
    for record_id in ids:
        pipe.hmget(keys.record(store.prefix, record_id), _FIELDS)
    for record_id, values in zip(ids, cast(list[list[str | None]], pipe.execute()), strict=True):
        if values[0] is not None:  # gone (retention) since the index was read
            yield record_id, _row(dict(zip(_FIELDS, values, strict=True)))


def _row(data: dict[str, str | None]) -> dict[str, str]:
    def get(name: str) -> str:
        return data.get(name) or ""

    payload: dict[str, Any] = {}
    if get("original_event"):
        payload = json.loads(get("original_event")).get("payload", {})
    error = ErrorInfo.from_json(get("last_error"))
    return {
        "id": get("id"),
        "platform": get("platform"),
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
    writer = csv.writer(buffer, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(COLUMNS)
    for count, row in enumerate(records, start=1):
        if fmt == "csv":
            writer.writerow([_safe(row[c]) for c in COLUMNS])
        else:
            buffer.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        if count % 1000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    tail = buffer.getvalue()
    if tail or fmt == "csv":
        yield tail


_FORMULA = frozenset("=+-@\t\r")


def _safe(value: str) -> str:
    """A cell a spreadsheet would run as a formula (=, +, -, @ first) gets a leading quote:
    a reason typed by anyone must not become code on a finance laptop (CSV injection). A
    negative number stays a number."""
    if value[:1] in _FORMULA and not _number(value):
        return "'" + value
    return value


def _safe_cells(row: dict[str, str]) -> dict[str, str]:
    return {name: _safe(value) for name, value in row.items()}


def _number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
