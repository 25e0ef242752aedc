"""Producer input made into validated requests: the deployment's defaults (API, platform)
applied, and every mistake an InvalidInput that names the field."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .bulk import FIELDS
from .config import Settings
from .errors import ConfigError, InvalidInput
from .models import CancelRequest

# Keyword arguments of cancel() beside the five that name the meter event.
EXTRA = ("original_event", "reason", "requested_by", "platform")


def aware_now(now: object) -> datetime:
    """``now`` as given (a timezone-aware datetime) or the current time; InvalidInput else."""
    if now is None:
        return datetime.now().astimezone()
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise InvalidInput(f"now must be a timezone-aware datetime, got {now!r}")
    return now


class Intake:
    """Builds ``CancelRequest`` objects with ``settings``' defaults."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def request(
        self,
        event_name: object,
        identifier: object,
        api: object,
        stripe_account: object,
        event_received_at: object,
        *,
        now: datetime,
        extra: Mapping[str, object] | None = None,
    ) -> CancelRequest:
        """The validated request, with the default API (and platform) where none is given.
        ``extra``: ``original_event``, ``reason``, ``requested_by`` and ``platform`` (absent
        or None: not given)."""
        extra = extra or {}
        return CancelRequest.build(
            event_name,
            identifier,
            # Only an absent api (None) takes the default: "", False, 0 are refused as invalid.
            api=self.settings.default_api if api is None else api,
            stripe_account=stripe_account,
            event_received_at=event_received_at,
            original_event=extra.get("original_event"),
            reason=extra.get("reason"),
            requested_by=extra.get("requested_by"),
            platform=self.platform(extra.get("platform")),
            now=now,
        )

    def from_item(self, item: Mapping[str, Any], now: datetime) -> CancelRequest:
        """One item of ``cancel_many``: a mapping of ``cancel()``'s keyword arguments."""
        if not isinstance(item, Mapping):
            raise InvalidInput(
                f"expected a mapping of cancel() arguments, got {type(item).__name__}"
            )
        unknown = sorted(str(key) for key in set(item) - set(FIELDS))
        if unknown:  # a misspelt stripe_account must not send it to the platform account
            raise InvalidInput(f"unknown field(s): {', '.join(unknown)}")
        return self.request(
            item.get("event_name"),
            item.get("identifier"),
            item.get("api"),
            item.get("stripe_account"),
            item.get("event_received_at"),
            now=now,
            extra={k: item.get(k) for k in EXTRA},
        )

    def platform(self, name: object) -> str | None:
        """The platform's name (the default, the first, for None); InvalidInput for one
        that is not configured. None in a deployment without platforms."""
        if name is not None and not isinstance(name, str):
            raise InvalidInput(f"platform must be a string, got {type(name).__name__}")
        try:
            return self.settings.platform(name).name or None
        except ConfigError as exc:
            raise InvalidInput(str(exc)) from None
