"""What operators do to records: replay, compensate, reconcile, export
(``Producer.operations``; the CLI, the HTTP API and the console call these)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from . import compensation, publishing
from .compensation import CompensationReport
from .config import Settings
from .export import ExportFilter
from .export import rows as export_rows
from .intake import aware_now
from .models import Status
from .reconcile import ReconcileReport, reconcile
from .redis_errors import reading
from .replay import ReplayFilter, ReplayReport, replay
from .store import RecordStore


class Operations:
    """Operator actions on ``store``'s records; ``publish`` sends a record's task message and
    ``writing`` wraps each write (Redis's errors as ours, the server checked first)."""

    def __init__(
        self,
        store: RecordStore,
        settings: Settings,
        publish: Callable[[str], bool],
        writing: Callable[[], AbstractContextManager[None]],
    ) -> None:
        """Act on ``store``'s records as ``settings`` say; ``publish`` sends a record's task
        message, and each write runs inside ``writing()``."""
        self.store = store
        self.settings = settings
        self.publish = publish
        self.writing = writing

    def replay(
        self,
        flt: ReplayFilter | None = None,
        *,
        force: bool = False,
        dry_run: bool = False,
        now: datetime | None = None,
        progress: Callable[[int], None] | None = None,
        **filters: Any,
    ) -> ReplayReport:
        """Replay failed (or, with ``force``, expired) records: next key generation where the
        last key's outcome was definite, a fresh attempt budget, published again.

        ``flt``: a ``ReplayFilter``; or the same as keyword ``filters``: ``ids``, ``status``,
        ``event_name``, ``error_code``, ``since``, ``until``, ``limit``. ``force``: also
        replay expired records (Stripe will likely refuse them). ``dry_run``: report what would
        be replayed and change nothing. ``now``: the current time (for tests). ``progress``:
        called with 1 for each record handled (a progress bar)."""
        flt = flt or ReplayFilter(**filters)
        with self.writing():
            return replay(
                self.store,
                self.publish,
                flt,
                now=aware_now(now),
                force=force,
                dry_run=dry_run,
                progress=progress,
            )

    def compensate(
        self,
        flt: ReplayFilter | None = None,
        *,
        dry_run: bool = True,
        check_meters: bool = True,
        now: datetime | None = None,
        **filters: Any,
    ) -> CompensationReport:
        """Compensate expired records after the fact: a negative meter event each, sent by
        the workers (see ``compensation``). ``dry_run`` (the default) returns the plan:
        records, and per customer and event name the total negative value; nothing changes.

        ``flt``: a ``ReplayFilter`` with status ``expired`` (the default here), or the same
        as keyword ``filters`` (``ids``, ``event_name``, ``since``, ``until``, ``limit``).
        ``check_meters``: look each record's meter up first (needs STRIPE_API_KEY) so that
        the plan holds only what the workers will send. ``now``: the current time (tests)."""
        flt = flt or ReplayFilter(**{"status": Status.EXPIRED, **filters})
        settings = self.settings
        meters = None
        if check_meters and all(
            settings.platform(n).api_key for n in settings.platform_names or (None,)
        ):
            # The Stripe SDK is loaded only here, for a meter check: a service that enqueues
            # never pays its import.
            from . import stripe_api

            meters = stripe_api.meter_caches(settings)
        with self.writing():
            return compensation.run(
                self.store,
                self.publish,
                flt,
                now=aware_now(now),
                timestamp_mode=self.settings.compensation_timestamp,
                dry_run=dry_run,
                meters=meters,
            )

    def export(self, flt: ExportFilter | None = None, **filters: Any) -> Iterator[dict[str, str]]:
        """Every record in range as a flat row (``export.COLUMNS``), read page by page: for
        finance. ``flt``: an ``ExportFilter``, or its fields as keyword ``filters``
        (``statuses``, ``since``, ``until``, ``event_name``, ``account``). Raises
        StoreUnavailable when Redis cannot be read (rows already given stand)."""
        flt = flt or ExportFilter(**filters)
        with reading():
            yield from export_rows(self.store, flt)

    def reconcile(self, *, grace_s: float | None = None) -> ReconcileReport:
        """One reconciliation run now (``adjustments beat`` schedules them): publish again
        what is stuck, expire closed windows. ``grace_s``: how long a record may sit before it
        counts as stuck (default ``settings.reconcile_grace_s``)."""
        grace = self.settings.reconcile_grace_s if grace_s is None else grace_s
        queue, prefix, client = self.settings.queue, self.settings.key_prefix, self.store.client
        with self.writing():
            return reconcile(
                store=self.store,
                publish=self.publish,
                now=aware_now(None),
                grace_s=grace,
                tickets=lambda: publishing.outstanding(client, queue=queue, prefix=prefix),
                settle_s=self.settings.heartbeat_s + 0.5,
                compensation_timestamp=(
                    self.settings.compensation_timestamp
                    if self.settings.compensate == "expired"
                    else None
                ),
            )
