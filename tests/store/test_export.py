"""The finance export on fakeredis: each record once, even while records change status
under it; filters; the encodings."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from adjustments import export
from adjustments.export import ExportFilter, encode, rows
from adjustments.models import CancelRequest, Status
from adjustments.retry import Decision
from adjustments.store import RecordStore

NOW = datetime.now(UTC) - timedelta(seconds=10)


def fill(store: RecordStore, count: int) -> list[str]:
    return [
        store.create(
            CancelRequest.build("ev", f"i{n}", api="v1", reason=f"why {n}", requested_by="ops",
                                now=NOW),
            now=NOW,
        )[0].id
        for n in range(count)
    ]  # fmt: skip


def test_every_record_once_while_records_move_under_it(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records claimed (queued → processing) halfway through the scan are neither lost nor
    given twice: they are read again at the end, as they stand then."""
    monkeypatch.setattr(export, "PAGE", 100)
    ids = fill(store, 450)
    stream = rows(store, ExportFilter())
    first = [next(stream) for _ in range(150)]
    for _ in range(120):  # 120 records leave the queued index mid-scan
        assert store.claim_next(now=datetime.now(UTC), lease_s=30).kind == "claimed"
    seen = [r["id"] for r in first + list(stream)]
    assert sorted(seen) == sorted(ids)
    statuses = {r["status"] for r in first}
    assert statuses == {"queued"}


def test_filters_and_the_snapshot(store: RecordStore) -> None:
    """Status and event-name filters; a record created after the export began waits for the
    next one."""
    ids = fill(store, 5)
    assert [r["id"] for r in rows(store, ExportFilter(statuses=[Status.FAILED]))] == []
    assert len(list(rows(store, ExportFilter(event_name="ev")))) == 5
    assert list(rows(store, ExportFilter(event_name="other"))) == []
    stream = rows(store, ExportFilter())
    first = next(stream)
    later = datetime.now(UTC) + timedelta(seconds=5)
    store.create(CancelRequest("v1", "ev", "late"), now=later)
    assert {first["id"], *(r["id"] for r in stream)} == set(ids)


def test_encodings(store: RecordStore) -> None:
    """CSV with a header (formula-looking cells quoted, negative numbers kept) and JSONL."""
    fill(store, 2)
    table = list(csv.DictReader(io.StringIO("".join(encode(rows(store, ExportFilter()), "csv")))))
    assert [r["requested_by"] for r in table] == ["ops", "ops"]
    lines = "".join(encode(rows(store, ExportFilter()), "jsonl")).splitlines()
    assert {json.loads(line)["reason"] for line in lines} == {"why 0", "why 1"}
    cells = export._safe_cells({"a": "=1+1", "b": "-5", "c": "@x", "d": "ok"})
    assert cells == {"a": "'=1+1", "b": "-5", "c": "'@x", "d": "ok"}
    assert "".join(encode(iter([]), "csv")).startswith("id,platform,api,")


def test_a_record_moved_into_an_index_already_read_is_found_at_the_end(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed record replayed (back to queued) after the queued index was read and before
    the failed one is: the final sweep of every index from the start on finds it, once."""
    from adjustments import lifecycle

    monkeypatch.setattr(export, "PAGE", 100)
    fill(store, 250)
    failed = store.create(CancelRequest("v1", "ev", "bad"), now=NOW)[0]
    claim = store.claim(failed.id, now=NOW, lease_s=30)
    lifecycle.finish(store, failed, Decision(Status.FAILED, ""), token=claim.token, now=NOW)
    stream = rows(store, ExportFilter(statuses=[Status.QUEUED, Status.FAILED]))
    first = [next(stream) for _ in range(250)]  # the queued index, all of it
    moved = store.get(failed.id)
    assert lifecycle.requeue_for_replay(store, moved, now=datetime.now(UTC))
    rest = list(stream)
    assert [r["id"] for r in rest] == [failed.id] and rest[0]["status"] == "queued"
    assert len({r["id"] for r in first}) == 250


def test_ties_of_one_score_page_in_linear_time(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel_many writes thousands of records with one score: paging by rank reads each
    once, and a record leaving the index mid-tie neither skips nor repeats another."""
    monkeypatch.setattr(export, "PAGE", 100)
    ids = fill(store, 1000)
    calls: list[int] = []
    original = store.client.zrange

    def counted(*args: object, **kw: object) -> object:
        calls.append(1)
        return original(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store.client, "zrange", counted)
    stream = rows(store, ExportFilter(statuses=[Status.QUEUED]))
    first = [next(stream)["id"] for _ in range(150)]
    for _ in range(30):  # leave the tie (deadline order: the earliest ones, read already)
        store.claim_next(now=datetime.now(UTC), lease_s=30)
    seen = first + [r["id"] for r in stream]
    assert sorted(seen) == sorted(ids)
    assert len(calls) <= 12


def test_a_restart_after_the_anchors_left_skips_by_id_not_by_memory(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When every entry the next page could anchor on left the index, the scan restarts at
    the start of their score and skips the ids read already (Redis orders equal scores by
    id): nothing is given twice or lost, and no set of ids is kept."""
    monkeypatch.setattr(export, "PAGE", 100)
    monkeypatch.setattr(export, "ANCHORS", 3)
    ids = fill(store, 500)  # one score for all
    stream = rows(store, ExportFilter(statuses=[Status.QUEUED]))
    first = [next(stream)["id"] for _ in range(100)]
    store.client.zrem(store.index_key(Status.QUEUED), *first[-3:])  # the anchors leave
    seen = first + [r["id"] for r in stream]
    assert sorted(seen) == sorted(ids)


def test_the_platform_is_a_column_and_a_filter(store: RecordStore) -> None:
    """Each row names its platform (issue 21); the filter keeps one platform's records."""
    for platform in ("us", "eu"):
        store.create(CancelRequest("v1", "ev", "same", platform=platform), now=NOW)
    exported = list(rows(store, ExportFilter()))
    assert sorted(r["platform"] for r in exported) == ["eu", "us"]
    assert [r["platform"] for r in rows(store, ExportFilter(platform="eu"))] == ["eu"]
