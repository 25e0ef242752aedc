"""The worker's 'consuming' verdict in its heartbeat, and the trace headers of outbox messages."""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, Task
from celery.exceptions import Reject, Retry

from adjustments.celery_app import LoggedTask
from adjustments.celery_config import create_app
from adjustments.config import Settings
from adjustments.heartbeat import ACTIVITY, RUN, Activity, consumer_problem
from adjustments.messages import TASK_NAME, TaskMessages


def consumer(*, state: int = RUN, connected: bool = True, queues: tuple[str, ...] = ("q",)) -> Any:
    return SimpleNamespace(
        blueprint=SimpleNamespace(state=state),
        connection=SimpleNamespace(connected=connected),
        task_consumer=SimpleNamespace(consuming_from=lambda name: name in queues),
    )


@pytest.mark.parametrize(
    ("kwargs", "quiet_s", "problem"),
    [
        ({}, 0, ""),
        ({"state": 0}, 0, "consumer not running"),
        ({"connected": False}, 0, "not connected to the broker"),
        ({"queues": ("other",)}, 0, "not consuming from queue q"),
        ({}, 45, "event loop stalled for 45 s"),
    ],
)
def test_consumer_problem_names_what_stops_consuming(
    kwargs: dict[str, Any], quiet_s: float, problem: str
) -> None:
    """A running, connected consumer of the queue whose loop turns is consuming; each other
    state is named."""
    activity = Activity()
    activity.loop_tick_at = time.monotonic() - quiet_s
    verdict = consumer_problem(consumer(**kwargs), activity, queue="q", stalled_after_s=30)
    assert verdict == problem


def test_messages_carry_no_trace_headers_without_a_tracing_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With neither Sentry nor OpenTelemetry imported, a message has exactly Celery's headers."""
    for name in ("sentry_sdk", "opentelemetry.trace"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    message = TaskMessages(create_app(Settings(), "redis://localhost"), "q").payload("adj_1")
    assert set(json.loads(message)["headers"]) == {"lang", "task", "id"}


def test_messages_carry_the_current_opentelemetry_context() -> None:
    """Inside an OpenTelemetry span, the message carries its traceparent; outside, none."""
    trace = pytest.importorskip("opentelemetry.trace")
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    messages = TaskMessages(create_app(Settings(), "redis://localhost"), "q")
    tracer = sdk.TracerProvider().get_tracer("test")
    assert "traceparent" not in json.loads(messages.payload("adj_1"))["headers"]
    with tracer.start_as_current_span("refund") as span:
        headers = json.loads(messages.payload("adj_1"))["headers"]
    context = span.get_span_context()
    assert (
        headers["traceparent"]
        == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    assert trace.get_current_span() is not span


@pytest.mark.parametrize("ending", ["return", "retry", "reject", "fail"])
def test_a_cancellation_counts_in_flight_only_while_it_runs(ending: str) -> None:
    """However a cancellation task ends (returned, retried, rejected as when its retry cannot
    be published, or failed), it leaves the in-flight count that reconciliation reads: Celery
    skips after_return for a retry or a rejection, which once left the count too high for
    ever and the lost message never replaced (found by the chaos soak)."""
    app = Celery("inflight", set_as_current=False, task_cls=LoggedTask)
    seen: list[int] = []

    @app.task(bind=True, name=TASK_NAME)
    def task(self: Task) -> str:  # type: ignore[type-arg]
        seen.append(ACTIVITY.in_flight)
        if ending == "retry":
            raise Retry("again")
        if ending == "reject":
            raise Reject("the retry could not be published", requeue=False)
        if ending == "fail":
            raise ValueError("permanent")
        return "done"

    before = ACTIVITY.in_flight
    task.apply()
    assert seen == [before + 1]
    assert ACTIVITY.in_flight == before
