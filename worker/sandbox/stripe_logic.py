"""What the sandbox answers to one adjustment request: Stripe's rules, faults and bookkeeping."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..sandbox.config import SandboxConfig
from ..sandbox.faults import Faults
from ..sandbox.meters import MeterBook, MeterError, meter_event_identifier
from ..sandbox.validation import Adjustment, Invalid, parse_v1, parse_v2


@dataclass(frozen=True)
class Reply:
    """An HTTP answer; ``drop`` closes the connection instead, ``delay_s`` answers late."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False


def error_body(
    api: str,
    status: int,
    message: str,
    *,
    code: str,
    etype: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """Each API version's error shape (v1 has doc_url and param; v2 type/code/message)."""
    if api == "v1":
        err: dict[str, Any] = {
            "type": etype or _v1_type(status),
            "code": code,
            "message": message,
            "doc_url": f"https://stripe.com/docs/error-codes/{code}",
        }
        if param:
            err["param"] = param
        return {"error": err}
    return {"error": {"type": etype or _v2_type(status, code), "code": code, "message": message}}


def _v1_type(status: int) -> str:
    return "api_error" if status >= 500 else "invalid_request_error"


def _v2_type(status: int, code: str) -> str:
    if code in ("rate_limit", "already_canceled"):
        return code
    return "api_error" if status >= 500 else "invalid_request"


@dataclass
class _Stored:
    fingerprint: str
    reply: Reply


# What the sandbox's rate limiter (rps_limit, a scripted rate_limited) says in
# Stripe-Rate-Limited-Reason, the header that marks a rate limiter's 429.
RATE_LIMITED_REASON = "endpoint-rate"
_V1_ACCOUNT = re.compile(r"acct_[A-Za-z0-9]+")
_V2_CONTEXT = re.compile(r"acct_[A-Za-z0-9]+(/acct_[A-Za-z0-9]+)*")


def header_problem(api: str, account: str | None, context: str | None) -> str | None:
    """Why the account headers do not fit the API version, or None: v1 acts on behalf of a
    connected account through Stripe-Account, v2 through Stripe-Context (``acct_...`` or a
    path ``acct_.../acct_...``), which supersedes Stripe-Account there."""
    if api == "v1":
        if context is not None:
            return "Stripe-Context is a v2 header; v1 takes Stripe-Account"
        if account is not None and not _V1_ACCOUNT.fullmatch(account):
            return "Invalid Stripe-Account header"
        return None
    if account is not None:
        return "v2 takes Stripe-Context, which supersedes Stripe-Account"
    if context is not None and not _V2_CONTEXT.fullmatch(context):
        return "Invalid Stripe-Context header"
    return None


class StripeLogic:
    """Thread-safe state of one sandbox: idempotency store, executions, scripts, rate limit."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._local = threading.local()  # the key of the request this thread answers
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._stored: dict[tuple[str, str, str], _Stored] = {}
            self._inflight: set[tuple[str, str, str]] = set()
            self._seen: Counter[tuple[str, str, str]] = Counter()
            self.executions: Counter[str] = Counter()
            self._cancelled: set[tuple[str, str, str, str]] = set()
            self.faults = Faults()
            self.requests: dict[str, list[dict[str, Any]]] = {}
            self.meters = MeterBook()

    def script(self, identifier: str, outcomes: list[str]) -> None:
        """Answer ``identifier``'s next requests with ``outcomes``, in order."""
        self.faults.script(identifier, outcomes)

    def configure(self, changes: dict[str, Any]) -> SandboxConfig:
        with self._lock:
            self.config = self.config.update(changes)
            return self.config

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "executions": dict(self.executions),
                "executed_total": sum(self.executions.values()),
                "requests_total": sum(len(v) for v in self.requests.values()),
                "rate_limited_total": sum(
                    1
                    for rows in self.requests.values()
                    for r in rows
                    if r["outcome"] == "rate_limited"
                ),
                "config": self.config.to_dict(),
            }

    # --- one request --------------------------------------------------------------------------
    def handle(
        self,
        api: str,
        auth: str | None,
        account: str | None,
        key: str | None,
        body: bytes,
        *,
        context: str | None = None,
        kind: str = "adjustment",
    ) -> Reply:
        """One adjustment request (or, with ``kind="meter_event"``, one meter event).
        ``account`` is the Stripe-Account header, ``context`` the Stripe-Context header: v1
        takes the first, v2 the second (which supersedes it)."""
        key = key or secrets.token_hex(12)  # the SDK always sends one; curl may not
        if not auth or not auth.startswith("Bearer "):
            return self._error(api, 401, "You did not provide an API key.", "api_key_required")
        secret = auth[len("Bearer ") :]
        self._local.secret = secret
        if not secret.startswith(("sk_", "rk_")) or (api == "v2" and not secret.startswith("sk_")):
            return self._error(
                api,
                401,
                "Invalid API Key provided.",
                "api_key_invalid",
                etype="invalid_request_error" if api == "v1" else "invalid_request",
            )
        problem = header_problem(api, account, context)
        if problem:
            return self._error(api, 400, problem, "account_invalid")
        account = account if api == "v1" else context
        if kind == "meter_event":
            return self._meter_event(api, secret, account, key, body)
        try:
            adj = parse_v1(body) if api == "v1" else parse_v2(body)
        except Invalid as exc:
            code = exc.code
            return self._error(api, 400, str(exc), code, param=exc.param)
        if not self.faults.take_token(
            self.config, getattr(self._local, "secret", "")
        ) or self.faults.scripted_rate_limit(adj.identifier):
            # Stripe's rate limiters run before its idempotency layer: a 429 can come back even
            # for a key whose first request was executed.
            return self._rate_limited(api, adj.identifier, key, account)
        scope = (secret, account or "", key)
        fingerprint = f"{api}|{body!r}"
        conflict, stored, attempt = self._admit(api, scope)
        if conflict is not None:
            return conflict
        if stored is not None:
            return self._replay(api, adj, key, stored, fingerprint)
        try:
            return self._execute(api, adj, secret, account, key, scope, fingerprint, attempt)
        finally:
            with self._lock:
                self._inflight.discard(scope)

    def _rate_limited(self, api: str, identifier: str, key: str, account: str | None) -> Reply:
        self._log(identifier, key, "rate_limited", 429, account)
        return self._error(
            api,
            429,
            "Too many requests hit the API too quickly.",
            "rate_limit",
            headers={"Stripe-Rate-Limited-Reason": RATE_LIMITED_REASON},
        )

    def _admit(
        self, api: str, scope: tuple[str, str, str]
    ) -> tuple[Reply | None, _Stored | None, int]:
        """The idempotency layer's door: (a 409 while the key's first request is still being
        answered, or None; its stored answer, if any; this request's attempt number under
        the key). A request let in is in flight until the caller discards its scope."""
        with self._lock:
            stored = self._stored.get(scope)
            if stored is None and scope in self._inflight:
                conflict = self._error(
                    api,
                    409,
                    "There is currently another in-progress request using this Idempotency-Key.",
                    "idempotency_key_in_use",
                )
                return conflict, None, 0
            if stored is None:
                self._inflight.add(scope)
            self._seen[scope] += 1
            return None, stored, self._seen[scope]

    def _meter_event(
        self, api: str, secret: str, account: str | None, key: str, body: bytes
    ) -> Reply:
        """One meter event: the rate limit, the idempotency layer, faults scripted for its
        identifier, then the meter book's validation (a refusal is stored like Stripe's)."""
        try:
            identifier = meter_event_identifier(api, body)
        except MeterError as exc:
            return self._error(api, 400, str(exc), exc.code)
        if not self._take_token():
            return self._rate_limited(api, identifier, key, account)
        scope = (secret, account or "", key)
        fingerprint = f"meter_event|{api}|{body!r}"
        conflict, stored, attempt = self._admit(api, scope)
        if conflict is not None:
            return conflict
        if stored is not None:
            return self._replay(api, Adjustment("", identifier), key, stored, fingerprint)
        try:
            if self.config.latency_ms:
                time.sleep(self.config.latency_ms / 1000)
            fault = self.faults.fault(self.config, identifier, key, attempt)
            if fault == "drop":
                self._log(identifier, key, "drop", None)
                return Reply(drop=True)
            if fault == "500":
                reply = self._error(api, 500, "Sandbox 500.", "api_error")
            else:
                try:
                    obj = self.meters.record(api, body, account or "")
                    with self._lock:
                        self.executions[identifier] += 1
                    reply = Reply(200, obj, {"Request-Id": _request_id()})
                except MeterError as exc:
                    reply = self._error(
                        api, 400, str(exc), exc.code, headers={"Stripe-Should-Retry": "false"}
                    )
            with self._lock:
                self._stored[scope] = _Stored(fingerprint, reply)
            self._log(identifier, key, fault or ("ok" if reply.status == 200 else "refused"),
                      reply.status, account)  # fmt: skip
            if fault == "timeout":
                return Reply(reply.status, reply.body, reply.headers, delay_s=self.config.slow_s)
            return reply
        finally:
            with self._lock:
                self._inflight.discard(scope)

    def _replay(
        self, api: str, adj: Adjustment, key: str, stored: _Stored, fingerprint: str
    ) -> Reply:
        if stored.fingerprint != fingerprint:
            return self._error(
                api,
                400,
                "Keys for idempotent requests can only be used with the "
                "same parameters they were first used with.",
                "idempotency_error",
                etype="idempotency_error",
            )
        self._log(adj.identifier, key, "replayed", stored.reply.status)
        old = stored.reply
        return Reply(
            old.status,
            old.body,
            {**old.headers, "Idempotent-Replayed": "true", "Request-Id": _request_id()},
        )

    def _execute(
        self,
        api: str,
        adj: Adjustment,
        secret: str,
        account: str | None,
        key: str,
        scope: tuple[str, str, str],
        fingerprint: str,
        attempt: int,
    ) -> Reply:
        cfg = self.config
        if cfg.latency_ms:
            time.sleep(cfg.latency_ms / 1000)
        fault = self.faults.fault(self.config, adj.identifier, key, attempt)
        if fault in ("429", "429_retry", "429_no_retry"):
            headers = {
                "429_retry": {"Stripe-Should-Retry": "true"},
                "429_no_retry": {"Stripe-Should-Retry": "false"},
            }.get(fault, {})
            # Not a rate limiter (no Stripe-Rate-Limited-Reason): a lock conflict, which meter
            # calls hit because Stripe allows one concurrent call per customer and meter.
            self._log(adj.identifier, key, fault, 429)
            return self._error(
                api,
                429,
                "This object cannot be accessed right now because another API request or "
                "Stripe process is currently accessing it.",
                "lock_timeout",
                headers=headers,
            )
        if fault == "drop":
            self._log(adj.identifier, key, "drop", None)
            return Reply(drop=True)
        if fault in ("500", "400", "404", "401"):
            status = int(fault)
            # The 401 quotes the key unmasked (Stripe masks it): a harsher test of our redaction.
            message = (
                f"Invalid API Key provided: {secret}" if status == 401 else f"Sandbox {status}."
            )
            reply = self._error(
                api,
                status,
                message,
                {
                    500: "api_error",
                    400: "parameter_invalid",
                    404: "resource_missing",
                    401: "api_key_invalid",
                }[status],
            )
        else:
            reply = self._accept(api, adj, secret, account)
        with self._lock:
            if reply.status != 401:  # Stripe stores the response once the endpoint executes
                self._stored[scope] = _Stored(fingerprint, reply)
        self._log(adj.identifier, key, fault or "ok", reply.status, account)
        if fault == "timeout":
            return Reply(reply.status, reply.body, reply.headers, delay_s=cfg.slow_s)
        return reply

    def _accept(self, api: str, adj: Adjustment, secret: str, account: str | None) -> Reply:
        # Another key is another Stripe account: its events are its own.
        target = (secret, account or "", adj.event_name, adj.identifier)
        with self._lock:
            if api == "v2" and target in self._cancelled:
                already = True
            else:
                already = False
                self._cancelled.add(target)
                self.executions[adj.identifier] += 1
        if already:
            return self._error(
                api, 400, "This meter event was already canceled.", "already_canceled"
            )
        body: dict[str, Any] = {
            "object": "billing.meter_event_adjustment",
            "livemode": secret.startswith(("sk_live", "rk_live")),
            "status": self.config.status,
            "event_name": adj.event_name,
            "type": "cancel",
            "cancel": {"identifier": adj.identifier},
        }
        if api == "v2":
            body = {
                "id": "mtr_event_adj_" + secrets.token_hex(12),
                "object": "v2.billing.meter_event_adjustment",
                "created": datetime.now(UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                **{k: v for k, v in body.items() if k != "object"},
            }
        return Reply(200, body, {"Request-Id": _request_id()})

    def _take_token(self) -> bool:
        return self.faults.take_token(self.config, getattr(self._local, "secret", ""))

    def _log(
        self,
        identifier: str,
        key: str,
        outcome: str,
        status: int | None,
        account: str | None = None,
    ) -> None:
        row = {
            "at": time.monotonic(),
            "idempotency_key": key,
            "outcome": outcome,
            "http_status": status,
            "account": account,
            # The key's last characters: which of several accounts' keys came (a test double:
            # never the whole key).
            "key_tail": getattr(self._local, "secret", "")[-6:],
        }
        with self._lock:
            self.requests.setdefault(identifier, []).append(row)

    def _error(
        self,
        api: str,
        status: int,
        message: str,
        code: str,
        *,
        etype: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        body = error_body(api, status, message, code=code, etype=etype, param=param)
        return Reply(status, body, {"Request-Id": _request_id(), **(headers or {})})


def _request_id() -> str:
    return "req_" + secrets.token_hex(7)
