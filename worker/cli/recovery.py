"""CLI commands for recovery and bulk work: replay, compensate, export, reconcile, beat,
import."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import UTC, datetime
from itertools import chain
from typing import IO, Any

import click

from ..bulk import BATCH_SIZE, Row, batched, detect_format, open_input, read_rows
from ..config import Settings
from ..errors import RecordNotFound
from ..export import ExportFilter, encode
from ..models import Status, parse_time
from ..replay import EXPIRED_RISK, ReplayFilter, require_force
from .common import (
    emit,
    on_terminal,
    plural,
    printable,
    producer_for,
    record_line,
    settings,
)


@click.command(name="replay")
@click.option("--id", "ids", multiple=True, help="A request id to replay (repeatable).")
@click.option(
    "--status",
    "status_",
    type=click.Choice(["failed", "expired"]),
    default="failed",
    show_default=True,
)
@click.option("--event-name", help="Only records of this event name.")
@click.option("--error-code", help="Only records whose last error has this code.")
@click.option("--platform", help="Only this platform's records (ADJUSTMENTS_PLATFORMS).")
@click.option("--since", help="Reached its status at or after this ISO time.")
@click.option("--until", help="Reached its status at or before this ISO time.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@click.option("--dry-run", is_flag=True, help="List what would be replayed; change nothing.")
@click.option("--force", is_flag=True, help="Allow expired records (Stripe will likely refuse).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary.")
def replay_cmd(
    ids: tuple[str, ...],
    status_: str,
    event_name: str | None,
    error_code: str | None,
    platform: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    dry_run: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Put failed cancellations back on the queue with the next idempotency-key generation."""
    cfg = settings()
    flt = ReplayFilter(
        ids=ids,
        status=Status(status_),
        event_name=event_name,
        error_code=error_code,
        platform=platform,
        since=parse_time("--since", since),
        until=parse_time("--until", until),
        limit=limit,
    )
    if not dry_run:  # a preview never needs --force
        require_force(flt, force, flag="--force")
    if force and not as_json:
        click.echo(f"warning: --force: {EXPIRED_RISK}", err=True)
    with producer_for(cfg) as producer:
        now = datetime.now(UTC)
        if dry_run:
            report = producer.operations.replay(flt, now=now, force=force, dry_run=True)
        else:
            total = len(ids) or limit
            bar = (
                click.progressbar(length=total, label="replaying", file=sys.stderr)
                if on_terminal()
                else nullcontext()
            )
            with bar as progress:
                step = progress.update if progress is not None else None
                report = producer.operations.replay(flt, now=now, force=force, progress=step)
                if progress is not None:  # fewer records than the limit: the bar still ends
                    progress.update(max(0, total - progress.pos))
    if as_json:
        emit(report.to_dict(), True)
        _fail_on_unknown_ids(report.skipped)
        return
    if dry_run:
        for record in report.selected:
            click.echo(record_line(record))
    for record_id, reason in report.skipped:
        click.echo(printable(f"skipped {record_id}: {reason}"), err=True)
    verb = "would replay" if dry_run else "replayed"
    count = len(report.selected) if dry_run else len(report.replayed)
    click.echo(f"{verb} {count}, skipped {len(report.skipped)}")
    if dry_run and not force and any(r.status is Status.EXPIRED for r in report.selected):
        click.echo(f"note: expired records are replayed only with --force: {EXPIRED_RISK}")
    _fail_on_unknown_ids(report.skipped)


def _fail_on_unknown_ids(skipped: list[tuple[str, str]]) -> None:
    """Ids that name no record: exit 1 with one line (a typo must not look like success)."""
    unknown = [record_id for record_id, reason in skipped if reason == "not found"]
    if unknown:
        raise RecordNotFound(", ".join(unknown))


@click.command(name="reconcile")
@click.option("--grace-s", type=click.FloatRange(0), help="Override ADJUSTMENTS_RECONCILE_GRACE_S.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's counts as one JSON object.")
def reconcile_cmd(grace_s: float | None, as_json: bool) -> None:
    """Run one reconciliation now (beat runs it on a schedule)."""
    with producer_for(settings()) as producer:
        report = producer.operations.reconcile(grace_s=grace_s)
    emit(report.to_dict(), as_json)


class ImportProgress:
    """Progress by line of the file on a terminal (a bar on stderr that ends at 100 %), and
    bad-line messages on lines of their own, never drawn over the bar."""

    def __init__(self, file: IO[str]) -> None:
        self.total = 0
        if on_terminal() and file.seekable():
            self.total = sum(1 for _ in file)
            file.seek(0)
        self.bar: Any = None
        self.done = 0

    def __enter__(self) -> ImportProgress:
        if self.total:
            self.bar = click.progressbar(length=self.total, label="importing", file=sys.stderr)
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            if exc[0] is None:
                self.reached(self.total)
            self.bar.__exit__(*exc)

    def reached(self, line: int) -> None:
        """Every line up to ``line`` is dealt with."""
        if self.bar is not None and line > self.done:
            self.bar.update(min(line, self.total) - self.done)
            self.done = min(line, self.total)

    def bad_line(self, line: int, reason: str) -> None:
        if self.bar is not None:
            click.echo("\r\x1b[2K", err=True, nl=False)  # clear the bar's line; it redraws
        click.echo(f"line {line}: {printable(reason)}", err=True)


@click.command(name="import")
@click.argument("file", metavar="FILE")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), help="Default: by extension.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
def import_cmd(file: str, fmt: str | None, as_json: bool) -> None:
    """Enqueue cancellations from JSON Lines or CSV (FILE, or - for stdin).

    Bad lines (not UTF-8, not valid JSON or CSV, invalid fields) are reported in file order
    with their line number and skipped; every good line is enqueued. Exit code 0 when every
    line was good, 1 when any was bad, 2 when the file cannot be imported at all (e.g. a CSV
    header without event_name and identifier).
    """
    cfg = settings()
    fmt = detect_format(file, fmt)
    try:
        stream = open_input(file)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot open {file!r}: {exc.strerror}", param_hint="FILE"
        ) from None
    with stream:
        progress = ImportProgress(stream)  # counts the lines first (on a terminal)
        rows = read_rows(stream, fmt)
        first = next(rows, None)  # a CSV header without the required columns raises here
        entries = chain([first] if first else [], rows)
        summary = _import(cfg, progress, entries)
    bad = summary["bad"]
    if as_json:
        emit(summary, True)
    else:
        click.echo(
            f"enqueued {summary['enqueued']} ({summary['created']} new, "
            f"{summary['duplicates']} already known), {plural(len(bad), 'bad line')}"
        )
    if bad:
        sys.exit(1)


def _import(
    cfg: Settings, progress: ImportProgress, entries: Iterator[tuple[int, Row | str]]
) -> dict[str, Any]:
    """Enqueue the good rows a batch at a time; report each batch's bad lines (unreadable or
    refused by validation) in file order as the batch is done."""
    bad: list[tuple[int, str]] = []
    totals = {"created": 0, "duplicates": 0}
    with producer_for(cfg) as producer, progress:
        for chunk in batched(entries, BATCH_SIZE):
            good = [(line, row) for line, row in chunk if not isinstance(row, str)]
            problems = [(line, row) for line, row in chunk if isinstance(row, str)]
            if good:
                result = producer.cancel_many([row for _, row in good])
                problems += [(good[position][0], reason) for position, reason in result.invalid]
                totals["created"] += result.created
                totals["duplicates"] += result.duplicates
            for line, reason in sorted(problems):
                progress.bad_line(line, reason)
            bad += sorted(problems)
            progress.reached(chunk[-1][0])
    return {
        **totals,
        "enqueued": totals["created"] + totals["duplicates"],
        "bad_lines": len(bad),
        "bad": [{"line": n, "reason": r} for n, r in bad],
    }


@click.command(name="compensate")
@click.option("--id", "ids", multiple=True, help="A request id to compensate (repeatable).")
@click.option(
    "--status",
    "status_",
    type=click.Choice(["expired"]),
    default="expired",
    show_default=True,
    help="Only expired records are compensated.",
)
@click.option("--event-name", help="Only records of this event name.")
@click.option("--since", help="Expired at or after this ISO time.")
@click.option("--until", help="Expired at or before this ISO time.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@click.option("--dry-run", is_flag=True, help="Print the plan; send nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary.")
def compensate_cmd(
    ids: tuple[str, ...],
    status_: str,
    event_name: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Undo expired cancellations with negative usage (raw sum meters only): the plan first."""
    cfg = settings()
    flt = ReplayFilter(
        ids=ids,
        status=Status(status_),
        event_name=event_name,
        since=parse_time("--since", since),
        until=parse_time("--until", until),
        limit=limit,
    )
    with producer_for(cfg) as producer:
        plan = producer.operations.compensate(flt, dry_run=True)
        if dry_run or not plan.plan.records:
            _show_plan(plan.to_dict(), as_json, verb="would compensate")
            return
        if not yes:
            if as_json or not on_terminal():
                raise click.UsageError("compensating sends meter events: confirm with --yes")
            _show_plan(plan.to_dict(), False, verb="would compensate")
            click.confirm("send these compensating meter events?", abort=True)
        report = producer.operations.compensate(flt, dry_run=False)
    _show_plan(report.to_dict(), as_json, verb="compensating")


def _show_plan(data: dict[str, Any], as_json: bool, *, verb: str) -> None:
    """The plan as JSON, or one line per customer and event name and a total line."""
    if as_json:
        emit(data, True)
        return
    for row in data["by_customer"]:
        click.echo(
            printable(
                f"{row['customer']}  {row['event_name']}  {plural(row['records'], 'record')}  "
                f"total {row['total_value']}"
            )
        )
    for item in data["skipped"]:
        click.echo(printable(f"skipped {item['id']}: {item['reason']}"), err=True)
    count = data["begun"] if verb == "compensating" else data["records"]
    click.echo(f"{verb} {plural(count, 'record')}, skipped {len(data['skipped'])}")
    if not data["meters_checked"]:
        click.echo(
            "note: meters not checked (no STRIPE_API_KEY): the workers still check each one "
            "and skip what a negative event would not undo"
        )


@click.command(name="export")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv",
              show_default=True)  # fmt: skip
@click.option("--since", help="Last changed at or after this ISO time.")
@click.option("--until", help="Last changed at or before this ISO time.")
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice([s.value for s in Status]),
    help="Only records in this status (repeatable; default all).",
)  # fmt: skip
@click.option("--event-name", help="Only records of this event name.")
@click.option("--account", help="Only records of this connected account ('' for none).")
@click.option("--platform", help="Only records of this platform (ADJUSTMENTS_PLATFORMS).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file instead of stdout.")  # fmt: skip
def export_cmd(
    fmt: str,
    since: str | None,
    until: str | None,
    statuses: tuple[str, ...],
    event_name: str | None,
    account: str | None,
    platform: str | None,
    output: str | None,
) -> None:
    """Stream every record in range for finance: status, reason, who asked, the customer and
    value, Stripe's ids and the compensation (see docs/finance.md)."""
    flt = ExportFilter(
        statuses=tuple(Status(s) for s in statuses) or tuple(Status),
        since=parse_time("--since", since),
        until=parse_time("--until", until),
        event_name=event_name,
        account=account,
        platform=platform,
    )
    cfg = settings()
    count = 0

    def counted(rows: Iterator[dict[str, str]]) -> Iterator[dict[str, str]]:
        nonlocal count
        for row in rows:
            count += 1
            yield row

    with producer_for(cfg) as producer:
        out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout  # noqa: SIM115
        try:
            for chunk in encode(counted(producer.operations.export(flt)), fmt):
                out.write(chunk)
        finally:
            if output:
                out.close()
    if output:
        click.echo(f"exported {plural(count, 'record')} to {output}", err=True)
