"""Helpers shared by the CLI's command modules."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from ..config import Settings, load_settings
from ..embedded import redis_url
from ..models import Record
from ..producer import Producer
from ..text import printable as printable


def settings() -> Settings:
    return load_settings()


@contextmanager
def producer_for(cfg: Settings, *, read_only: bool = False) -> Iterator[Producer]:
    """A producer on REDIS_URL (with ``REDIS_URL=embedded``, the bundled server for the
    duration of the command). ``read_only`` commands never create an embedded store."""
    with (
        redis_url(cfg.redis_url, cfg.data_dir, read_only=read_only) as url,
        Producer(url, settings=cfg) as producer,
    ):
        yield producer


def emit(data: Any, as_json: bool) -> None:
    """One JSON document, or aligned ``key  value`` lines for people."""
    if as_json:
        click.echo(json.dumps(data, default=str))
        return
    if isinstance(data, dict):
        width = max((len(k) for k in data), default=0)
        for key, value in data.items():
            shown = json.dumps(value) if isinstance(value, dict | list) else value
            click.echo(printable(f"{key:<{width}}  {'' if shown is None else shown}"))
    else:
        click.echo(printable(str(data)))


def record_line(record: Record) -> str:
    """One line for lists: id, status, API, attempts, event/identifier, and the error code
    of a failed (or retrying, expired) record."""
    e = record.last_error
    label = (e.code or e.type) if e is not None and record.error_is_current else None
    error = f"  error={label}" if label else ""
    return printable(
        f"{record.id}  {record.status.value:<10} {record.api}  attempts={record.attempts}  "
        f"{record.event_name}/{record.identifier}{error}"
    )


HISTORY_COLUMNS = (
    ("at", "at"),
    ("attempt", "#"),
    ("outcome", "outcome"),
    ("status", "status"),
    ("http_status", "http"),
    ("error_code", "error code"),
    ("generation", "key gen"),
)


def record_view(record: Record) -> list[str]:
    """A record for people: its set fields, its last error (labelled when it belongs to an
    earlier attempt), and its attempt history as a table."""
    data = record.to_dict()
    history = data.pop("history", [])
    error = data.pop("last_error", None)
    shown = {k: v for k, v in data.items() if v not in (None, "")}
    width = max(len(k) for k in [*shown, "last_error"])
    lines = [f"{key:<{width}}  {value}" for key, value in shown.items()]
    if record.last_error is not None and error:
        e = record.last_error
        when = "" if record.error_is_current else "  (from an earlier attempt)"
        what = " ".join(str(p) for p in (e.code or e.type, f"HTTP {e.http_status}") if p)
        lines.append(f"{'last_error':<{width}}  {what}: {e.message or ''}{when}")
    if history:
        rows = [[_cell(entry.get(key)) for key, _ in HISTORY_COLUMNS] for entry in history]
        heads = [title for _, title in HISTORY_COLUMNS]
        widths = [max(len(c) for c in column) for column in zip(heads, *rows, strict=False)]
        lines += ["", "attempts:"]
        for row in (heads, *rows):
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return [printable(line.rstrip()) for line in lines]


def _cell(value: object) -> str:
    return "-" if value in (None, "") else str(value)


def plural(count: int, noun: str) -> str:
    """``1 bad line``, ``2 bad lines``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def on_terminal() -> bool:
    return sys.stderr.isatty()
