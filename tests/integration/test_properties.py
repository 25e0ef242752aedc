"""Properties of every input path, over generated input (Hypothesis), against a real Redis:
any input either enqueues exactly what it says or raises our input error, and nothing else."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adjustments import InvalidInput, Producer, Settings
from adjustments.bulk import FIELDS, read_rows
from adjustments.models import CancelRequest

NOW = datetime.now(UTC).replace(microsecond=0)
PREFIX = f"prop{os.getpid()}"
EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text from every Unicode category, lone surrogates included (invalid UTF-8 on a command line
# arrives as those), plus the shapes people really send.
any_text = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=120),
    st.text("abcXYZ_-.:019 ", min_size=1, max_size=100),
    st.sampled_from(["", " x", "x ", "a\nb", "\x9b[31m", "\ud800", "é" * 101]),
)
valid_text = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1, max_size=100
)
valid_accounts = st.from_regex(r"acct_[A-Za-z0-9]{1,20}(/acct_[A-Za-z0-9]{1,20})?", fullmatch=True)
accounts = st.one_of(st.none(), valid_accounts, any_text, st.integers())
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
near = st.timedeltas(min_value=timedelta(hours=-30), max_value=timedelta(hours=1)).map(
    lambda delta: NOW + delta
)
received = st.one_of(
    st.none(),
    near,
    moments,
    near.map(lambda when: when.replace(tzinfo=None)),  # naive
    near.map(lambda when: when.timestamp()),
    near.map(lambda when: when.isoformat()),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    any_text,
    st.booleans(),
)
apis = st.one_of(st.sampled_from(["v1", "v2", None, "V1", "v3", ""]), st.integers())
anything = st.one_of(st.none(), st.integers(), st.floats(), any_text, st.lists(st.integers()))


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """``usual`` about four times in five, else ``other``: every argument of a call is
    sometimes wrong, and whole calls are often right, so both outcomes are exercised."""
    return st.integers(0, 4).flatmap(lambda n: usual if n else other)


@pytest.fixture(scope="module")
def producer(redis_url: str) -> Iterator[Producer]:
    """A producer on its own key prefix and queue: no worker takes these messages."""
    cfg = Settings(key_prefix=PREFIX, queue=f"{PREFIX}.queue")
    with Producer(redis_url, settings=cfg) as p:
        yield p
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{PREFIX}*"):
        client.delete(key)
    client.close()


def our_keys(producer: Producer) -> int:
    return sum(1 for _ in producer.client.scan_iter(f"{PREFIX}*", count=1000))


def expected_api(api: object) -> object:
    return api or "v2"


class TestCancelProperties:
    @EXAMPLES
    @given(
        event_name=mostly(valid_text, st.one_of(any_text, anything)),
        identifier=mostly(valid_text, st.one_of(any_text, anything)),
        api=mostly(st.sampled_from(["v1", "v2", None]), apis),
        account=mostly(st.one_of(st.none(), valid_accounts), accounts),
        when=mostly(st.one_of(st.none(), near), received),
    )
    def test_cancel_enqueues_what_it_says_or_refuses(
        self,
        producer: Producer,
        event_name: Any,
        identifier: Any,
        api: Any,
        account: Any,
        when: Any,
    ) -> None:
        """Any input: cancel() either enqueues exactly what it returns or refuses and writes
        nothing."""
        before = our_keys(producer)
        try:
            record = producer.cancel(
                event_name,
                identifier,
                api=api,
                stripe_account=account,
                event_received_at=when,
                now=NOW,
            )
        except InvalidInput as exc:
            assert our_keys(producer) == before  # nothing written
            event(f"refused: {str(exc)[:25]}")
            return
        event("enqueued")
        stored = producer.get(record.id)
        assert stored == record
        assert (stored.event_name, stored.identifier) == (event_name, identifier)
        assert (stored.api, stored.stripe_account) == (expected_api(api), account)
        if not record.created:
            # A duplicate: the record of the first request with this identity, whatever its
            # received-at was.
            event("duplicate")
            return
        if when is None:
            assert stored.event_received_at is None
        else:
            assert stored.event_received_at is not None
            assert (
                NOW - timedelta(hours=24) < stored.event_received_at <= NOW + timedelta(minutes=5)
            )


item_values = {
    "event_name": st.one_of(valid_text, any_text, anything),
    "identifier": st.one_of(valid_text, any_text, anything),
    "api": apis,
    "stripe_account": accounts,
    "event_received_at": received,
}
items = mostly(
    st.fixed_dictionaries(
        {"event_name": valid_text, "identifier": valid_text},
        optional={"api": st.sampled_from(["v1", "v2"]), "event_received_at": near},
    ),
    st.one_of(
        st.fixed_dictionaries({}, optional=item_values),
        st.dictionaries(st.sampled_from([*FIELDS, "stripe_acount", "id"]), anything, max_size=4),
        anything,
    ),
)


class TestCancelManyProperties:
    @EXAMPLES
    @given(batch=st.lists(items, max_size=8))
    def test_each_item_is_enqueued_as_given_or_reported(
        self, producer: Producer, batch: list[Any]
    ) -> None:
        """Any batch: each item is enqueued as given or reported invalid at its position."""
        result = producer.cancel_many(batch, now=NOW)
        assert len(result.ids) == len(batch)
        invalid = {position for position, _ in result.invalid}
        event("some enqueued" if len(invalid) < len(batch) else "none enqueued")
        for position, item in enumerate(batch):
            record_id = result.ids[position]
            assert (record_id is None) == (position in invalid)
            if record_id is None:
                continue
            stored = producer.get(record_id)
            assert (stored.event_name, stored.identifier) == (
                item["event_name"],
                item["identifier"],
            )
            assert stored.api == expected_api(item.get("api"))
            assert stored.stripe_account == item.get("stripe_account")

    @given(
        batch=st.one_of(st.none(), st.integers(), st.text(), st.dictionaries(st.text(), st.text()))
    )
    def test_a_batch_that_is_not_a_list_is_an_input_error(
        self, producer: Producer, batch: Any
    ) -> None:
        """cancel_many of anything but an iterable of mappings is InvalidInput."""
        with pytest.raises(InvalidInput):
            producer.cancel_many(batch, now=NOW)


def check_parsed(rows: list[tuple[int, Any]]) -> None:
    """Parsed rows: ascending line numbers; each a reason (str) or a row a request builds from
    or refuses with InvalidInput, never another error."""
    lines = [line for line, _ in rows]
    assert lines == sorted(lines)
    for _, row in rows:
        if isinstance(row, str):
            continue
        assert set(row) <= set(FIELDS)
        with contextlib.suppress(InvalidInput):
            CancelRequest.build(
                row.get("event_name"),
                row.get("identifier"),
                api=row.get("api") or "v2",
                stripe_account=row.get("stripe_account"),
                event_received_at=row.get("event_received_at"),
                now=NOW,
            )


def _has_required_header(data: bytes) -> bool:
    """Whether csv would find event_name and identifier among these bytes' header."""
    import csv

    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="surrogateescape")
    try:
        header = csv.DictReader(text).fieldnames
    except csv.Error:
        return True  # an unreadable header: a bad line, not an input error
    if header is None or len(set(header)) < len(header):  # empty, or a repeated column
        return True
    return {"event_name", "identifier"} <= set(header)


class TestImportParserProperties:
    @EXAMPLES
    @given(data=st.binary(max_size=400), fmt=st.sampled_from(["jsonl", "csv"]))
    def test_any_bytes_parse_to_rows_or_reasons(self, data: bytes, fmt: str) -> None:
        """Binary, Latin-1, UTF-16, half a line: bad lines, or (a CSV header without the
        required columns) InvalidInput; never another exception."""
        stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="surrogateescape")
        if fmt == "csv" and not _has_required_header(data):
            with pytest.raises(InvalidInput, match="CSV header"):
                list(read_rows(stream, fmt))
            return
        check_parsed(list(read_rows(stream, fmt)))

    @EXAMPLES
    @given(text=st.text(st.characters(codec="utf-8"), max_size=400))
    def test_any_text_parses_as_json_lines(self, text: str) -> None:
        """Any text gives rows or bad lines from the JSONL parser, never an exception."""
        check_parsed(list(read_rows(io.StringIO(text), "jsonl")))

    @EXAMPLES
    @given(
        rows=st.lists(
            st.fixed_dictionaries(
                {"event_name": valid_text, "identifier": valid_text},
                optional={"api": st.sampled_from(["v1", "v2"])},
            ),
            min_size=1,
            max_size=6,
        ),
        fmt=st.sampled_from(["jsonl", "csv"]),
    )
    def test_written_rows_read_back_as_written(self, rows: list[dict[str, str]], fmt: str) -> None:
        """What a user writes with json.dumps or csv.DictWriter is what is enqueued."""
        buffer = io.StringIO(newline="")
        if fmt == "jsonl":
            buffer.write("".join(json.dumps(row) + "\n" for row in rows))
        else:
            writer = csv.DictWriter(buffer, fieldnames=["event_name", "identifier", "api"])
            writer.writeheader()
            writer.writerows(rows)
        buffer.seek(0)
        parsed = [row for _, row in read_rows(buffer, fmt)]
        assert parsed == rows
