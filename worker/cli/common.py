"""Helpers shared by the CLI's command modules."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from ..config import Settings, load_settings
from ..embedded import redis_url
from ..models import Record
from ..text import printable as printable

if TYPE_CHECKING:
    from ..producer import Producer


def settings() -> Settings:
    return load_settings()


@contextmanager
def producer_for(cfg: Settings, *, read_only: bool = False) -> Iterator[Producer]:
    """A producer on REDIS_URL (with ``REDIS_URL=embedded``, the bundled server for the
    duration of the command). ``read_only`` commands never create an embedded store."""
    from ..producer import Producer

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
    return printable(
        f"{record.id}  {record.status.value:<10} {record.api}  attempts={record.attempts}  "
        f"{record.event_name}/{record.identifier}"
    )


def plural(count: int, noun: str) -> str:
    """``1 bad line``, ``2 bad lines``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def on_terminal() -> bool:
    return sys.stderr.isatty()
