"""Validation of what producers send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from adjustments.errors import InvalidInput
from adjustments.models import CancelRequest, Status, iso, parse_iso

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def build(**overrides: object) -> CancelRequest:
    args: dict[str, object] = {"event_name": "ai_search_api", "identifier": "idmp_1", "api": "v2"}
    args.update(overrides)
    return CancelRequest.build(
        args.pop("event_name"),
        args.pop("identifier"),
        now=NOW,
        **args,
    )


class TestValidRequests:
    def test_minimal_request_is_accepted(self) -> None:
        """A name, an identifier and an api make a request."""
        req = build()
        assert (req.api, req.event_name, req.identifier) == ("v2", "ai_search_api", "idmp_1")
        assert req.stripe_account is None and req.expires_at is None

    @pytest.mark.parametrize(
        "received",
        [
            NOW - timedelta(hours=1),
            (NOW - timedelta(hours=1)).timestamp(),
            int((NOW - timedelta(hours=1)).timestamp()),
            "2026-11-21T11:00:00Z",
            "2026-11-21T12:00:00+01:00",
        ],
    )
    def test_received_at_forms(self, received: object) -> None:
        """Aware datetimes, epoch seconds and ISO strings with an offset are all accepted."""
        req = build(event_received_at=received)
        assert req.event_received_at == datetime(2026, 11, 21, 11, 0, tzinfo=UTC)
        assert req.expires_at == datetime(2026, 11, 22, 11, 0, tzinfo=UTC)

    def test_account_and_100_chars(self) -> None:
        """Values at Stripe's 100-character limit and a connected account pass."""
        req = build(event_name="e" * 100, identifier="i" * 100, stripe_account="acct_1Abc")
        assert req.stripe_account == "acct_1Abc"


class TestInvalidRequests:
    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"event_name": ""}, "event_name must not be empty"),
            ({"identifier": ""}, "identifier must not be empty"),
            ({"event_name": "e" * 101}, "at most 100"),
            ({"identifier": "i" * 101}, "at most 100"),
            ({"identifier": "a\nb"}, "control characters"),
            ({"event_name": "a\x00"}, "control characters"),
            ({"identifier": " padded"}, "white space"),
            ({"identifier": 12}, "must be a string"),
            ({"api": "v3"}, "api must be 'v1' or 'v2'"),
            ({"stripe_account": "cus_123"}, "acct_"),
            ({"event_received_at": datetime(2026, 11, 21, 11)}, "timezone-aware"),
            ({"event_received_at": "yesterday"}, "not an ISO 8601"),
            ({"event_received_at": "2026-11-21T11:00:00"}, "timezone-aware"),
            ({"event_received_at": NOW + timedelta(hours=1)}, "in the future"),
            ({"event_received_at": -5}, "positive"),
            ({"event_received_at": True}, "not a bool"),
            ({"event_received_at": [1]}, "datetime or epoch"),
        ],
    )
    def test_rejected_with_reason(self, overrides: dict[str, object], message: str) -> None:
        """Each malformed field raises InvalidInput (a ValueError) naming the problem."""
        with pytest.raises(InvalidInput, match=message) as info:
            build(**overrides)
        assert isinstance(info.value, ValueError)
        assert "\n" not in str(info.value)


class TestStatusesAndTimes:
    def test_terminal_statuses(self) -> None:
        """pending, complete, failed, expired and compensated are terminal; the rest are not."""
        assert {s for s in Status if s.terminal} == {
            "pending",
            "complete",
            "failed",
            "expired",
            "compensated",
        }

    def test_iso_round_trip(self) -> None:
        """Times are stored as UTC ISO 8601 with milliseconds."""
        when = datetime(2026, 11, 21, 13, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
        assert iso(when) == "2026-11-21T12:00:00.123Z"
        assert parse_iso(iso(when)) == datetime(2026, 11, 21, 12, 0, 0, 123000, tzinfo=UTC)
