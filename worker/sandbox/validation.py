"""Request validation after the official schemas in shared/stripe-openapi (v1 form, v2 JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import parse_qsl

MAX_LEN = 100


@dataclass(frozen=True)
class Adjustment:
    event_name: str
    identifier: str


class Invalid(Exception):
    """A request that Stripe would answer with 400."""

    def __init__(self, message: str, *, code: str = "parameter_invalid", param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


def parse_v1(body: bytes) -> Adjustment:
    """``event_name=…&type=cancel&cancel[identifier]=…``; unknown parameters are refused."""
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise Invalid("Invalid form body", code="parameter_invalid") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key.startswith("expand["):
            continue
        if key not in ("event_name", "type", "cancel[identifier]"):
            raise Invalid(f"Received unknown parameter: {key}", code="parameter_unknown", param=key)
        form[key] = value
    for required in ("event_name", "type"):
        if not form.get(required):
            raise Invalid(
                f"Missing required param: {required}.", code="parameter_missing", param=required
            )
    if form["type"] != "cancel":
        raise Invalid("Invalid type: must be one of cancel", param="type")
    if not form.get("cancel[identifier]"):
        raise Invalid(
            "Missing required param: cancel[identifier].",
            code="parameter_missing",
            param="cancel[identifier]",
        )
    _check_len("event_name", form["event_name"])
    _check_len("cancel[identifier]", form["cancel[identifier]"])
    return Adjustment(form["event_name"], form["cancel[identifier]"])


def parse_v2(body: bytes) -> Adjustment:
    """``{"event_name", "type": "cancel", "cancel": {"identifier"}}``, all required."""
    try:
        data = json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Invalid("Request body is not valid JSON", code="invalid_request") from None
    if not isinstance(data, dict):
        raise Invalid("Request body must be a JSON object", code="invalid_request")
    event_name, kind, cancel = data.get("event_name"), data.get("type"), data.get("cancel")
    if not isinstance(event_name, str) or not event_name:
        raise Invalid("event_name is required", code="invalid_request", param="event_name")
    if kind != "cancel":
        raise Invalid("type must be cancel", code="invalid_request", param="type")
    identifier = cancel.get("identifier") if isinstance(cancel, dict) else None
    if not isinstance(identifier, str) or not identifier:
        raise Invalid(
            "cancel.identifier is required for type cancel",
            code="invalid_cancel_configuration",
            param="cancel.identifier",
        )
    _check_len("event_name", event_name)
    _check_len("cancel.identifier", identifier)
    return Adjustment(event_name, identifier)


def _check_len(param: str, value: str) -> None:
    if len(value) > MAX_LEN:
        raise Invalid(f"{param} must be at most {MAX_LEN} characters", param=param)
