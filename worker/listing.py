"""Cursor pagination over the status indexes, newest first, with filters.

Each status index is a sorted set scored by the time a record reached that status. A page
merges the indexes asked for in (score, id) order, newest first. The cursor is the last
score returned and how many records with exactly that score were already returned, so a
page costs one ZREVRANGEBYSCORE per index however deep it is. Records that change status
between two pages may be missed or seen twice, as in any live listing.

Filters that no index holds (event name, identifier, error code, platform) are applied to the
records read; a page then scans at most ``SCAN_LIMIT`` candidates and may return fewer than
``limit`` records with a cursor to go on.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from .errors import InvalidInput
from .models import Record, Status
from .store import RecordStore

_DIGITS = re.compile(r"[0-9]{1,20}")
SCAN_LIMIT = 5000
MAX_LIMIT = 500


@dataclass(frozen=True)
class Query:
    statuses: Sequence[Status] = tuple(Status)
    event_name: str | None = None
    identifier: str | None = None
    error_code: str | None = None
    platform: str | None = None  # a platform's name; "" for records without one
    since: datetime | None = None  # when the record reached its status
    until: datetime | None = None
    limit: int = 50

    def matches(self, record: Record) -> bool:
        """Whether ``record`` passes every filter of the query."""
        if self.event_name is not None and record.event_name != self.event_name:
            return False
        if self.identifier is not None and record.identifier != self.identifier:
            return False
        if self.platform is not None and (record.platform or "") != self.platform:
            return False
        code = record.last_error.code if record.last_error else None
        return self.error_code is None or code == self.error_code

    @property
    def filtered(self) -> bool:
        """Whether any filter beyond the statuses is set."""
        return any(
            v is not None
            for v in (self.event_name, self.identifier, self.error_code, self.platform)
        )


@dataclass
class Page:
    records: list[Record] = field(default_factory=list)
    next_cursor: str | None = None


def encode_cursor(score_ms: float, skip: int) -> str:
    return base64.urlsafe_b64encode(f"{score_ms:.0f}:{skip}".encode()).decode().rstrip("=")


MAX_SCORE_MS = 2**53  # scores are epoch milliseconds; past this a float loses whole numbers
MAX_SKIP = 100_000  # records sharing one millisecond that a cursor may step over


def decode_cursor(cursor: str) -> tuple[float, int]:
    """``(score_ms, skip)`` of a cursor ``encode_cursor`` made; InvalidInput for anything
    else, numbers out of range included (a negative skip would read a whole index)."""
    refused = InvalidInput("cursor is not one this server returned")
    if len(cursor) > 64 or not cursor.isascii():
        raise refused
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score_text, skip_text = text.split(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise refused from None
    if not (_DIGITS.fullmatch(score_text) and _DIGITS.fullmatch(skip_text)):
        raise refused
    score, skip = int(score_text), int(skip_text)
    if score > MAX_SCORE_MS or skip > MAX_SKIP:
        raise refused
    return float(score), skip


def _candidates(
    store: RecordStore, statuses: Sequence[Status], high_ms: float, skip: int, count: int
) -> list[tuple[float, str]]:
    """The next ``count`` (score, id) pairs at or below ``high_ms``, newest first, after
    skipping ``skip`` pairs scored exactly ``high_ms``."""
    high: float | str = "+inf" if math.isinf(high_ms) else high_ms
    pipe = store.client.pipeline(transaction=False)
    for status in statuses:
        pipe.zrevrangebyscore(
            store.index_key(status), high, "-inf", 0, skip + count, withscores=True
        )
    groups = cast(list[list[tuple[str, float]]], pipe.execute())
    merged = heapq.merge(
        *[[(score, rid) for rid, score in group] for group in groups], reverse=True
    )
    out: list[tuple[float, str]] = []
    for score, rid in merged:
        if score == high_ms and skip > 0:
            skip -= 1
            continue
        out.append((score, rid))
        if len(out) == count:
            break
    return out


def page(store: RecordStore, query: Query, cursor: str | None = None) -> Page:
    """One page of records for ``query``, from ``cursor`` (None: the newest)."""
    if not 1 <= query.limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {query.limit}")
    if cursor:
        high_ms, skip = decode_cursor(cursor)
    else:
        high_ms = query.until.timestamp() * 1000 if query.until else float("inf")
        skip = 0
    low_ms = query.since.timestamp() * 1000 if query.since else float("-inf")
    result = Page()
    scanned = 0
    exhausted = False
    batch = query.limit if not query.filtered else max(query.limit, 200)
    while len(result.records) < query.limit and scanned < SCAN_LIMIT:
        pairs = _candidates(store, query.statuses, high_ms, skip, batch)
        in_range = [pair for pair in pairs if pair[0] >= low_ms]
        records = {r.id: r for r in store.get_many([rid for _, rid in in_range])}
        consumed = 0
        for score, rid in in_range:
            skip = skip + 1 if score == high_ms else 1
            high_ms = score
            scanned += 1
            consumed += 1
            record = records.get(rid)
            if record is not None and query.matches(record):
                result.records.append(record)
                if len(result.records) == query.limit:
                    break
        if consumed == len(in_range) and (len(pairs) < batch or len(in_range) < len(pairs)):
            exhausted = True  # the index (or the time range) has nothing more
            break
    result.next_cursor = None if exhausted else encode_cursor(high_ms, skip)
    return result
