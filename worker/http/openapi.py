"""The OpenAPI 3.1 document served at ``/openapi.json``, written to say exactly what the
handlers do (a test checks every route against it and every answer against its schema)."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..models import Status
from .api import MAX_BATCH, MAX_BATCH_BODY, MAX_BODY

TEXT_ID = {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[^\\x00-\\x1f\\x7f]+$"}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


ERRORS = {
    "401": _error("No bearer token, or not a known one."),
    "403": _error("The token's role may not do this."),
    "503": _error("Redis is unavailable; for a POST, nothing was accepted (retry it)."),
}


def document() -> dict[str, Any]:
    statuses = [s.value for s in Status]
    cancel_request = {
        "type": "object",
        "additionalProperties": False,
        "required": ["event_name", "identifier"],
        "properties": {
            "event_name": {**TEXT_ID, "description": "The meter's event name."},
            "identifier": {**TEXT_ID, "description": "The meter event's identifier."},
            "api": {
                "type": "string",
                "enum": ["v1", "v2"],
                "description": "Stripe endpoint; the server's ADJUSTMENTS_STRIPE_API if absent.",
            },
            "stripe_account": {
                "type": ["string", "null"],
                "description": "A connected account (acct_...; for v2 also acct_.../acct_...).",
            },
            "event_received_at": {
                "type": ["string", "number", "null"],
                "description": "When Stripe received the event: ISO 8601 with an offset, or "
                "epoch seconds; within the last 24 h.",
            },
            "original_event": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "required": ["payload", "timestamp"],
                "description": "The meter event as it was sent to Stripe: what a compensation "
                "negates if the window is missed (raw sum meters only).",
                "properties": {
                    "payload": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "String values, e.g. stripe_customer_id and value; "
                        "at most 20 keys and 2,048 bytes as JSON.",
                    },
                    "timestamp": {
                        "type": ["string", "number"],
                        "description": "ISO 8601 with an offset, or epoch seconds; within "
                        "the last 35 days.",
                    },
                },
            },
            "platform": {
                "type": ["string", "null"],
                "description": "Which of the deployment's own Stripe accounts "
                "(ADJUSTMENTS_PLATFORMS); the first if absent.",
            },
            "reason": {
                "type": ["string", "null"],
                "maxLength": 500,
                "description": "Why it is cancelled, for finance. Who asked (requested_by) is "
                "the name of the token used.",
            },
        },
    }
    record = {
        "type": "object",
        "required": ["id", "status", "event_name", "identifier", "api", "created_at"],
        "properties": {
            "id": {"type": "string", "description": "The request id (adj_...)."},
            "api": {"type": "string", "enum": ["v1", "v2"]},
            "event_name": {"type": "string"},
            "identifier": {"type": "string"},
            "stripe_account": {"type": ["string", "null"]},
            "status": {"type": "string", "enum": statuses},
            "attempts": {"type": "integer"},
            "generation": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "event_received_at": {"type": ["string", "null"], "format": "date-time"},
            "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
            "stripe_status": {
                "type": ["string", "null"],
                "description": "The adjustment's status at Stripe (pending, complete).",
            },
            "adjustment_id": {"type": ["string", "null"]},
            "adjustment_created": {"type": ["string", "null"], "format": "date-time"},
            "livemode": {"type": ["boolean", "null"]},
            "stripe_request_id": {"type": ["string", "null"]},
            "last_error": {
                "oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/StripeError"}]
            },
            "idempotency_key": {"type": "string"},
            "replays": {"type": "integer"},
            "key_outcome": {"type": ["string", "null"]},
            "history": {"type": "array", "items": {"type": "object"}},
            "original_event": {"type": ["object", "null"]},
            "reason": {"type": ["string", "null"]},
            "requested_by": {"type": ["string", "null"]},
            "phase": {
                "type": ["string", "null"],
                "description": "compensate once a missed window is being compensated.",
            },
            "compensation_identifier": {"type": ["string", "null"]},
            "compensation_error": {
                "type": ["string", "null"],
                "description": "Why an expired record was not compensated.",
            },
            "compensate_by": {"type": ["string", "null"], "format": "date-time"},
            "platform": {"type": ["string", "null"]},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "adjustments",
            "version": __version__,
            "description": "Enqueue cancellations of Stripe meter events (meter event "
            "adjustments) and follow them. Authenticate with `Authorization: Bearer <token>`; "
            "roles: enqueue (POST cancellations), read (GET), operate (everything).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/cancellations": {
                "post": {
                    "operationId": "createCancellation",
                    "summary": "Enqueue one cancellation (role enqueue or operate).",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                            "description": "A retried POST with the same key and body gets the "
                            "first answer again (its status and body, with Idempotent-Replayed: "
                            "true) for 24 h; another body, or a retry while the first request "
                            "is still being answered, is a 409. Keys are kept per token.",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "description": f"At most {MAX_BODY} bytes.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CancelRequest"}
                            }
                        },
                    },
                    "responses": {
                        "202": _json("Record", "Accepted: a new request, queued."),
                        "200": _json("Record", "The same request was already known: its record."),
                        "400": _error("The body is not a JSON object."),
                        "409": _error(
                            "The Idempotency-Key was used with another body, or its first "
                            "request is still being answered."
                        ),
                        "413": _error("The body is too large."),
                        "415": _error("The body is not sent as application/json."),
                        "422": _error("A field is missing, unknown or invalid; nothing written."),
                        **ERRORS,
                    },
                },
                "get": {
                    "operationId": "listCancellations",
                    "summary": "Records, newest first, with filters and cursor pagination "
                    "(role read or operate).",
                    "parameters": [
                        _query("status", {"type": "string", "enum": statuses}),
                        _query("event_name", {"type": "string"}),
                        _query("identifier", {"type": "string"}),
                        _query("error_code", {"type": "string"}),
                        _query("platform", {"type": "string"}),
                        _query("since", {"type": "string", "format": "date-time"}),
                        _query("until", {"type": "string", "format": "date-time"}),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                        _query("cursor", {"type": "string"}),
                    ],
                    "responses": {
                        "200": _json("RecordPage", "A page; follow next_cursor until null."),
                        "422": _error("An invalid parameter."),
                        **ERRORS,
                    },
                },
            },
            "/api/v1/cancellations/batch": {
                "post": {
                    "operationId": "createCancellations",
                    "summary": f"Enqueue up to {MAX_BATCH} cancellations; per-item results.",
                    "requestBody": {
                        "required": True,
                        "description": f"At most {MAX_BATCH_BODY} bytes.",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/BatchRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json("BatchResult", "Each item enqueued, a duplicate, or invalid."),
                        "400": _error("The body is not a JSON object."),
                        "413": _error("The body is too large."),
                        "415": _error("The body is not sent as application/json."),
                        "422": _error("items missing, empty or too many."),
                        **ERRORS,
                    },
                },
            },
            "/api/v1/cancellations/{id}": {
                "get": {
                    "operationId": "getCancellation",
                    "summary": "One record with its attempt history (role read or operate).",
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": _json("Record", "The record."),
                        "404": _error("No such record (or past retention)."),
                        **ERRORS,
                    },
                },
            },
            "/api/v1/replays": {
                "post": {
                    "operationId": "replay",
                    "summary": "Replay failed (or, with force, expired) records; a dry run "
                    "unless dry_run is false (role operate).",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ReplayRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json("ReplayReport", "What was (or would be) replayed."),
                        "400": _error("The body is not a JSON object."),
                        "415": _error("The body is not sent as application/json."),
                        "422": _error("An invalid filter."),
                        **ERRORS,
                    },
                },
            },
            "/api/v1/compensations": {
                "post": {
                    "operationId": "compensate",
                    "summary": "Compensate expired records with negative usage (raw sum meters "
                    "only); the plan (a dry run) unless dry_run is false (role operate).",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CompensationRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json("CompensationReport", "The plan, and what was begun."),
                        "400": _error("The body is not a JSON object."),
                        "415": _error("The body is not sent as application/json."),
                        "422": _error("An invalid filter."),
                        **ERRORS,
                    },
                },
            },
            "/api/v1/exports": {
                "get": {
                    "operationId": "export",
                    "summary": "Every record in range, as CSV or JSONL, streamed (role read). "
                    "since/until select on the time a record reached its status.",
                    "parameters": [
                        _query("format", {"type": "string", "enum": ["csv", "jsonl"]}),
                        _query("since", {"type": "string", "format": "date-time"}),
                        _query("until", {"type": "string", "format": "date-time"}),
                        _query("status", {"type": "string", "enum": [s.value for s in Status]}),
                        _query("event_name", {"type": "string"}),
                        _query("account", {"type": "string"}),
                        _query("platform", {"type": "string"}),
                    ],
                    "responses": {
                        "200": {
                            "description": "The rows (a CSV header first).",
                            "content": {
                                "text/csv": {"schema": {"type": "string"}},
                                "application/x-ndjson": {"schema": {"type": "string"}},
                            },
                        },
                        "422": _error("An invalid parameter."),
                        **ERRORS,
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "200 when Redis accepts writes, 503 otherwise (no token needed).",
                    "security": [],
                    "responses": {
                        "200": {"description": "Healthy."},
                        "503": {
                            "description": "Redis unreachable, or refusing writes (out of "
                            "memory, a read-only replica): the body says which."
                        },
                    },
                },
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "The deployment's Prometheus metrics (role read or operate).",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _error("No valid token."),
                        "403": _error("An enqueue token (metrics need read or operate)."),
                    },
                },
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "CancelRequest": cancel_request,
                "BatchRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["items"],
                    "properties": {
                        "items": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_BATCH,
                            "items": {"$ref": "#/components/schemas/CancelRequest"},
                        }
                    },
                },
                "BatchResult": {
                    "type": "object",
                    "required": ["created", "duplicates", "invalid", "results"],
                    "properties": {
                        "created": {"type": "integer"},
                        "duplicates": {"type": "integer"},
                        "invalid": {"type": "integer"},
                        "results": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["index"],
                                "properties": {
                                    "index": {"type": "integer"},
                                    "id": {"type": "string"},
                                    "error": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "Record": record,
                "RecordPage": {
                    "type": "object",
                    "required": ["data", "next_cursor"],
                    "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                },
                "StripeError": {
                    "type": "object",
                    "properties": {
                        "type": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                        "message": {"type": ["string", "null"]},
                        "http_status": {"type": ["integer", "null"]},
                    },
                },
                "ReplayRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "ids": {"type": "array", "items": {"type": "string"}},
                        "status": {"type": "string", "enum": ["failed", "expired"]},
                        "event_name": {"type": "string"},
                        "error_code": {"type": "string"},
                        "platform": {"type": "string"},
                        "since": {"type": "string", "format": "date-time"},
                        "until": {"type": "string", "format": "date-time"},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
                        "force": {"type": "boolean", "default": False},
                        "dry_run": {"type": "boolean", "default": True},
                    },
                },
                "CompensationRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "ids": {"type": "array", "items": {"type": "string"}},
                        "event_name": {"type": "string"},
                        "since": {"type": "string", "format": "date-time"},
                        "until": {"type": "string", "format": "date-time"},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
                        "dry_run": {"type": "boolean", "default": True},
                    },
                },
                "CompensationReport": {
                    "type": "object",
                    "required": ["dry_run", "records", "begun", "by_customer", "skipped", "ids"],
                    "properties": {
                        "dry_run": {"type": "boolean"},
                        "meters_checked": {"type": "boolean"},
                        "records": {"type": "integer"},
                        "begun": {"type": "integer"},
                        "ids": {"type": "array", "items": {"type": "string"}},
                        "by_customer": {"type": "array", "items": {"type": "object"}},
                        "skipped": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "ReplayReport": {
                    "type": "object",
                    "required": ["dry_run", "selected", "replayed", "skipped", "ids"],
                    "properties": {
                        "dry_run": {"type": "boolean"},
                        "selected": {"type": "integer"},
                        "replayed": {"type": "integer"},
                        "skipped": {"type": "array", "items": {"type": "object"}},
                        "ids": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["type", "message"],
                            "properties": {
                                "type": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
            },
        },
    }


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}
