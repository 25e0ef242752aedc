"""The sandbox's meters and meter events (issue 20): enough of Stripe's billing meters to
check a compensation end to end. Meters are defined through ``POST /_sandbox/meters``; meter
events arrive on ``POST /v1/billing/meter_events`` (form) and ``POST /v2/billing/meter_events``
(JSON) and are validated as Stripe documents them (a known event name, the meter's payload
keys, a numeric value, a timestamp within the past 35 days, an identifier not seen before);
``GET /v1/billing/meters`` lists the meters and ``GET /v1/billing/meters/{id}/event_summaries``
sums a customer's usage."""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

FORMULAS = ("sum", "count", "last")
WINDOWS = (None, "hour", "day")
MAX_AGE_S = 35 * 24 * 3600
MAX_AHEAD_S = 5 * 60


class MeterError(Exception):
    """A meter event Stripe would refuse with a 400."""

    def __init__(self, message: str, code: str = "parameter_invalid") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Meter:
    id: str
    event_name: str
    formula: str = "sum"
    event_time_window: str | None = None
    customer_key: str = "stripe_customer_id"
    value_key: str = "value"

    def to_stripe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "billing.meter",
            "created": 1_700_000_000,
            "customer_mapping": {"event_payload_key": self.customer_key, "type": "by_id"},
            "default_aggregation": {"formula": self.formula},
            "display_name": self.event_name,
            "event_name": self.event_name,
            "event_time_window": self.event_time_window,
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": 1_700_000_000,
            "value_settings": {"event_payload_key": self.value_key},
        }


@dataclass
class MeterEvent:
    meter_id: str
    customer: str
    value: Decimal
    timestamp: int
    identifier: str
    account: str


@dataclass
class MeterBook:
    """Meters and the events recorded on them, per sandbox (thread-safe)."""

    meters: dict[str, Meter] = field(default_factory=dict)
    events: list[MeterEvent] = field(default_factory=list)
    identifiers: set[tuple[str, str]] = field(default_factory=set)  # (account, identifier)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def define(self, spec: dict[str, Any]) -> Meter:
        """A meter from ``{"event_name", "formula", "event_time_window", ...}``."""
        name = spec.get("event_name")
        if not isinstance(name, str) or not name:
            raise ValueError("a meter needs an event_name")
        formula = spec.get("formula", "sum")
        if formula not in FORMULAS:
            raise ValueError(f"formula must be one of {FORMULAS}")
        window = spec.get("event_time_window")
        if window not in WINDOWS:
            raise ValueError("event_time_window must be null, hour or day")
        meter = Meter(
            id="mtr_" + secrets.token_hex(12),
            event_name=name,
            formula=formula,
            event_time_window=window,
            customer_key=str(spec.get("customer_key", "stripe_customer_id")),
            value_key=str(spec.get("value_key", "value")),
        )
        with self.lock:
            if any(m.event_name == name for m in self.meters.values()):
                raise ValueError(f"a meter for {name!r} exists already")
            self.meters[meter.id] = meter
        return meter

    def list_page(self, limit: int, starting_after: str | None) -> dict[str, Any]:
        with self.lock:
            ids = sorted(self.meters)
        if starting_after:
            ids = [i for i in ids if i > starting_after]
        page = ids[:limit]
        return {
            "object": "list",
            "url": "/v1/billing/meters",
            "has_more": len(ids) > limit,
            "data": [self.meters[i].to_stripe() for i in page],
        }

    def record(self, api: str, body: bytes, account: str) -> dict[str, Any]:
        """Validate and record one meter event; its Stripe object, or MeterError."""
        name, payload, identifier, timestamp = _parse(api, body)
        with self.lock:
            meter = next((m for m in self.meters.values() if m.event_name == name), None)
            if meter is None:
                raise MeterError(f"No active meter was found for event_name {name}.")
            customer = payload.get(meter.customer_key)
            if not customer:
                raise MeterError(f"Missing {meter.customer_key} in payload.")
            raw = payload.get(meter.value_key, "1" if meter.formula == "count" else None)
            try:
                value = Decimal(str(raw))
            except InvalidOperation:
                raise MeterError(f"Value {raw!r} for {meter.value_key} is not a number.") from None
            if not value.is_finite():
                raise MeterError(f"Value {raw!r} for {meter.value_key} is not a number.")
            now = int(time.time())
            if timestamp < now - MAX_AGE_S or timestamp > now + MAX_AHEAD_S:
                raise MeterError(
                    "Timestamp must be within the past 35 calendar days and no more than 5 "
                    "minutes in the future.",
                    code="timestamp_out_of_range",
                )
            scope = (account, identifier)
            if scope in self.identifiers:
                raise MeterError(f"An event already exists with identifier {identifier}.")
            self.identifiers.add(scope)
            self.events.append(
                MeterEvent(meter.id, str(customer), value, timestamp, identifier, account)
            )
        created = datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
        if api == "v1":
            return {
                "object": "billing.meter_event",
                "created": now,
                "event_name": name,
                "identifier": identifier,
                "livemode": False,
                "payload": payload,
                "timestamp": timestamp,
            }
        return {
            "object": "v2.billing.meter_event",
            "created": created,
            "event_name": name,
            "identifier": identifier,
            "livemode": False,
            "payload": payload,
            "timestamp": created,
        }

    def usage(self, meter_id: str, customer: str, account: str = "") -> Decimal:
        """The meter's aggregated value for ``customer`` over every event recorded."""
        with self.lock:
            meter = self.meters.get(meter_id)
            rows = [
                e
                for e in self.events
                if e.meter_id == meter_id and e.customer == customer and e.account == account
            ]
        if meter is None or not rows:
            return Decimal(0)
        if meter.event_time_window is not None:  # pre-aggregated: the latest per window
            span = 3600 if meter.event_time_window == "hour" else 86400
            latest: dict[int, MeterEvent] = {}
            for e in rows:
                latest[e.timestamp // span] = e
            rows = list(latest.values())
        if meter.formula == "count":
            return Decimal(len(rows))
        if meter.formula == "last":
            return rows[-1].value
        return sum((e.value for e in rows), Decimal(0))

    def summaries(self, meter_id: str, query: dict[str, str]) -> dict[str, Any]:
        customer = query.get("customer", "")
        if meter_id not in self.meters:
            raise MeterError(f"No such billing meter: '{meter_id}'", code="resource_missing")
        if not customer:
            raise MeterError("Missing required param: customer.", code="parameter_missing")
        value = self.usage(meter_id, customer)
        return {
            "object": "list",
            "url": f"/v1/billing/meters/{meter_id}/event_summaries",
            "has_more": False,
            "data": [
                {
                    "id": "mtrusg_" + secrets.token_hex(8),
                    "object": "billing.meter_event_summary",
                    "aggregated_value": float(value),
                    "end_time": int(query.get("end_time") or 0),
                    "livemode": False,
                    "meter": meter_id,
                    "start_time": int(query.get("start_time") or 0),
                }
            ],
        }


def _parse(api: str, body: bytes) -> tuple[str, dict[str, str], str, int]:
    """(event_name, payload, identifier, timestamp) of a v1 form or v2 JSON meter event."""
    if api == "v1":
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            raise MeterError("Invalid form body") from None
        form = dict(pairs)
        payload = {k[len("payload[") : -1]: v for k, v in pairs if k.startswith("payload[")}
        name, identifier = form.get("event_name", ""), form.get("identifier", "")
        raw_ts = form.get("timestamp")
        try:
            timestamp = int(raw_ts) if raw_ts else int(time.time())
        except ValueError:
            raise MeterError("Invalid integer: timestamp") from None
    else:
        try:
            data = json.loads(body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise MeterError("Request body is not valid JSON", code="invalid_request") from None
        if not isinstance(data, dict):
            raise MeterError("Request body must be a JSON object", code="invalid_request")
        name = data.get("event_name") or ""
        payload = data.get("payload") or {}
        identifier = data.get("identifier") or ""
        if not isinstance(payload, dict) or not all(isinstance(v, str) for v in payload.values()):
            raise MeterError("payload must be a map of strings", code="invalid_request")
        raw = data.get("timestamp")
        try:
            timestamp = int(datetime.fromisoformat(raw).timestamp()) if raw else int(time.time())
        except (TypeError, ValueError):
            raise MeterError("timestamp must be an ISO 8601 time", code="invalid_request") from None
    if not name:
        raise MeterError("Missing required param: event_name.", code="parameter_missing")
    if not identifier:
        identifier = "mev_" + secrets.token_hex(12)  # Stripe makes one when none is given
    if len(identifier) > 100:
        raise MeterError("identifier must be at most 100 characters")
    return name, dict(payload), identifier, timestamp


def meter_event_identifier(api: str, body: bytes) -> str:
    """The identifier a meter event request names ('' when it names none)."""
    try:
        if api == "v1":
            return dict(parse_qsl(body.decode(), keep_blank_values=True)).get("identifier", "")
        data = json.loads(body or b"null")
    except (UnicodeDecodeError, ValueError):
        raise MeterError("Request body is not valid", code="invalid_request") from None
    return str(data.get("identifier") or "") if isinstance(data, dict) else ""
