"""The operations console: server-rendered pages (Jinja2) and plain forms, no JavaScript.

Log in with a ``read`` or ``operate`` token: the session is a signed ``HttpOnly``,
``SameSite=Strict`` cookie, and every form carries a CSRF token checked on POST. ``read`` sees
everything and changes nothing. A replay is always a preview first (a dry run with the count),
then an explicit confirmation; expired records need a second confirmation.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import AdjustmentsError, InvalidInput, RecordNotFound, StoreError
from ..export import ExportFilter
from ..models import Status, parse_iso
from ..producer import Producer
from ..replay import ReplayFilter
from ..text import printable
from .api import HTTPProblem, export_response, list_query, replay_filter
from .auth import ROLES, SESSION_S, Auth, Session, allowed, fingerprint, new_session_id
from .memo import Memo

HERE = Path(__file__).parent
COOKIE = "adjustments_session"
LOGIN_COOKIE = "adjustments_login"
MAX_FORM = 16 * 1024
CHART_MINUTES = 60
CHART_SERIES = {  # what a record's status says of the attempt that put it there
    "accepted": (Status.PENDING, Status.COMPLETE),
    "failed": (Status.FAILED,),
    "expired": (Status.EXPIRED,),
}


def _shown(value: Any) -> Any:
    """Every value a page prints: stored text with its hidden characters escaped (an
    identifier holding U+202E must not reverse what the operator reads)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value)
    return value


templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    finalize=_shown,
    trim_blocks=True,
    lstrip_blocks=True,
)


FIELD_LABELS = {  # a record's fields as the record page names them, in this order
    "status": "Status",
    "api": "Stripe API",
    "event_name": "Event name",
    "identifier": "Identifier",
    "stripe_account": "Connected account",
    "attempts": "Attempts",
    "replays": "Replays",
    "created_at": "Enqueued",
    "updated_at": "Last change",
    "event_received_at": "Event received by Stripe",
    "next_attempt_at": "Next attempt",
    "stripe_status": "Stripe's status",
    "adjustment_id": "Adjustment id",
    "adjustment_created": "Adjustment created",
    "livemode": "Live mode",
    "stripe_request_id": "Stripe request id",
    "idempotency_key": "Idempotency key",
    "generation": "Key generation",
    "key_outcome": "Current key's outcome",
    "reason": "Reason",
    "requested_by": "Requested by",
    "original_event": "Original event",
    "phase": "Phase",
    "compensation_identifier": "Compensation identifier",
    "compensate_by": "Compensate by",
    "compensation_error": "Not compensated because",
}
HISTORY_LABELS = {
    "at": "When",
    "attempt": "Attempt",
    "outcome": "Outcome",
    "status": "Status after",
    "http_status": "HTTP",
    "error_code": "Error code",
    "generation": "Key generation",
    "rate_limited_reason": "Rate-limit reason",
}


def _when(value: object) -> str:
    """A time as the console shows every time: ``2026-12-07 06:21:33 UTC``."""
    when = value if isinstance(value, datetime) else parse_iso(str(value or ""))
    if when is None:
        return str(value or "")
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


templates.filters["ago"] = lambda seconds: _duration(float(seconds))
templates.filters["when"] = lambda value: _when(value)
templates.globals["history_keys"] = lambda history: [
    k for k in HISTORY_LABELS if any(entry.get(k) not in (None, "") for entry in history)
]


def record_rows(data: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The record page's rows: (label, value, is a time), the set fields only, in the order
    of FIELD_LABELS."""
    rows = []
    for name, label in FIELD_LABELS.items():
        value = data.get(name)
        if value in (None, "") or (name in ("replays", "generation") and not value):
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        if isinstance(value, dict):  # the original event: its payload and timestamp
            payload = ", ".join(f"{k}={v}" for k, v in value.get("payload", {}).items())
            value = f"{payload} at {_when(value.get('timestamp'))}"
        timed = name.endswith("_at") or name in ("adjustment_created", "compensate_by")
        rows.append((label, str(value), timed))
    return rows


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Console:
    def __init__(self, producer: Producer, auth: Auth) -> None:
        self.producer = producer
        self.memo = Memo(producer.client, producer.settings.key_prefix)
        self.auth = auth

    # -- sessions ------------------------------------------------------------------------

    def _session_name(self, session_id: str) -> str:
        return f"console-session:{session_id}"

    def load_session(self, request: Request) -> tuple[str | None, str | None]:
        """(role, session id) of the request's session, from Redis; without tokens
        (--insecure-local) a visitor without one gets a new operator session."""
        session_id = request.cookies.get(COOKIE)
        if session_id:
            stored = self.memo.recall(self._session_name(session_id))
            if stored:
                role, _, token = stored.partition(":")
                if role in ROLES and self.auth.still_valid(Session(role, token)):
                    return role, session_id
        if not self.auth.enabled:
            return "operate", self.open_session(Session("operate", ""))
        return None, None

    def open_session(self, session: Session) -> str:
        session_id = new_session_id()
        self.memo.remember(
            self._session_name(session_id), f"{session.role}:{session.token}", ttl_s=SESSION_S
        )
        return session_id

    async def session(self, request: Request) -> tuple[str | None, str | None]:
        """The request's (role, session id), read once per request."""
        if not hasattr(request.state, "session"):
            request.state.session = await run_in_threadpool(self.load_session, request)
        return cast(tuple[str | None, str | None], request.state.session)

    async def render(
        self, request: Request, name: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        role, session_id = await self.session(request)
        html = templates.get_template(name).render(
            role=role,
            csrf=self.auth.csrf_token(session_id) if session_id else "",
            can_operate=allowed(role, "operate"),
            auth_enabled=self.auth.enabled,
            **context,
        )
        response = HTMLResponse(html, status_code=status_code)
        if session_id and session_id != request.cookies.get(COOKIE):
            self.set_cookie(response, COOKIE, session_id, path="/console")
        return response

    def set_cookie(self, response: Response, name: str, value: str, *, path: str) -> None:
        response.set_cookie(
            name,
            value,
            httponly=True,
            samesite="strict",
            # Secure: the console belongs behind HTTPS (browsers also keep it on localhost).
            secure=True,
            path=path,
        )

    def page(
        self, need: str, handler: Callable[[Request], Awaitable[Response]], *, post: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` for a logged-in role that may ``need``; POSTs must carry the CSRF
        token. Errors become a page that says what went wrong."""

        async def endpoint(request: Request) -> Response:
            try:
                role, session_id = await self.session(request)
                if role is None:
                    return RedirectResponse("/console/login", status_code=303)
                if not allowed(role, need):
                    return await self.render(
                        request, "error.html", 403, message="Your role may not do this."
                    )
                if post:
                    form = await read_form(request)
                    if not self.auth.csrf_ok(session_id, form.get("csrf")):
                        return await self.render(
                            request,
                            "error.html",
                            403,
                            message="The form expired; reload and retry.",
                        )
                    request.state.form = form
                return await handler(request)
            except StoreError as exc:
                return self.bare_error(503, f"The store is unavailable: {exc}")
            except RecordNotFound as exc:
                return await self.render(
                    request, "error.html", 404, message=f"No such record: {exc}"
                )
            except HTTPProblem as exc:
                return await self.render(request, "error.html", exc.status, message=exc.message)
            except (AdjustmentsError, ValueError) as exc:
                return await self.render(request, "error.html", 400, message=str(exc))

        return endpoint

    def bare_error(self, status: int, message: str) -> HTMLResponse:
        """An error page that needs nothing from Redis (it may be what failed)."""
        html = templates.get_template("error.html").render(
            role=None, csrf="", can_operate=False, auth_enabled=self.auth.enabled, message=message
        )
        return HTMLResponse(html, status_code=status)

    # -- login ---------------------------------------------------------------------------

    async def login_form(
        self, request: Request, *, status_code: int = 200, error: str | None = None
    ) -> Response:
        """The login form, with a CSRF token bound to a login cookie: a cross-site form
        cannot log a victim in as someone else (the Strict cookie is not sent with it)."""
        nonce = new_session_id()
        html = templates.get_template("login.html").render(
            role=None, csrf=self.auth.login_csrf(nonce), auth_enabled=self.auth.enabled, error=error
        )
        response = HTMLResponse(html, status_code=status_code)
        self.set_cookie(response, LOGIN_COOKIE, nonce, path="/console/login")
        return response

    async def login_page(self, request: Request) -> Response:
        return await self.login_form(request)

    async def login(self, request: Request) -> Response:
        try:
            form = await read_form(request)
        except HTTPProblem as exc:
            return await self.login_form(request, status_code=exc.status, error=exc.message)
        if not self.auth.login_csrf_ok(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
            return await self.login_form(
                request, status_code=403, error="The login form expired; please try again."
            )
        token = self.auth.token_for(form.get("token", ""))
        if token is None or token.role not in ("read", "operate"):
            return await self.login_form(
                request, status_code=401, error="Unknown token, or not a read or operate one."
            )
        try:
            session_id = await run_in_threadpool(
                self.open_session, Session(token.role, fingerprint(token.secret))
            )
        except StoreError as exc:
            return self.bare_error(503, f"The store is unavailable: {exc}")
        response = RedirectResponse("/console", status_code=303)
        response.delete_cookie(LOGIN_COOKIE, path="/console/login")
        self.set_cookie(response, COOKIE, session_id, path="/console")
        return response

    async def logout(self, request: Request) -> Response:
        """End the session: removed from Redis, so the cookie is worthless from now on."""
        _, session_id = await self.session(request)
        if session_id:
            await run_in_threadpool(self.memo.forget, self._session_name(session_id))
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(COOKIE, path="/console")
        return response

    # -- pages ---------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        data = await run_in_threadpool(self.overview_data)
        return await self.render(request, "overview.html", **data)

    def overview_data(self) -> dict[str, Any]:
        p = self.producer
        bars = p.readouts.recent_outcomes(CHART_SERIES, minutes=CHART_MINUTES)
        stats = p.stats()
        first_miss = parse_iso(stats.expiry_forecast_first_miss or "")
        return {
            "stats": stats,
            "first_miss_in_s": (first_miss.timestamp() - time.time()) if first_miss else 0.0,
            "chart": chart(bars),
            "last_hour": {name: sum(b[name] for b in bars) for name in CHART_SERIES},
            "window_left_s": p.readouts.windows().next_closes_in_s,
            "workers": p.readouts.workers(),
        }

    async def records(self, request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items() if v}
        cursor = params.pop("cursor", None)
        try:
            query = list_query(params)
            found = await run_in_threadpool(self.producer.page, query, cursor)
        except (HTTPProblem, InvalidInput) as exc:  # the form again, with what was wrong
            message = exc.message if isinstance(exc, HTTPProblem) else str(exc)
            return await self.render(
                request,
                "records.html",
                422,
                records=[],
                params=params,
                statuses=[s.value for s in Status],
                platforms=self.producer.settings.platform_names,
                next_url=None,
                total=None,
                error=message,
            )
        total = None
        if set(params) <= {"status"}:  # no other filter: the index's size is the total
            counts = await run_in_threadpool(self.producer.counts)
            total = counts[params["status"]] if "status" in params else sum(counts.values())
        next_url = None
        if found.next_cursor:
            next_url = "/console/records?" + urllib.parse.urlencode(
                {**params, "cursor": found.next_cursor}
            )
        return await self.render(
            request,
            "records.html",
            records=found.records,
            params=params,
            statuses=[s.value for s in Status],
            platforms=self.producer.settings.platform_names,
            next_url=next_url,
            total=total,
            error=None,
        )

    async def record(self, request: Request) -> Response:
        record_id = str(request.path_params["record_id"])
        record = await run_in_threadpool(self.producer.get, record_id, with_history=True)
        data = record.to_dict()
        return await self.render(
            request,
            "record.html",
            record=record,
            rows=record_rows(data),
            history=data["history"],
            history_labels=HISTORY_LABELS,
        )

    async def replay(self, request: Request) -> Response:
        """Preview (a dry run) unless the form says confirm=1; expired records need
        force=1 on top, which the preview asks for separately."""
        form: dict[str, str] = request.state.form
        fields = {
            k: v
            for k, v in form.items()
            if k in ("ids", "status", "event_name", "error_code", "platform", "since", "until")
            and v
        }
        body: dict[str, Any] = dict(fields)
        if "ids" in body:
            body["ids"] = [i for i in body["ids"].split() if i]
        flt = replay_filter(body)
        confirmed = form.get("confirm") == "1"
        force = form.get("force") == "1"
        expired = flt.status is Status.EXPIRED or any(
            r.status is Status.EXPIRED for r in self._selected(flt)
        )
        unconfirmed = confirmed and expired and not force
        if unconfirmed:  # the preview again, saying what is missing; nothing is replayed
            confirmed = False
        report = await run_in_threadpool(
            lambda: self.producer.operations.replay(
                flt, force=force or expired, dry_run=not confirmed
            )
        )
        return await self.render(
            request,
            "replay.html",
            400 if unconfirmed else 200,
            report=report,
            fields=fields,
            confirmed=confirmed,
            expired=expired,
            force_missing=unconfirmed,
        )

    async def compensate(self, request: Request) -> Response:
        """The compensation plan (a dry run) unless the form says confirm=1."""
        form: dict[str, str] = request.state.form
        fields = {
            k: v for k, v in form.items() if k in ("ids", "event_name", "since", "until") and v
        }
        body: dict[str, Any] = {**fields, "status": "expired"}
        if "ids" in body:
            body["ids"] = [i for i in body["ids"].split() if i]
        flt = replay_filter(body)
        confirmed = form.get("confirm") == "1"
        report = await run_in_threadpool(
            lambda: self.producer.operations.compensate(flt, dry_run=not confirmed)
        )
        return await self.render(
            request, "compensate.html", report=report.to_dict(), fields=fields, confirmed=confirmed
        )

    async def export(self, request: Request) -> Response:
        """The finance export as a CSV download, with the records page's filters."""
        query = dict(request.query_params)
        flt = ExportFilter(
            statuses=[Status.parse(query["status"])] if query.get("status") else tuple(Status),
            event_name=query.get("event_name") or None,
        )
        return await export_response(self.producer, flt, "csv")

    def _selected(self, flt: ReplayFilter) -> list[Any]:
        return [self.producer.get(i) for i in flt.ids] if flt.ids else []


def chart(bars: list[dict[str, int]]) -> dict[str, Any]:
    """Stacked bars for an inline SVG: one per minute, oldest first."""
    width, height, gap = 600, 120, 2
    step = width / max(1, len(bars))
    top = max([sum(b.values()) for b in bars] + [1])
    rects = []
    for i, values in enumerate(bars):
        y = float(height)
        for name, count in values.items():
            h = height * count / top
            if h > 0:
                y -= h
                rects.append(
                    {"x": i * step, "y": y, "w": step - gap, "h": h, "series": name, "n": count}
                )
    return {"width": width, "height": height, "rects": rects, "top": top}


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (at most MAX_FORM bytes) as a dict."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise HTTPProblem(413, "body_too_large", "the form is too large")
    try:
        pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise HTTPProblem(400, "invalid_form", "the form is not UTF-8") from None
    return dict(pairs)


def routes(producer: Producer, auth: Auth) -> list[Route]:
    c = Console(producer, auth)

    async def root(_: Request) -> Response:
        return RedirectResponse("/console", status_code=303)

    return [
        Route("/", root),
        Route("/console/login", c.login_page, methods=["GET"]),
        Route("/console/login", c.login, methods=["POST"]),
        Route("/console/logout", c.page("read", c.logout, post=True), methods=["POST"]),
        Route("/console", c.page("read", c.overview)),
        Route("/console/records", c.page("read", c.records)),
        Route("/console/records/{record_id}", c.page("read", c.record)),
        Route("/console/replay", c.page("operate", c.replay, post=True), methods=["POST"]),
        Route("/console/compensate", c.page("operate", c.compensate, post=True), methods=["POST"]),
        Route("/console/export", c.page("read", c.export)),
    ]
