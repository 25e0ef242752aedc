"""Replay: put dead letters (``failed``, or with force ``expired``) back on the queue."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from . import lifecycle
from .errors import InvalidInput
from .logging import get_logger
from .models import Record, Status, to_ms
from .store import RecordStore

log = get_logger("adjustments.replay")
REPLAYABLE = (Status.FAILED, Status.EXPIRED)
EXPIRED_RISK = (
    "Stripe refuses a cancellation more than 24 h after it received the event, so the replay "
    "will most likely fail again"
)


def require_force(flt: ReplayFilter, force: bool, *, flag: str = "force") -> None:
    """A filter for expired records needs ``force`` (ids name their records: each expired
    one is skipped and reported instead). ``flag``: how the caller spells force."""
    if flt.status is Status.EXPIRED and not force and not flt.ids:
        raise InvalidInput(f"expired records are replayed only with {flag}: {EXPIRED_RISK}")


PAGE = 500


@dataclass(frozen=True)
class ReplayFilter:
    """Which records to replay: ``ids``, or a status with optional filters."""

    ids: Sequence[str] = ()
    status: Status = Status.FAILED
    event_name: str | None = None
    error_code: str | None = None
    platform: str | None = None  # a platform's name ("" for records without one)
    since: datetime | None = None  # on the time the record reached its status
    until: datetime | None = None
    limit: int = 1000

    def __post_init__(self) -> None:
        # A status may be given as its name ("failed"), as everywhere a status is taken.
        object.__setattr__(self, "status", Status.parse(self.status))
        if isinstance(self.ids, str):
            raise InvalidInput("ids must be a list of request ids, not one string")

    def matches(self, record: Record) -> bool:
        """Whether ``record`` passes every filter (its status aside)."""
        if self.event_name is not None and record.event_name != self.event_name:
            return False
        if self.platform is not None and (record.platform or "") != self.platform:
            return False
        code = record.last_error.code if record.last_error else None
        return self.error_code is None or code == self.error_code


@dataclass
class ReplayReport:
    selected: list[Record] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    dry_run: bool = False

    def to_dict(self) -> dict[str, object]:
        """As JSON-ready values (``--json``, the HTTP API)."""
        return {
            "dry_run": self.dry_run,
            "selected": len(self.selected),
            "replayed": len(self.replayed),
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped],
            "ids": [r.id for r in self.selected] if self.dry_run else self.replayed,
        }


def select(
    store: RecordStore, flt: ReplayFilter, *, force: bool, dry_run: bool = False
) -> tuple[list[Record], list[tuple[str, str]]]:
    """Records matching ``flt`` (newest first) and the ids named but not replayable. A dry
    run never needs ``force``: it previews expired records as a forced replay would take
    them."""
    if flt.status not in REPLAYABLE:
        raise InvalidInput(f"only failed or expired records can be replayed, not {flt.status}")
    if dry_run:
        force = True
    require_force(flt, force)
    if flt.ids:
        found = {r.id: r for r in store.get_many(list(flt.ids))}
        chosen, skipped = [], []
        for record_id in dict.fromkeys(flt.ids):
            record = found.get(record_id)
            reason = _why_not(record, force)
            if reason:
                skipped.append((record_id, reason))
            elif record is not None:
                chosen.append(record)
        return chosen[: flt.limit], skipped
    low = to_ms(flt.since) if flt.since else "-inf"
    high = to_ms(flt.until) if flt.until else "+inf"
    chosen = []
    offset = 0
    while len(chosen) < flt.limit:
        ids = store.ids_by_score(
            flt.status, low_ms=low, high_ms=high, offset=offset, limit=PAGE, newest_first=True
        )
        if not ids:
            break
        offset += len(ids)
        chosen.extend(r for r in store.get_many(ids) if flt.matches(r))
    return chosen[: flt.limit], []


def _why_not(record: Record | None, force: bool) -> str:
    if record is None:
        return "not found"
    if record.status is Status.EXPIRED and not force:
        return "expired (replay with force; Stripe will most likely refuse it)"
    if record.status not in REPLAYABLE:
        return f"status is {record.status.value}, not failed"
    return ""


def replay(
    store: RecordStore,
    publish: Callable[[str], bool],
    flt: ReplayFilter,
    *,
    now: datetime,
    force: bool = False,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Requeue the selected records with the next key generation and publish them."""
    records, skipped = select(store, flt, force=force, dry_run=dry_run)
    report = ReplayReport(selected=records, skipped=skipped, dry_run=dry_run)
    if dry_run:
        return report
    for record in records:
        if lifecycle.requeue_for_replay(store, record, now=now, force=force):
            publish(record.id)  # a failed publish leaves it queued: reconciliation sends it
            report.replayed.append(record.id)
        else:
            report.skipped.append((record.id, "changed status meanwhile (already replayed?)"))
        if progress is not None:
            progress(1)
    log.info(
        "replay.run",
        selected=len(records),
        replayed=len(report.replayed),
        skipped=len(report.skipped),
        forced=force,
    )
    return report
