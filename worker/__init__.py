"""adjustments: cancel Stripe meter events asynchronously through a Celery queue.

    from adjustments import Producer

    with Producer.from_env() as producer:  # or Producer("redis://...", settings=Settings(...))
        record = producer.cancel("api_requests", "req_8f2c", api="v2")
        record.id, record.created  # keep the id; created is False for a duplicate

Everything a service needs is importable from here; other modules are internal. Importing
the package configures no logging and connects no handler that acts on another Celery app.
"""

from .config import Durability, Settings
from .errors import (
    AcceptanceUnknown,
    AdjustmentsError,
    ConfigError,
    EmbeddedRedisError,
    InvalidInput,
    NotAccepted,
    RecordNotFound,
    StoreError,
    StoreUnavailable,
    UnsafeRedis,
)
from .listing import Page, Query
from .models import ErrorInfo, Record, Status
from .producer import BulkResult, Producer
from .replay import ReplayFilter, ReplayReport
from .version import VERSION as __version__

__all__ = [
    "AcceptanceUnknown",
    "AdjustmentsError",
    "BulkResult",
    "ConfigError",
    "Durability",
    "EmbeddedRedisError",
    "ErrorInfo",
    "InvalidInput",
    "NotAccepted",
    "Page",
    "Producer",
    "Query",
    "Record",
    "RecordNotFound",
    "ReplayFilter",
    "ReplayReport",
    "Settings",
    "Status",
    "StoreError",
    "StoreUnavailable",
    "UnsafeRedis",
    "__version__",
]
