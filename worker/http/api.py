"""The JSON API under ``/api/v1``: the same validation, records and errors as ``Producer``.

Errors are ``{"error": {"type": ..., "message": ...}}`` with 400 (not JSON, or not an object),
401 (no or unknown token), 403 (the token's role may not), 404, 409 (an Idempotency-Key
reused with another body), 413 (body too large), 422 (a field missing, unknown or invalid;
nothing written), 503 (Redis unavailable).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, cast

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import AdjustmentsError, InvalidInput, RecordNotFound, StoreError
from ..export import FORMATS, ExportFilter, encode
from ..listing import Query
from ..models import Record, Status, parse_time
from ..producer import Producer
from ..replay import ReplayFilter
from .auth import Auth, allowed, article, fingerprint
from .memo import Memo

MAX_BODY = 64 * 1024
MAX_BATCH_BODY = 1024 * 1024
MAX_BATCH = 1000
IDEMPOTENCY_TTL_S = 24 * 3600
IN_FLIGHT_TTL_S = 60  # a claimed key whose request never finished (a crash) frees up
# requested_by is not among them: over HTTP it is the name of the token used.
CANCEL_FIELDS = frozenset(
    {"event_name", "identifier", "api", "stripe_account", "event_received_at", "original_event",
     "reason", "platform"}
)  # fmt: skip
COMPENSATE_FIELDS = frozenset({"ids", "event_name", "since", "until", "limit", "dry_run"})
EXPORT_PARAMS = frozenset(
    {"format", "since", "until", "status", "event_name", "account", "platform"}
)
REPLAY_FIELDS = frozenset(
    {
        "ids",
        "status",
        "event_name",
        "error_code",
        "platform",
        "since",
        "until",
        "limit",
        "force",
        "dry_run",
    }
)


class HTTPProblem(Exception):
    """An error answer: status, type and a message safe to show."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def problem(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def record_json(record: Record) -> dict[str, Any]:
    data = record.to_dict()
    data.pop("history", None)
    return data


async def read_json(request: Request, cap: int) -> Any:
    """The request body as JSON, refusing more than ``cap`` bytes before reading them.

    Only ``application/json`` is read: a web page can send ``text/plain`` or a form to any
    address without a CORS preflight, never JSON, so this keeps other sites' pages from
    posting to a server (``--insecure-local`` above all) in a visitor's browser."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPProblem(
            415, "unsupported_media_type", "the body must be sent as Content-Type: application/json"
        )
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > cap):
        raise HTTPProblem(413, "body_too_large", f"the body may have at most {cap} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise HTTPProblem(413, "body_too_large", f"the body may have at most {cap} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPProblem(400, "invalid_json", "the body is not valid JSON") from None
    except RecursionError:  # e.g. 2,000 "[": no body we take nests that deep
        raise HTTPProblem(400, "invalid_json", "the body's JSON is nested too deeply") from None


def object_with(data: Any, known: frozenset[str], what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise HTTPProblem(400, "invalid_body", f"{what} must be a JSON object")
    unknown = sorted(set(data) - known)
    if unknown:
        raise HTTPProblem(422, "invalid_request", f"unknown field(s): {', '.join(unknown)}")
    return cast(dict[str, Any], data)


class Api:
    """The handlers, sharing one Producer (its Redis pool is thread-safe)."""

    def __init__(self, producer: Producer, auth: Auth) -> None:
        self.producer = producer
        self.memo = Memo(producer.client, producer.settings.key_prefix)
        self.auth = auth

    def guarded(
        self, need: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the bearer token check and with our error mapping."""

        async def endpoint(request: Request) -> Response:
            token = self.auth.token_for_header(request.headers.get("authorization"))
            role = token.role if token else None
            request.state.token = fingerprint(token.secret) if token else ""
            request.state.requested_by = token.name if token else "local"
            if self.auth.enabled:
                if role is None:
                    return problem(401, "unauthorized", "a valid bearer token is required")
                if not allowed(role, need):
                    return problem(
                        403, "forbidden", f"{article(role)} {role} token may not do this"
                    )
            try:
                return await handler(request)
            except HTTPProblem as exc:
                return problem(exc.status, exc.kind, exc.message)
            except RecordNotFound as exc:
                return problem(404, "not_found", f"no such cancellation: {exc}")
            except InvalidInput as exc:
                return problem(422, "invalid_request", str(exc))
            except StoreError as exc:
                return problem(503, "store_unavailable", str(exc))
            except AdjustmentsError as exc:
                return problem(500, "error", str(exc))

        return endpoint

    # -- cancellations -------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        body = object_with(await read_json(request, MAX_BODY), CANCEL_FIELDS, "the body")
        body = {**body, "requested_by": request.state.requested_by}
        key = request.headers.get("idempotency-key")
        if key is None:
            return await self._create(body)
        memo = self._idempotency_name(request, key)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        claim = json.dumps({"fingerprint": digest})
        # The key is claimed before the record is written (SET NX): of two concurrent POSTs
        # with one key, exactly one goes on; the other gets 409.
        if not await run_in_threadpool(self.memo.remember, memo, claim, ttl_s=IN_FLIGHT_TTL_S):
            return await self._earlier_answer(memo, digest)
        try:
            response = await self._create(body)
        except BaseException:
            # Nothing was written under this key (refused input, Redis down): as at Stripe, no
            # answer is kept, and a retry with the same key runs afresh.
            await run_in_threadpool(self.memo.forget, memo)
            raise
        first = {"fingerprint": digest, "status": response.status_code}
        first["body"] = json.loads(bytes(response.body))
        await run_in_threadpool(
            self.memo.remember, memo, json.dumps(first), ttl_s=IDEMPOTENCY_TTL_S, replace=True
        )
        return response

    async def _create(self, body: dict[str, Any]) -> JSONResponse:
        for name in ("event_name", "identifier"):
            if name not in body:
                raise HTTPProblem(422, "invalid_request", f"{name} is required")
        record = await self.producer.cancel_async(**body)
        return JSONResponse(record_json(record), status_code=202 if record.created else 200)

    def _idempotency_name(self, request: Request, key: str) -> str:
        """Where a key's first answer is kept: per token (one client's keys never meet
        another's), the key itself hashed into the Redis key name."""
        if not 1 <= len(key) <= 255:
            raise HTTPProblem(422, "invalid_request", "Idempotency-Key must be 1-255 characters")
        return f"idempotency-key:{getattr(request.state, 'token', '')}:{key}"

    async def _earlier_answer(self, memo: str, digest: str) -> Response:
        """The first answer given under this key, exactly (status and body); 409 when the
        key came with another body, or its first request is still being answered."""
        stored = await run_in_threadpool(self.memo.recall, memo)
        if stored is None:  # expired between the two calls: a rare race, safe to retry
            raise HTTPProblem(409, "idempotency_key_in_use", "retry this request")
        earlier = json.loads(stored)
        if earlier["fingerprint"] != digest:
            raise HTTPProblem(
                409, "idempotency_key_reused", "this Idempotency-Key was used with another body"
            )
        if "status" not in earlier:
            raise HTTPProblem(
                409,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still being answered; retry shortly",
            )
        return JSONResponse(
            earlier["body"],
            status_code=int(earlier["status"]),
            headers={"idempotent-replayed": "true"},
        )

    async def create_batch(self, request: Request) -> Response:
        body = object_with(
            await read_json(request, MAX_BATCH_BODY), frozenset({"items"}), "the body"
        )
        items = body.get("items")
        if not isinstance(items, list):
            raise HTTPProblem(422, "invalid_request", "items must be an array")
        if not 1 <= len(items) <= MAX_BATCH:
            raise HTTPProblem(422, "invalid_request", f"items must hold 1 to {MAX_BATCH} items")
        who = request.state.requested_by
        for item in items:
            if isinstance(item, dict):
                if "requested_by" in item:
                    raise HTTPProblem(
                        422,
                        "invalid_request",
                        "requested_by is set by the server: the name of the token used",
                    )
                item["requested_by"] = who
        result = await run_in_threadpool(self.producer.cancel_many, items)
        errors = dict(result.invalid)
        results = [
            {"index": i, "id": rid} if rid is not None else {"index": i, "error": errors[i]}
            for i, rid in enumerate(result.ids)
        ]
        return JSONResponse(
            {
                "created": result.created,
                "duplicates": result.duplicates,
                "invalid": len(result.invalid),
                "results": results,
            }
        )

    async def get_one(self, request: Request) -> Response:
        record_id = str(request.path_params["record_id"])
        record = self.producer.get(record_id, with_history=True)
        return JSONResponse(record.to_dict())

    async def list(self, request: Request) -> Response:
        query = list_query(dict(request.query_params))
        found = await run_in_threadpool(
            self.producer.page, query, request.query_params.get("cursor") or None
        )
        return JSONResponse(
            {"data": [record_json(r) for r in found.records], "next_cursor": found.next_cursor}
        )

    async def replays(self, request: Request) -> Response:
        body = object_with(await read_json(request, MAX_BODY), REPLAY_FIELDS, "the body")
        force = flag(body.pop("force", False), "force")
        dry_run = flag(body.pop("dry_run", True), "dry_run")
        flt = replay_filter(body)
        report = await run_in_threadpool(
            lambda: self.producer.operations.replay(flt, force=force, dry_run=dry_run)
        )
        data = report.to_dict()
        data["ids"] = [r.id for r in report.selected]
        return JSONResponse(data)

    async def compensations(self, request: Request) -> Response:
        """Compensate expired records: the plan (a dry run) unless dry_run is false."""
        body = object_with(await read_json(request, MAX_BODY), COMPENSATE_FIELDS, "the body")
        dry_run = flag(body.pop("dry_run", True), "dry_run")
        flt = replay_filter({**body, "status": "expired"})
        report = await run_in_threadpool(
            lambda: self.producer.operations.compensate(flt, dry_run=dry_run)
        )
        return JSONResponse(report.to_dict())

    async def exports(self, request: Request) -> Response:
        """Every record in range as CSV or JSONL, streamed page by page (flat memory)."""
        params = dict(request.query_params)
        unknown = sorted(set(params) - EXPORT_PARAMS)
        if unknown:
            raise HTTPProblem(422, "invalid_request", f"unknown parameter(s): {', '.join(unknown)}")
        fmt = params.get("format", "csv")
        if fmt not in FORMATS:
            raise HTTPProblem(422, "invalid_request", "format must be csv or jsonl")
        flt = ExportFilter(
            statuses=[status_of(params["status"])] if params.get("status") else tuple(Status),
            since=time_of(params["since"], "since") if params.get("since") else None,
            until=time_of(params["until"], "until") if params.get("until") else None,
            event_name=params.get("event_name") or None,
            account=params.get("account"),
            platform=params.get("platform") or None,
        )
        return await export_response(self.producer, flt, fmt)


async def export_response(producer: Producer, flt: ExportFilter, fmt: str) -> Response:
    """The export streamed as a download, a page of rows at a time. Its first chunk is read
    before the answer starts, so Redis being down is still a 503, not a cut-off file."""
    chunks = encode(producer.operations.export(flt), fmt)
    first = await run_in_threadpool(next, chunks, "")
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"

    async def body() -> AsyncIterator[str]:
        yield first
        async for chunk in iterate_in_threadpool(chunks):
            yield chunk

    return StreamingResponse(
        body(),
        media_type=media,
        headers={"content-disposition": f'attachment; filename="adjustments-export.{fmt}"'},
    )


def flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise HTTPProblem(422, "invalid_request", f"{name} must be true or false")
    return value


def status_of(value: object) -> Status:
    try:
        return Status(str(value))
    except ValueError:
        names = ", ".join(s.value for s in Status)
        raise HTTPProblem(422, "invalid_request", f"status must be one of {names}") from None


def time_of(value: object, name: str) -> datetime:
    """An ISO 8601 time with a UTC offset, as the CLI's --since/--until take."""
    if not isinstance(value, str):
        raise HTTPProblem(422, "invalid_request", f"{name} must be an ISO 8601 time string")
    when = parse_time(name, value)
    assert when is not None
    return when


def list_query(params: dict[str, str]) -> Query:
    """The filters of ``GET /api/v1/cancellations`` (and the console's lists)."""
    known = {
        "status",
        "event_name",
        "identifier",
        "error_code",
        "platform",
        "since",
        "until",
        "limit",
        "cursor",
    }
    unknown = sorted(set(params) - known)
    if unknown:
        raise HTTPProblem(422, "invalid_request", f"unknown parameter(s): {', '.join(unknown)}")
    for name in ("status", "since", "until", "limit"):
        if name in params and not params[name]:
            raise HTTPProblem(422, "invalid_request", f"{name} must not be empty")
    limit = params.get("limit", "50")
    if not (limit.isascii() and limit.isdigit()) or len(limit) > 6:  # not "²", not 10**5000
        raise HTTPProblem(422, "invalid_request", "limit must be a whole number, 1-500")
    return Query(
        statuses=[status_of(params["status"])] if params.get("status") else tuple(Status),
        event_name=params.get("event_name") or None,
        identifier=params.get("identifier") or None,
        error_code=params.get("error_code") or None,
        platform=params.get("platform") or None,
        since=time_of(params["since"], "since") if params.get("since") else None,
        until=time_of(params["until"], "until") if params.get("until") else None,
        limit=int(limit),
    )


def replay_filter(body: dict[str, Any]) -> ReplayFilter:
    """The filters of ``POST /api/v1/replays`` as a ReplayFilter."""
    args: dict[str, Any] = {}
    if "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise HTTPProblem(422, "invalid_request", "ids must be an array of strings")
        args["ids"] = ids
    if "status" in body:
        args["status"] = status_of(body["status"])
    for name in ("event_name", "error_code", "platform"):
        if body.get(name) is not None:
            if not isinstance(body[name], str):
                raise HTTPProblem(422, "invalid_request", f"{name} must be a string")
            args[name] = body[name]
    for name in ("since", "until"):
        if body.get(name) is not None:
            args[name] = time_of(body[name], name)
    if "limit" in body:
        limit = body["limit"]
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
            raise HTTPProblem(422, "invalid_request", "limit must be a whole number, 1-10000")
        args["limit"] = limit
    return ReplayFilter(**args)
