"""Sentry's and OpenTelemetry's Celery integrations, installed as a user would, across a real
producer process, Redis and worker: the worker's spans are children of the producer's, and a
permanently failed cancellation reaches Sentry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adjustments.messages import TASK_NAME
from adjustments.sandbox import SandboxServer
from tests.helpers import start_worker, stop_worker, wait_until

pytest.importorskip("sentry_sdk", reason="sentry-sdk is not installed")
pytest.importorskip("opentelemetry.instrumentation.celery", reason="OpenTelemetry not installed")

# Both integrations set up as docs/operations.md shows, writing what they would send to files.
SETUP = """
import json, os
import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.transport import Transport
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from adjustments import Settings

OUT = os.environ["TRACE_OUT"]


class FileExporter(SpanExporter):
    def export(self, spans):
        with open(OUT + ".otel.jsonl", "a") as f:
            for span in spans:
                parent = span.parent.span_id if span.parent else 0
                f.write(json.dumps({"name": span.name,
                                    "trace": format(span.context.trace_id, "032x"),
                                    "span": format(span.context.span_id, "016x"),
                                    "parent": format(parent, "016x")}) + "\\n")
        return SpanExportResult.SUCCESS


class FileTransport(Transport):
    def capture_envelope(self, envelope):
        with open(OUT + ".sentry.jsonl", "a") as f:
            for item in envelope.items:
                event = item.get_event() or item.get_transaction_event()
                if event is not None:
                    f.write(json.dumps(event, default=str) + "\\n")


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
trace.set_tracer_provider(provider)
CeleryInstrumentor().instrument()
sentry_sdk.init(dsn="https://public@sentry.invalid/1", transport=FileTransport,
                traces_sample_rate=1.0, default_integrations=False,
                integrations=[CeleryIntegration()])
settings = Settings.from_env()
"""

PRODUCE = """
import json
import sentry_sdk
from opentelemetry import trace
import tracing_settings  # the same set-up as the worker's
from adjustments import Producer

tracer = trace.get_tracer("checkout")
with sentry_sdk.start_transaction(name="refund") as tx:
    with tracer.start_as_current_span("refund") as span:
        with Producer.from_env() as producer:
            ok = producer.cancel("ev", "tr_ok", api="v1").id
            bad = producer.cancel("ev", "tr_bad", api="v1").id
context = span.get_span_context()
print(json.dumps({"ok": ok, "bad": bad, "sentry_trace": tx.trace_id,
                  "sentry_span": tx.span_id, "otel_trace": format(context.trace_id, "032x"),
                  "otel_span": format(context.span_id, "016x")}))
"""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.usefixtures("clean")
def test_worker_spans_continue_the_producers_trace_and_failures_reach_sentry(
    tmp_path: Path, worker_env: dict[str, str], sandbox: SandboxServer, own_redis_url: str
) -> None:
    """A producer inside an OpenTelemetry span and a Sentry transaction enqueues two
    cancellations: each worker run span is a child of the producer's span, each worker
    transaction continues the producer's Sentry trace, and the permanent failure is a Sentry
    error event carrying CancellationFailed and the record id."""
    (tmp_path / "tracing_settings.py").write_text(SETUP)
    out = tmp_path / "trace"
    env = {
        **worker_env,
        "REDIS_URL": own_redis_url,
        "PYTHONPATH": str(tmp_path),
        "TRACE_OUT": str(out),
        "ADJUSTMENTS_SETTINGS_MODULE": "tracing_settings",
    }
    sandbox.logic.script("tr_bad", ["400"])
    handle = start_worker(env, tmp_path / "worker.log", concurrency=2)
    try:
        produced = subprocess.run(
            [sys.executable, "-c", PRODUCE], env=env, capture_output=True, text=True, timeout=60
        )
        assert produced.returncode == 0, produced.stderr
        ids = json.loads(produced.stdout)
        otel_path, sentry_path = Path(f"{out}.otel.jsonl"), Path(f"{out}.sentry.jsonl")

        def run_spans() -> list[dict[str, Any]]:
            return [s for s in read_jsonl(otel_path) if s["name"].startswith("run/")]

        def sentry_errors() -> list[dict[str, Any]]:
            return [e for e in read_jsonl(sentry_path) if e.get("type") != "transaction"]

        def task_transactions() -> list[dict[str, Any]]:
            return [
                e
                for e in read_jsonl(sentry_path)
                if e.get("type") == "transaction" and e.get("transaction") == TASK_NAME
            ]

        wait_until(
            lambda: len(run_spans()) == len(task_transactions()) == 2 and sentry_errors(),
            what="the worker's spans and Sentry events",
        )
    finally:
        stop_worker(handle)

    for span in run_spans():
        assert span["name"] == "run/adjustments.process_cancellation"
        assert (span["trace"], span["parent"]) == (ids["otel_trace"], ids["otel_span"])
    for event in task_transactions():
        trace = event["contexts"]["trace"]
        assert (trace["trace_id"], trace["parent_span_id"]) == (
            ids["sentry_trace"],
            ids["sentry_span"],
        )
    [error] = sentry_errors()
    [exception] = error["exception"]["values"]
    assert exception["type"] == "CancellationFailed" and ids["bad"] in exception["value"]
    assert error["contexts"]["trace"]["trace_id"] == ids["sentry_trace"]
    assert sandbox.logic.executions.get("tr_ok") == 1
