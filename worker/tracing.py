"""Trace context for the messages our outbox writes, so that a worker's span is a child of the
span that called ``cancel()``.

``apply_async`` gives tracing integrations their hook (OpenTelemetry listens to Celery's
``before_task_publish`` signal, Sentry wraps ``apply_async``), but ``cancel()`` writes its
message from a Lua script and never calls it. So the outbox asks the integrations the user has
*already imported* for the current context and puts it in the message headers, where their
worker side looks for it:

- OpenTelemetry: the global propagator's fields (``traceparent``, ``tracestate``, baggage) as
  message headers, which Celery exposes as ``task.request`` attributes for
  ``CeleryInstrumentor``'s ``task_prerun`` handler.
- Sentry: ``sentry-trace`` and ``baggage``, at the top level and in the nested ``headers``
  map that ``sentry_sdk.integrations.celery`` reads on the worker.

Neither package is a dependency: a process that has not imported one pays two dictionary
lookups per message.
"""

from __future__ import annotations

import sys
from typing import Any


def propagation_headers() -> dict[str, Any]:
    """Headers carrying the current trace context, empty when there is none to carry."""
    headers: dict[str, Any] = {}
    if "opentelemetry.trace" in sys.modules:
        _opentelemetry(headers)
    sentry = sys.modules.get("sentry_sdk")
    if sentry is not None:
        _sentry(sentry, headers)
    return headers


def _opentelemetry(headers: dict[str, Any]) -> None:
    from opentelemetry import propagate, trace

    if trace.get_current_span().get_span_context().is_valid:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        headers.update(carrier)


def _sentry(sentry: Any, headers: dict[str, Any]) -> None:
    if not sentry.get_client().is_active():
        return
    found = {"sentry-trace": sentry.get_traceparent(), "baggage": sentry.get_baggage()}
    found = {name: value for name, value in found.items() if value}
    if found:
        if "baggage" in headers and "baggage" in found:  # OpenTelemetry's baggage came first
            found["baggage"] = f"{headers['baggage']},{found['baggage']}"
        headers.update(found)
        headers["headers"] = dict(found)
