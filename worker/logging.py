"""structlog set-up: JSON lines off a terminal, console on one; stdlib (Celery) logs too.

Every event passes through ``redact_processor``, so a Stripe key never reaches an output.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .redact import redact_value


def redact_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Mask sk_/rk_ keys in every field, including the message and exception text."""
    return {key: redact_value(value) for key, value in event_dict.items()}


def _shared() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure(
    *, level: str = "INFO", stream: TextIO | None = None, json: bool | None = None
) -> None:
    """Route structlog and the stdlib root logger to one handler on ``stream``."""
    stream = stream or sys.stdout
    as_json = (not stream.isatty()) if json is None else json
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        # NO_COLOR (https://no-color.org): any non-empty value turns colours off.
        else structlog.dev.ConsoleRenderer(
            colors=stream.isatty() and not os.environ.get("NO_COLOR")
        )
    )
    tail: list[Processor] = [structlog.processors.format_exc_info] if as_json else []
    structlog.configure(
        processors=[
            *_shared(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *tail,
            redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The SDK logs request lines at INFO when asked to; keep it to warnings by default.
    logging.getLogger("stripe").setLevel(logging.WARNING)
    # Celery's "received"/"succeeded" lines would triple ours: cancellation.attempt is the line.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)


def get_logger(name: str = "adjustments") -> structlog.typing.FilteringBoundLogger:
    """A structlog logger named ``name`` (what our configure() sets up renders its name)."""
    return cast(structlog.typing.FilteringBoundLogger, structlog.get_logger(name))
