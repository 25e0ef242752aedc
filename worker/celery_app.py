"""The Celery app: ``celery -A adjustments.celery_app worker`` works as-is.

The app object exists at import time (Celery's loader needs it), but it reads no settings and
opens no connection until it is first configured: ``on_configure`` builds everything then.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import structlog
from celery import Celery, Task, signals
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher

from .celery_config import celery_config
from .config import load_settings
from .embedded import resolve_url
from .errors import ConfigError
from .heartbeat import ACTIVITY, STALLED_LOOP_S, consumer_problem, start_beating
from .logging import configure
from .messages import TASK_NAME
from .metrics import serve_worker_metrics
from .runtime import STOPPING, get_runtime


class LoggedTask(Task):  # type: ignore[type-arg]
    """Our tasks bind their Celery task id to structlog's context and clear only what they
    bound: per task, not through Celery's global task_prerun/task_postrun signals, which
    would act on every app's tasks in a host process.

    Around the call, not in ``before_start``/``after_return``: Celery skips ``after_return``
    for a task that retries or is rejected (a retry whose message cannot be published is
    rejected), and a cancellation counted in flight for ever would make reconciliation
    believe its message is still on its way."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Only cancellation messages count as in flight: reconciliation reads the count to
        # tell a lost message from a held one, and must not count its own.
        counted = self.name == TASK_NAME
        if counted:
            ACTIVITY.begin()
        structlog.contextvars.bind_contextvars(task_id=self.request.id)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            structlog.contextvars.unbind_contextvars("task_id")
            if counted:
                ACTIVITY.end()


class UnbufferedEventDispatcher(EventDispatcher):
    """Celery's event dispatcher without the task-event buffer, for a threads pool.

    With an event loop, Celery's worker buffers task events and has the loop flush them, and
    neither step is safe when pool threads send them: ``flush`` publishes a group's list and
    then empties it, so an event a thread appends meanwhile is lost; and the thread asks for
    the flush by adding to the hub's ``_ready`` set, which the loop swaps out and iterates
    without a lock, so the request can be lost too (the event then waits for another task's
    flush, for ever if none comes). Monitors (Flower, ``celery events``) under-counted. Here
    every event is published at once, under the dispatcher's own lock, from the thread that
    sends it: one Redis PUBLISH per event, only while events are enabled (they are off by
    default)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["buffer_group"] = None
        kwargs["on_send_buffered"] = None
        super().__init__(*args, **kwargs)


class AdjustmentsEvents(Events):
    dispatcher_cls = UnbufferedEventDispatcher  # type: ignore[assignment]


class AdjustmentsCelery(Celery):
    """Our app: configured from our settings when first used, never at import time."""

    events_cls = AdjustmentsEvents  # type: ignore[assignment]

    def on_configure(self) -> None:  # type: ignore[override]
        # A method rather than Celery's on_configure signal: a signal handler's exception is
        # logged and swallowed, and the worker would then start on Celery's default broker
        # (amqp://localhost) instead of stopping with one line naming REDIS_URL.
        try:
            settings = load_settings()
            url = resolve_url(settings.redis_url, settings.data_dir)
        except ConfigError as exc:
            if "celery.bin.celery" in sys.modules:  # the celery command: one line, exit 2
                print(f"adjustments: error: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            raise
        self.conf.update(celery_config(settings, url))


app = AdjustmentsCelery("adjustments", set_as_current=False, task_cls=LoggedTask)


def _setup_logging(loglevel: str | int | None = None, **_: Any) -> None:
    """Celery's own logs go through our structlog pipeline (connecting here stops its set-up)."""
    level = loglevel if isinstance(loglevel, str) else "INFO"
    configure(level=level)


def use_our_logging() -> None:
    """Route this process's logging through ours: called only by our own worker and beat
    (never at import), so a host app that imports ``adjustments`` keeps its own logging."""
    signals.setup_logging.connect(_setup_logging, weak=False)


@signals.celeryd_init.connect
def _worker_init(instance: Any = None, **_: Any) -> None:
    """``celery -A adjustments.celery_app worker``: our logging, for our app's worker only."""
    if getattr(instance, "app", None) is app:
        use_our_logging()
        signals.worker_ready.connect(_start_heartbeat, weak=False)
        signals.worker_ready.connect(_serve_metrics, weak=False)
        signals.worker_shutting_down.connect(_stop_waiting, weak=False)


_heartbeat_stop: list[threading.Event] = []


def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Our worker is consuming: beat in Redis until it shuts down (``adjustments health``),
    saying in each beat whether its consumer still consumes."""
    runtime = get_runtime(str(app.conf.adjustments_redis_url))
    settings = runtime.settings
    controller = getattr(sender, "controller", None)
    hub = getattr(sender, "hub", None)
    if hub is not None:  # the hub survives reconnects (its timers do not; on_tick does)
        hub.on_tick.add(ACTIVITY.tick)
        stalled_after_s = max(STALLED_LOOP_S, 3 * settings.heartbeat_s)
        ACTIVITY.consumer_problem = lambda: consumer_problem(
            sender, ACTIVITY, queue=settings.queue, stalled_after_s=stalled_after_s
        )
    _heartbeat_stop.append(
        start_beating(
            runtime.store.client,
            prefix=settings.key_prefix,
            node=str(getattr(sender, "hostname", "") or "adjustments"),
            interval_s=settings.heartbeat_s,
            concurrency=int(getattr(controller, "concurrency", 0) or settings.worker_concurrency),
            queue=settings.queue,
        )
    )


def _serve_metrics(**_: Any) -> None:
    """ADJUSTMENTS_METRICS_PORT set: this worker's Prometheus metrics on that port."""
    port = get_runtime(str(app.conf.adjustments_redis_url)).settings.metrics_port
    if port:
        serve_worker_metrics(port)


def _stop_waiting(**_: Any) -> None:
    """Warm shutdown: threads waiting for a rate-limit slot give their message back, and the
    heartbeat stops (its key is deleted)."""
    STOPPING.set()
    for stop in _heartbeat_stop:
        stop.set()
