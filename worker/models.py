"""Requests, records and statuses, and the validation of what producers send."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, cast, overload

from . import keys
from .config import APIS, CANCEL_WINDOW_S, Api
from .errors import InvalidInput

MAX_FIELD_LEN = 100  # Stripe's limit for event_name and cancel.identifier
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # C0 and DEL; C1 is escaped when printed
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # free text keeps \n and \t
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ACCOUNT = re.compile(r"acct_[A-Za-z0-9]{1,255}")  # matched in full (fullmatch)
# v2's Stripe-Context: an account, or a path to a grandchild account (acct_.../acct_...).
_CONTEXT = re.compile(r"acct_[A-Za-z0-9]{1,255}(/acct_[A-Za-z0-9]{1,255}){0,4}")
MAX_FUTURE_SKEW = timedelta(minutes=5)


class Status(StrEnum):
    """Where a cancellation stands (docs/concepts.md says what each means)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    RETRYING = "retrying"
    PENDING = "pending"
    COMPLETE = "complete"
    FAILED = "failed"
    EXPIRED = "expired"
    # The window was missed and a negative meter event undid the usage (issue 20).
    COMPENSATED = "compensated"

    @classmethod
    def parse(cls, value: object) -> Status:
        """``value`` as a Status: a Status, or its name as a string ("failed");
        InvalidInput naming the valid ones for anything else."""
        if isinstance(value, Status):
            return value
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(s.value for s in cls)
        raise InvalidInput(f"status must be one of {names}, got {value!r}")

    @property
    def terminal(self) -> bool:
        """True for statuses a record never leaves on its own."""
        return self in TERMINAL


TERMINAL = frozenset(
    {Status.PENDING, Status.COMPLETE, Status.FAILED, Status.EXPIRED, Status.COMPENSATED}
)


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidInput(f"{name} must not be empty")
    if len(value) > MAX_FIELD_LEN:
        raise InvalidInput(f"{name} must be at most {MAX_FIELD_LEN} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise InvalidInput(f"{name} must not contain control characters")
    if _SURROGATE.search(value):  # e.g. invalid UTF-8 in a command-line argument
        raise InvalidInput(f"{name} must be valid Unicode text (it holds a lone surrogate)")
    if value != value.strip():
        raise InvalidInput(f"{name} must not start or end with white space")
    return value


@overload
def window_closes(received_at: datetime) -> datetime: ...
@overload
def window_closes(received_at: None) -> None: ...
def window_closes(received_at: datetime | None) -> datetime | None:
    """When Stripe stops accepting a cancellation of an event it received at ``received_at``
    (24 h later); None when that time is unknown."""
    if received_at is None:
        return None
    return received_at + timedelta(seconds=CANCEL_WINDOW_S)


def _as_datetime(value: object, name: str = "event_received_at") -> datetime:
    """A time as given (epoch seconds, ISO 8601 text or a datetime), not yet checked for a
    time zone or a window; InvalidInput naming ``name`` for any other value."""
    if isinstance(value, bool):
        raise InvalidInput(f"{name} must be a datetime or epoch seconds, not a bool")
    if isinstance(value, int | float):
        if value <= 0:
            raise InvalidInput(f"{name} must be positive epoch seconds")
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidInput(f"{name} is out of range: {value!r}") from None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"{name} is not an ISO 8601 time: {value!r}") from None
    if isinstance(value, datetime):
        return value
    raise InvalidInput(f"{name} must be a datetime or epoch seconds, got {type(value).__name__}")


def parse_time(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 time with an offset (a naive time is ambiguous across hosts)."""
    if value is None:
        return None
    when = _as_datetime(value, name)
    if when.tzinfo is None:
        accepted = when.replace(tzinfo=UTC).isoformat()  # a value we accept, not a guess
        raise InvalidInput(f"{name} must include a UTC offset, e.g. {accepted}")
    return when


def parse_received_at(value: object, *, now: datetime) -> datetime | None:
    """Validate ``event_received_at``: aware datetime, epoch seconds or ISO 8601 with offset."""
    if value is None:
        return None
    when = _as_datetime(value)
    if when.tzinfo is None or when.utcoffset() is None:
        example = iso(now.replace(microsecond=0))  # a value accepted right now
        raise InvalidInput(f"event_received_at must be timezone-aware, e.g. {example}")
    try:
        when = when.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise InvalidInput(f"event_received_at is out of range: {value!r}") from None
    if when > now + MAX_FUTURE_SKEW:
        raise InvalidInput("event_received_at is in the future")
    if window_closes(when) <= now:
        # Stripe refuses a cancellation more than 24 h after it received the event: a record
        # for it could only ever expire, so it is refused here, before anything is written.
        raise InvalidInput(
            f"event_received_at {iso(when)} is more than 24 h ago: Stripe accepts a "
            "cancellation only within 24 h of receiving the event"
        )
    return when


MAX_PAYLOAD_BYTES = 2048  # an original event's payload, as compact JSON
MAX_PAYLOAD_KEYS = 20
MAX_REASON_LEN = 500
METER_EVENT_MAX_AGE = timedelta(days=35)  # Stripe takes meter events this far back


def _check_payload(payload: object) -> dict[str, str]:
    """An original event's payload: a small non-empty object of strings, as Stripe took it."""
    if not isinstance(payload, dict) or not payload:
        raise InvalidInput("original_event.payload must be a non-empty object of strings")
    if len(payload) > MAX_PAYLOAD_KEYS:
        raise InvalidInput(f"original_event.payload has more than {MAX_PAYLOAD_KEYS} keys")
    for key, item in payload.items():
        _check_text("original_event.payload key", key)
        if not isinstance(item, str):
            raise InvalidInput(
                f"original_event.payload[{key!r}] must be a string as sent to Stripe "
                f'(e.g. "5"), got {type(item).__name__}'
            )
        _check_text(f"original_event.payload[{key!r}]", item)
    size = len(json.dumps(payload, separators=(",", ":")).encode())
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidInput(
            f"original_event.payload is {size} bytes as JSON, at most {MAX_PAYLOAD_BYTES}"
        )
    return cast(dict[str, str], payload)


@dataclass(frozen=True)
class OriginalEvent:
    """The meter event a cancellation undoes, as it was sent to Stripe: needed only to
    compensate it with negative usage when the cancellation's window is missed."""

    payload: dict[str, str]
    timestamp: datetime

    @classmethod
    def build(cls, value: object, *, now: datetime) -> OriginalEvent | None:
        """Validate ``{"payload": {...}, "timestamp": ...}`` (None: not given)."""
        if value is None:
            return None
        if isinstance(value, OriginalEvent):
            value = {"payload": value.payload, "timestamp": value.timestamp}
        if not isinstance(value, dict):
            raise InvalidInput(
                "original_event must be an object with payload and timestamp, "
                f"got {type(value).__name__}"
            )
        unknown = sorted(set(value) - {"payload", "timestamp"})
        if unknown:
            raise InvalidInput(f"original_event has unknown field {unknown[0]!r}")
        payload = _check_payload(value.get("payload"))
        if "timestamp" not in value or value["timestamp"] is None:
            raise InvalidInput("original_event.timestamp is required (when the event happened)")
        when = _as_datetime(value["timestamp"], "original_event.timestamp")
        if when.tzinfo is None or when.utcoffset() is None:
            raise InvalidInput("original_event.timestamp must be timezone-aware")
        when = when.astimezone(UTC)
        if when > now + MAX_FUTURE_SKEW:
            raise InvalidInput("original_event.timestamp is in the future")
        if when < now - METER_EVENT_MAX_AGE:
            raise InvalidInput(
                "original_event.timestamp is more than 35 days ago: Stripe takes no meter "
                "event that old, so it could not be compensated"
            )
        return cls(dict(payload), when)

    def to_json(self) -> str:
        """As one JSON object (how it is stored on the record)."""
        return json.dumps(
            {"payload": self.payload, "timestamp": iso(self.timestamp)}, separators=(",", ":")
        )

    @classmethod
    def from_json(cls, raw: str) -> OriginalEvent | None:
        if not raw:
            return None
        data = json.loads(raw)
        return cls(dict(data["payload"]), cast(datetime, parse_iso(data["timestamp"])))

    def to_dict(self) -> dict[str, object]:
        """As JSON-ready values."""
        return {"payload": dict(self.payload), "timestamp": iso(self.timestamp)}


def check_reason(value: object) -> str | None:
    """``reason``: free text up to MAX_REASON_LEN characters (None: not given)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"reason must be a string, got {type(value).__name__}")
    if len(value) > MAX_REASON_LEN:
        raise InvalidInput(f"reason must be at most {MAX_REASON_LEN} characters, got {len(value)}")
    if _CONTROL.sub("", value.replace("\n", "").replace("\t", "")) != value.replace(
        "\n", ""
    ).replace("\t", ""):
        raise InvalidInput("reason must not contain control characters other than newline and tab")
    if _SURROGATE.search(value):
        raise InvalidInput("reason must be valid Unicode text (it holds a lone surrogate)")
    return value


def _check_platform(value: object) -> str | None:
    """A platform's name as given (the producer resolves the default and checks it is one
    of the configured ones)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"platform must be a string, got {type(value).__name__}")
    return value


def check_requested_by(value: object) -> str | None:
    """``requested_by``: who asked (a token's name, an OS user, a person); None: not given."""
    if value is None or value == "":
        return None
    return _check_text("requested_by", value)


@dataclass(frozen=True)
class CancelRequest:
    """A validated cancellation: what to cancel and where."""

    api: Api
    event_name: str
    identifier: str
    stripe_account: str | None = None
    event_received_at: datetime | None = None
    # What finance and compensation need; not part of what makes two requests the same.
    original_event: OriginalEvent | None = field(default=None, compare=False)
    reason: str | None = field(default=None, compare=False)
    requested_by: str | None = field(default=None, compare=False)
    # The deployment's own Stripe account it goes to (issue 21): part of what identifies it.
    platform: str | None = None

    @classmethod
    def build(
        cls,
        event_name: object,
        identifier: object,
        *,
        api: object,
        stripe_account: object = None,
        event_received_at: object = None,
        original_event: object = None,
        reason: object = None,
        requested_by: object = None,
        platform: object = None,
        now: datetime,
    ) -> CancelRequest:
        """Validate raw input; raise InvalidInput with a one-line reason."""
        name = _check_text("event_name", event_name)
        ident = _check_text("identifier", identifier)
        if api not in APIS:
            raise InvalidInput(f"api must be 'v1' or 'v2', got {api!r}")
        account: str | None = None
        if stripe_account is not None:
            pattern = _ACCOUNT if api == "v1" else _CONTEXT
            if not isinstance(stripe_account, str) or not pattern.fullmatch(stripe_account):
                shape = "acct_..." if api == "v1" else "acct_... or acct_.../acct_..."
                raise InvalidInput(
                    f"stripe_account for {api} must look like {shape}, got {stripe_account!r}"
                )
            account = stripe_account
        received = parse_received_at(event_received_at, now=now)
        return cls(
            api,
            name,
            ident,
            account,
            received,
            OriginalEvent.build(original_event, now=now),
            check_reason(reason),
            check_requested_by(requested_by),
            _check_platform(platform),
        )

    @property
    def expires_at(self) -> datetime | None:
        """When Stripe stops accepting this cancellation, if the event's receipt time is known."""
        return window_closes(self.event_received_at)

    @property
    def digest(self) -> str:
        """What identifies this request (its dedupe key and idempotency keys derive from it):
        API, connected account, event name, identifier and platform."""
        return keys.request_digest(
            self.api,
            self.stripe_account or "",
            self.event_name,
            self.identifier,
            self.platform or "",
        )


@dataclass(frozen=True)
class ErrorInfo:
    """The last error Stripe (or the network) gave for a record."""

    type: str | None
    code: str | None
    message: str | None
    http_status: int | None
    # True when attempts ran out after an attempt with no answer: Stripe may have executed it.
    outcome_unknown: bool = False

    def to_json(self) -> str:
        """As one compact JSON object (how it is stored on the record)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> ErrorInfo | None:
        if not raw:
            return None
        data = json.loads(raw)
        return cls(
            data.get("type"),
            data.get("code"),
            data.get("message"),
            data.get("http_status"),
            bool(data.get("outcome_unknown", False)),
        )


def iso(when: datetime | None) -> str:
    """UTC ISO 8601 with milliseconds and a Z, or '' for None (how the hash stores times)."""
    if when is None:
        return ""
    return when.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_iso(raw: str) -> datetime | None:
    return datetime.fromisoformat(raw) if raw else None


def to_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class Record:
    """One cancellation request as stored in Redis: the source of truth."""

    id: str
    api: Api
    event_name: str
    identifier: str
    stripe_account: str | None
    status: Status
    attempts: int
    generation: int
    created_at: datetime
    updated_at: datetime
    event_received_at: datetime | None
    next_attempt_at: datetime | None
    stripe_status: str | None
    adjustment_id: str | None
    adjustment_created: str | None
    livemode: bool | None
    stripe_request_id: str | None
    last_error: ErrorInfo | None
    idempotency_key: str
    replays: int = 0
    key_outcome: str = ""  # what the current idempotency key did: "", unknown or rejected
    history: tuple[dict[str, Any], ...] = ()
    original_event: OriginalEvent | None = None
    reason: str | None = None
    requested_by: str | None = None
    # "compensate" while a negative meter event is being sent for a missed window ('' before)
    phase: str = ""
    compensation_identifier: str | None = None
    compensation_error: str | None = None
    compensate_by: datetime | None = None  # the compensation's own deadline (Stripe's 35 days)
    platform: str | None = None  # the deployment's Stripe account it goes to (its name)
    # Not stored: True only on the record ``cancel()`` returns when that call wrote it; False
    # when the call matched an existing request (a duplicate), and on records read back.
    created: bool = field(default=False, compare=False)

    @property
    def expires_at(self) -> datetime | None:
        """When the 24 h cancellation window closes, if the event's receipt time is known."""
        return window_closes(self.event_received_at)

    @property
    def request(self) -> CancelRequest:
        """The request this record is for (its identity: see ``CancelRequest.digest``)."""
        return CancelRequest(
            self.api,
            self.event_name,
            self.identifier,
            self.stripe_account,
            self.event_received_at,
            platform=self.platform,
        )

    @property
    def deadline(self) -> datetime:
        """The latest time this cancellation can still be accepted: 24 h after Stripe
        received the event, or, when the caller did not say, 24 h after it was enqueued (the
        event was received before that, so its window closes no later). While a missed
        window is being compensated, the latest time Stripe takes the negative meter event."""
        if self.phase == "compensate" and self.compensate_by is not None:
            return self.compensate_by
        return self.expires_at or self.created_at + timedelta(seconds=CANCEL_WINDOW_S)

    @classmethod
    def from_hash(cls, data: dict[str, str], history: Sequence[str] = ()) -> Record:
        """A record from its Redis hash. A fresh record does not store its zero counters,
        ``updated_at`` (its ``created_at``) or its generation-0 idempotency key."""
        livemode = data.get("livemode", "")
        key = data.get("idempotency_key") or _first_key(data)
        return cls(
            id=data["id"],
            api=cast(Api, data["api"]),
            event_name=data["event_name"],
            identifier=data["identifier"],
            stripe_account=data.get("stripe_account") or None,
            status=Status(data["status"]),
            attempts=int(data.get("attempts") or 0),
            generation=int(data.get("generation") or 0),
            created_at=cast(datetime, parse_iso(data["created_at"])),
            updated_at=cast(datetime, parse_iso(data.get("updated_at") or data["created_at"])),
            event_received_at=parse_iso(data.get("event_received_at", "")),
            next_attempt_at=parse_iso(data.get("next_attempt_at", "")),
            stripe_status=data.get("stripe_status") or None,
            adjustment_id=data.get("adjustment_id") or None,
            adjustment_created=data.get("adjustment_created") or None,
            livemode=None if livemode == "" else livemode == "1",
            stripe_request_id=data.get("stripe_request_id") or None,
            last_error=ErrorInfo.from_json(data.get("last_error", "")),
            idempotency_key=key,
            replays=int(data.get("replays") or 0),
            key_outcome=data.get("key_outcome", ""),
            history=tuple(json.loads(entry) for entry in history),
            original_event=OriginalEvent.from_json(data.get("original_event", "")),
            reason=data.get("reason") or None,
            requested_by=data.get("requested_by") or None,
            phase=data.get("phase", ""),
            compensation_identifier=data.get("compensation_identifier") or None,
            compensation_error=data.get("compensation_error") or None,
            compensate_by=parse_iso(data.get("compensate_by", "")),
            platform=data.get("platform") or None,
        )

    @property
    def error_is_current(self) -> bool:
        """Whether ``last_error`` is why the record stands where it is (failed, retrying,
        expired), rather than an earlier attempt's error that a later one (after a retry or
        a replay) has moved on from."""
        return self.last_error is not None and self.status in (
            Status.FAILED,
            Status.RETRYING,
            Status.EXPIRED,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (what ``--json`` prints): every field of the dataclass but
        ``created`` (not stored), times as ISO 8601, an empty ``key_outcome`` as null."""
        return {
            f.name: _json_value(getattr(self, f.name)) for f in fields(self) if f.name != "created"
        }


def _first_key(data: dict[str, str]) -> str:
    """The generation-0 idempotency key of the request a record hash describes."""
    request = CancelRequest(
        cast(Api, data["api"]),
        data["event_name"],
        data["identifier"],
        data.get("stripe_account") or None,
        platform=data.get("platform") or None,
    )
    return keys.idempotency_key(request.digest, 0)


def _json_value(value: object) -> object:
    """A record field's value as JSON gives it."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Status):
        return value.value
    if isinstance(value, ErrorInfo):
        return asdict(value)
    if isinstance(value, OriginalEvent):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return None if value == "" else value
