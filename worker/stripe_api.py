"""The only module that imports ``stripe``: one client per process, v1 or v2, outcomes as data."""

from __future__ import annotations

import threading
import types
import urllib.request
from collections.abc import Callable
from functools import partial
from typing import Any

import requests
import stripe

from .compensation import MeterCache, negated, unsound
from .config import Settings
from .models import Record
from .outcomes import Accepted, Answer, Outcome, Rejected, Unsound
from .redact import redact


def build_client(settings: Settings, platform: str | None = None) -> stripe.StripeClient:
    """A StripeClient for the platform (None: the default, or the single STRIPE_API_KEY) with
    the SDK's retries off (the queue retries) and our timeout."""
    chosen = settings.platform(platform)
    if not chosen.api_key:
        raise stripe.AuthenticationError(
            f"no Stripe key for platform {chosen.name}"
            if chosen.name
            else "STRIPE_API_KEY is not set"
        )
    stripe.enable_telemetry = False
    base: dict[str, str] = {}
    api_base = chosen.api_base or settings.stripe_api_base
    if api_base:
        base = {"api": api_base.rstrip("/")}
    return stripe.StripeClient(
        chosen.api_key,
        base_addresses=base,  # type: ignore[arg-type]
        stripe_version=settings.stripe_api_version,
        max_network_retries=0,
        http_client=_http_client(settings.stripe_timeout_s),
    )


def _http_client(timeout_s: float) -> stripe.HTTPClient:
    """The SDK's RequestsClient (one session per thread), minus a per-request environment scan.

    A requests session with ``trust_env`` re-reads every environment variable for proxy
    settings on each request: about 13 % of a worker's CPU per cancellation in our profile.
    The proxies are read once here instead (HTTPS_PROXY and friends keep working).
    """
    proxies = urllib.request.getproxies()

    def session() -> requests.Session:
        made = requests.Session()
        made.trust_env = False
        made.proxies.update(proxies)
        return made

    lib = types.SimpleNamespace(**vars(requests))
    lib.Session = session
    try:
        return stripe.RequestsClient(timeout=timeout_s, _lib=lib)
    except TypeError:  # a future SDK without the hook: the plain client is correct, just slower
        return stripe.RequestsClient(timeout=timeout_s)


_lock = threading.Lock()
_clients: dict[tuple[Settings, str | None], stripe.StripeClient] = {}


def shared_client(settings: Settings, platform: str | None = None) -> stripe.StripeClient:
    """The process's client for these settings and platform, created on first use and then
    reused."""
    with _lock:
        client = _clients.get((settings, platform))
        if client is None:
            client = _clients[(settings, platform)] = build_client(settings, platform)
        return client


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    for key, value in dict(headers).items():
        if str(key).lower() == name:
            return str(value)
    return None


def _retry_after_s(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: rare from Stripe; the backoff applies


def to_rejected(exc: stripe.StripeError) -> Rejected:
    """Map an SDK exception to plain data, keeping the headers that decide retries."""
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    assert isinstance(err, dict)
    should = _header(exc.headers, "stripe-should-retry")
    return Rejected(
        http_status=exc.http_status,
        error_type=err.get("type") or (None if exc.http_status else "api_connection_error"),
        code=exc.code or err.get("code"),
        message=redact(" ".join(str(err.get("message") or exc.user_message or exc).split())[:500]),
        request_id=exc.request_id or _header(exc.headers, "request-id"),
        should_retry=None if should is None else should.lower() == "true",
        retry_after_s=_retry_after_s(_header(exc.headers, "retry-after")),
        idempotent_replayed=_header(exc.headers, "idempotent-replayed") == "true",
        rate_limited_reason=_header(exc.headers, "stripe-rate-limited-reason"),
    )


def _account_options(record: Record, options: dict[str, Any]) -> dict[str, Any]:
    if record.stripe_account and record.api == "v1":
        options["stripe_account"] = record.stripe_account  # the Stripe-Account header
    elif record.stripe_account:
        # v2: Stripe-Context, which supersedes Stripe-Account (acct_... or acct_.../acct_...)
        options["stripe_context"] = record.stripe_account
    return options


def list_meters(client: stripe.StripeClient, account: str | None) -> list[dict[str, Any]]:
    """Every meter of the account (``GET /v1/billing/meters``, paged)."""
    options: dict[str, Any] = {"stripe_account": account.split("/")[-1]} if account else {}
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = client.v1.billing.meters.list(
            params=params,  # type: ignore[arg-type]
            options=options,  # type: ignore[arg-type]
        )
        items = [m.to_dict() for m in page.data]
        found.extend(items)
        if not page.has_more or not items:
            return found
        params["starting_after"] = items[-1]["id"]


def meter_caches(settings: Settings) -> Callable[[str | None], MeterCache]:
    """Each platform's meters, looked up through its shared client and cached
    (``MeterCache``): what compensation checks a record's meter against."""
    caches: dict[str | None, MeterCache] = {}

    def meters(platform: str | None) -> MeterCache:
        cache = caches.get(platform)
        if cache is None:  # a race builds two: the same meters, cached twice
            client = shared_client(settings, platform)
            cache = caches[platform] = MeterCache(fetch=partial(list_meters, client))
        return cache

    return meters


def send(
    clients: Callable[[str | None], stripe.StripeClient],
    meters: Callable[[str | None], Any],
    timestamp_mode: str,
    record: Record,
) -> Answer:
    """The call ``record`` needs now, with its platform's client: its cancellation, or, in
    the compensation phase, the negative meter event (after checking the meter makes it
    sound, with the platform's meters)."""
    client = clients(record.platform)
    if record.phase != "compensate":
        return cancel(client, record)
    try:
        meter = meters(record.platform).find(record.stripe_account, record.event_name)
    except stripe.StripeError as exc:
        return to_rejected(exc)
    why = unsound(meter, record)
    if why is not None or record.original_event is None:
        return Unsound(why or "no original event")
    payload = dict(record.original_event.payload)
    payload[meter.value_key] = str(negated(payload[meter.value_key]))
    when = record.original_event.timestamp if timestamp_mode == "original" else None
    return meter_event(client, record, payload, when)


def meter_event(
    client: stripe.StripeClient, record: Record, payload: dict[str, str], when: Any
) -> Outcome:
    """Record one (compensating) meter event with the record's compensation identifier. A
    400 saying that identifier exists already means an earlier attempt recorded it."""
    identifier = str(record.compensation_identifier)
    options = _account_options(record, {"idempotency_key": record.idempotency_key})
    try:
        if record.api == "v1":
            params: dict[str, Any] = {
                "event_name": record.event_name,
                "payload": payload,
                "identifier": identifier,
            }
            if when is not None:
                params["timestamp"] = int(when.timestamp())
            obj: Any = client.v1.billing.meter_events.create(
                params=params,  # type: ignore[arg-type]
                options=options,  # type: ignore[arg-type]
            )
        else:
            body: dict[str, Any] = {
                "event_name": record.event_name,
                "payload": payload,
                "identifier": identifier,
            }
            if when is not None:
                body["timestamp"] = when.isoformat().replace("+00:00", "Z")
            obj = client.v2.billing.meter_events.create(
                body,  # type: ignore[arg-type]
                options=options,  # type: ignore[arg-type]
            )
    except stripe.StripeError as exc:
        rejected = to_rejected(exc)
        if (
            rejected.http_status == 400
            and rejected.should_retry is False
            and f"already exists with identifier {identifier}" in rejected.message
        ):
            return Accepted("recorded", 400, rejected.request_id, replayed=True)
        return rejected
    response = obj.last_response
    headers = response.headers if response is not None else {}
    return Accepted(
        stripe_status="recorded",
        http_status=response.code if response is not None else 200,
        request_id=response.request_id if response is not None else None,
        replayed=_header(headers, "idempotent-replayed") == "true",
    )


def cancel(client: stripe.StripeClient, record: Record) -> Outcome:
    """Send one cancellation for ``record`` with its current idempotency key."""
    params: dict[str, Any] = {
        "event_name": record.event_name,
        "type": "cancel",
        "cancel": {"identifier": record.identifier},
    }
    options = _account_options(record, {"idempotency_key": record.idempotency_key})
    try:
        if record.api == "v1":
            obj: Any = client.v1.billing.meter_event_adjustments.create(
                params=params,  # type: ignore[arg-type]
                options=options,  # type: ignore[arg-type]
            )
        else:
            obj = client.v2.billing.meter_event_adjustments.create(
                params,  # type: ignore[arg-type]
                options=options,  # type: ignore[arg-type]
            )
    except stripe.StripeError as exc:
        return to_rejected(exc)
    response = obj.last_response
    headers = response.headers if response is not None else {}
    data: dict[str, Any] = obj.to_dict()
    livemode = data.get("livemode")
    return Accepted(
        stripe_status=str(data.get("status") or "unknown"),
        http_status=response.code if response is not None else 200,
        request_id=response.request_id if response is not None else None,
        adjustment_id=data.get("id"),
        created=None if data.get("created") is None else str(data.get("created")),
        livemode=None if livemode is None else bool(livemode),
        replayed=_header(headers, "idempotent-replayed") == "true",
    )
