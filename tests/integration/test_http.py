"""``adjustments serve`` as a real process over HTTP: the JSON API against the records it
writes, authentication, bad bodies, the OpenAPI document and the console's form security."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from adjustments import InvalidInput, Producer, RecordNotFound, Settings
from adjustments.sandbox import SandboxServer
from tests.helpers import (
    TOKENS,
    Server,
    console_login,
    create_record,
    run_cli,
    start_server,
    stop_server,
    written_keys,
)


@pytest.fixture
def api(http_server: Server, producer: Producer) -> Server:
    """The server, with a clean store and the shared worker running."""
    return http_server


def received(hours_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours_ago)).isoformat()


class TestCancellations:
    def test_post_enqueues_and_a_duplicate_returns_the_same_record(
        self, api: Server, producer: Producer, settle: Any
    ) -> None:
        """202 with the record for a new request, 200 with the same record for a duplicate;
        the worker then carries it out like a cancel() from Python."""
        body = {"event_name": "ev", "identifier": "http_1", "api": "v1"}
        status, first = api.json("POST", "/api/v1/cancellations", body, role="enqueue")
        assert status == 202 and first["status"] == "queued"
        status, again = api.json("POST", "/api/v1/cancellations", body, role="enqueue")
        assert status == 200 and again["id"] == first["id"]
        assert settle(first["id"]).status.value == "pending"
        status, got = api.json("GET", f"/api/v1/cancellations/{first['id']}", role="read")
        assert status == 200 and got["status"] == "pending" and len(got["history"]) == 1

    @pytest.mark.parametrize(
        "bad",
        [
            {"event_name": "ev", "identifier": "x" * 101},
            {"event_name": "ev", "identifier": "a\nb"},
            {"event_name": "", "identifier": "id"},
            {"event_name": "ev", "identifier": "id", "api": "v3"},
            {"event_name": "ev", "identifier": "id", "stripe_account": "cus_1"},
            {"event_name": "ev", "identifier": "id", "event_received_at": "2026-01-01T00:00:00"},
            {"event_name": "ev", "identifier": "id", "event_received_at": received(30)},
            {"event_name": 5, "identifier": "id"},
        ],
    )
    def test_invalid_input_is_422_with_cancels_message_and_nothing_written(
        self, api: Server, producer: Producer, redis_client: redis.Redis, bad: dict[str, Any]
    ) -> None:
        """The body is validated exactly as cancel() validates: same refusal, same message."""
        before = written_keys(redis_client)
        with pytest.raises(InvalidInput) as refused:
            producer.cancel(**bad)
        status, answer = api.json("POST", "/api/v1/cancellations", bad, role="enqueue")
        assert status == 422
        assert (
            answer["error"]["message"].split(", e.g.")[0] == str(refused.value).split(", e.g.")[0]
        )
        assert written_keys(redis_client) == before

    @pytest.mark.parametrize(
        ("raw", "status", "kind"),
        [
            (b"{not json", 400, "invalid_json"),
            (b"[1, 2]", 400, "invalid_body"),
            (b'{"event_name": "ev", "identifier": "i", "extra": 1}', 422, "invalid_request"),
            (b'{"event_name": "ev"}', 422, "invalid_request"),
            (b"\xff\xfe", 400, "invalid_json"),
            (b"{" + b" " * 70_000 + b"}", 413, "body_too_large"),
        ],
    )
    def test_bad_bodies_fail_cleanly_with_nothing_written(
        self,
        api: Server,
        redis_client: redis.Redis,
        raw: bytes,
        status: int,
        kind: str,
    ) -> None:
        """Malformed, non-object, unknown-field, incomplete and oversized bodies."""
        before = written_keys(redis_client)
        got, _, payload = api.request("POST", "/api/v1/cancellations", raw=raw, role="enqueue")
        assert (got, json.loads(payload)["error"]["type"]) == (status, kind)
        assert written_keys(redis_client) == before

    def test_a_chunked_body_over_the_cap_is_refused(
        self, api: Server, redis_client: redis.Redis
    ) -> None:
        """Without a Content-Length the cap still holds, counted as the body arrives."""
        before = written_keys(redis_client)
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
        chunks = (b" " * 8192 for _ in range(20))
        conn.request(
            "POST",
            "/api/v1/cancellations",
            body=chunks,
            headers={
                "Authorization": f"Bearer {TOKENS['enqueue']}",
                "Content-Type": "application/json",
            },
            encode_chunked=True,
        )
        response = conn.getresponse()
        assert response.status == 413
        conn.close()
        assert written_keys(redis_client) == before

    def test_idempotency_key_replays_the_first_answer_and_refuses_another_body(
        self, api: Server, producer: Producer
    ) -> None:
        """A retried POST with the same key gets 202 again (not 200); another body, 409."""
        body = {"event_name": "ev", "identifier": "idem_1", "api": "v1"}
        key = {"Idempotency-Key": "order-42"}
        first = api.json("POST", "/api/v1/cancellations", body, role="enqueue", headers=key)
        retry = api.json("POST", "/api/v1/cancellations", body, role="enqueue", headers=key)
        assert first[0] == retry[0] == 202 and first[1]["id"] == retry[1]["id"]
        other = {**body, "identifier": "idem_2"}
        status, answer = api.json(
            "POST", "/api/v1/cancellations", other, role="enqueue", headers=key
        )
        assert status == 409 and answer["error"]["type"] == "idempotency_key_reused"
        with pytest.raises(RecordNotFound):
            producer.find("ev", "idem_2", api="v1")

    def test_batch_reports_each_item(self, api: Server, producer: Producer) -> None:
        """Valid items are enqueued, invalid ones reported by position, duplicates counted;
        more than 1,000 items are refused whole."""
        items = [
            {"event_name": "ev", "identifier": "b_1", "api": "v1"},
            {"event_name": "ev", "identifier": "b_1", "api": "v1"},
            {"event_name": "ev", "identifier": ""},
            {"event_name": "ev", "identifier": "b_2", "api": "v2", "nope": 1},
        ]
        status, result = api.json("POST", "/api/v1/cancellations/batch", {"items": items})
        assert status == 200
        assert (result["created"], result["duplicates"], result["invalid"]) == (1, 1, 2)
        assert [sorted(r) for r in result["results"]] == [
            ["id", "index"], ["id", "index"], ["error", "index"], ["error", "index"],
        ]  # fmt: skip
        assert producer.get(result["results"][0]["id"]).identifier == "b_1"
        many = {"items": [{"event_name": "ev", "identifier": f"m{i}"} for i in range(1001)]}
        assert api.json("POST", "/api/v1/cancellations/batch", many)[0] == 422

    def test_list_pages_with_a_cursor_and_filters(
        self, api: Server, producer: Producer, worker_env: dict[str, str]
    ) -> None:
        """Seven records in pages of three: every id exactly once, newest first, and the last
        page has no cursor; a filter on event name keeps only its records."""
        # Enqueued on a queue no worker consumes, so that they stay queued while we page.
        idle = Settings.from_env({**worker_env, "ADJUSTMENTS_QUEUE": "http_idle"})
        with Producer(worker_env["REDIS_URL"], settings=idle) as parked:
            parked.cancel_many(
                [{"event_name": "a" if i % 2 else "b", "identifier": f"l{i}", "api": "v1"}
                 for i in range(7)]
            )  # fmt: skip
            parked.client.delete("http_idle")
        seen: list[str] = []
        cursor = ""
        pages = 0
        while True:
            query = urllib.parse.urlencode({"limit": 3, "status": "queued", "cursor": cursor})
            status, page = api.json("GET", f"/api/v1/cancellations?{query}", role="read")
            assert status == 200
            seen += [r["id"] for r in page["data"]]
            pages += 1
            if not page["next_cursor"]:
                break
            cursor = page["next_cursor"]
        assert len(seen) == len(set(seen)) == 7 and pages == 3
        status, only_a = api.json("GET", "/api/v1/cancellations?event_name=a&limit=50", role="read")
        assert {r["identifier"] for r in only_a["data"]} == {"l1", "l3", "l5"}
        assert api.json("GET", "/api/v1/cancellations?status=nope", role="read")[0] == 422
        assert api.json("GET", "/api/v1/cancellations?cursor=%%%", role="read")[0] == 422
        assert api.json("GET", "/api/v1/cancellations/adj_missing", role="read")[0] == 404

    def test_replay_is_a_dry_run_unless_asked(
        self, api: Server, producer: Producer, sandbox: SandboxServer, settle: Any
    ) -> None:
        """POST /replays previews by default and changes nothing; dry_run false replays."""
        sandbox.logic.script("rp_1", ["400"])
        record = producer.cancel("ev", "rp_1", api="v1")
        assert settle(record.id).status.value == "failed"
        status, preview = api.json("POST", "/api/v1/replays", {"status": "failed"})
        assert status == 200 and preview["dry_run"] and preview["ids"] == [record.id]
        assert producer.get(record.id).status.value == "failed"
        status, done = api.json("POST", "/api/v1/replays", {"ids": [record.id], "dry_run": False})
        assert status == 200 and done["replayed"] == 1
        assert settle(record.id).status.value == "pending"
        assert api.json("POST", "/api/v1/replays", {"status": "queued"})[0] == 422


class TestFinance:
    def test_who_asked_is_the_tokens_name_and_the_reason_is_kept(self, api: Server) -> None:
        """requested_by is the name of the token used (not something a body may claim); the
        original event and the reason are stored as sent."""
        event = {
            "payload": {"stripe_customer_id": "cus_1", "value": "4"},
            "timestamp": int(datetime.now(UTC).timestamp()),
        }
        body = {
            "event_name": "ev",
            "identifier": "fin_1",
            "reason": "test traffic",
            "original_event": event,
        }
        status, record = api.json("POST", "/api/v1/cancellations", body, role="enqueue")
        assert status == 202, record
        assert record["requested_by"] == "billing-svc" and record["reason"] == "test traffic"
        assert record["original_event"]["payload"] == event["payload"]
        claimed = {**body, "identifier": "fin_2", "requested_by": "someone-else"}
        status, answer = api.json("POST", "/api/v1/cancellations", claimed, role="enqueue")
        assert status == 422 and "requested_by" in answer["error"]["message"]
        batch = {"items": [{"event_name": "ev", "identifier": "fin_3"}]}
        status, answer = api.json("POST", "/api/v1/cancellations/batch", batch, role="operate")
        assert status == 202 or status == 200, answer
        status, got = api.json(
            "GET", f"/api/v1/cancellations/{answer['results'][0]['id']}", role="read"
        )
        assert got["requested_by"].startswith("operate-")  # its default name

    def test_compensations_need_operate_and_are_a_dry_run_by_default(self, api: Server) -> None:
        """A read token may not compensate; operate gets the plan, and nothing changes."""
        status, _ = api.json("POST", "/api/v1/compensations", {}, role="read")
        assert status == 403
        status, plan = api.json("POST", "/api/v1/compensations", {"limit": 10}, role="operate")
        assert status == 200 and plan["dry_run"] is True and plan["begun"] == 0
        status, _ = api.json("POST", "/api/v1/compensations", {"status": "failed"})
        assert status == 422

    def test_the_export_streams_every_record(self, api: Server) -> None:
        """GET /api/v1/exports streams CSV (a header first) or JSONL to a read token; an
        enqueue token may not read it; an unknown format is a 422."""
        for i in range(3):
            api.json(
                "POST",
                "/api/v1/cancellations",
                {"event_name": "ev", "identifier": f"exp_{i}", "reason": f"r{i}"},
                role="enqueue",
            )
        status, headers, body = api.request("GET", "/api/v1/exports?format=csv", role="read")
        assert status == 200 and headers["content-type"].startswith("text/csv")
        lines = body.decode().splitlines()
        assert lines[0].startswith("id,platform,api,event_name,identifier")
        assert sum(1 for line in lines if ",exp_" in line) == 3
        status, headers, body = api.request(
            "GET", "/api/v1/exports?format=jsonl&status=queued", role="read"
        )
        rows = [json.loads(line) for line in body.decode().splitlines()]
        assert status == 200 and {r["status"] for r in rows} <= {"queued"}
        assert api.request("GET", "/api/v1/exports", role="enqueue")[0] == 403
        assert api.request("GET", "/api/v1/exports?format=xls", role="read")[0] == 422


class TestAuthentication:
    @pytest.mark.parametrize(
        ("method", "path", "role", "status"),
        [
            ("POST", "/api/v1/cancellations", None, 401),
            ("POST", "/api/v1/cancellations", "read", 403),
            ("GET", "/api/v1/cancellations", "enqueue", 403),
            ("POST", "/api/v1/replays", "read", 403),
            ("POST", "/api/v1/replays", "enqueue", 403),
            ("GET", "/metrics", None, 401),
        ],
    )
    def test_missing_or_insufficient_tokens_are_refused_with_nothing_written(
        self,
        api: Server,
        redis_client: redis.Redis,
        method: str,
        path: str,
        role: str | None,
        status: int,
    ) -> None:
        """401 without a token, 403 for a role that may not; a JSON error either way."""
        before = written_keys(redis_client)
        body = {"event_name": "ev", "identifier": "auth_1"} if method == "POST" else None
        got, answer = api.json(method, path, body, role=role)
        assert got == status and answer["error"]["type"] in {"unauthorized", "forbidden"}
        assert written_keys(redis_client) == before

    def test_a_wrong_token_is_401_and_no_token_reaches_the_log(self, api: Server) -> None:
        """An unknown token (even a prefix of a real one) is 401; the log holds no token."""
        for presented in ("nope", TOKENS["operate"][:-1], TOKENS["operate"] + "x"):
            got, _, _ = api.request(
                "GET", "/api/v1/cancellations", role=None,
                headers={"Authorization": f"Bearer {presented}"},
            )  # fmt: skip
            assert got == 401
        log = api.log_path.read_text()
        assert not any(token in log for token in TOKENS.values())
        status, _, metrics = api.request("GET", "/metrics", role="read")
        assert status == 200 and b"adjustments_records{" in metrics

    def test_the_server_refuses_to_start_without_tokens(
        self, worker_env: dict[str, str], tmp_path: Path
    ) -> None:
        """No tokens: exit 2 with one line, unless --insecure-local on loopback; a bad token
        specification is one line that quotes no token."""
        env = {k: v for k, v in worker_env.items() if k != "ADJUSTMENTS_API_TOKENS"}
        for args in (["serve"], ["serve", "--insecure-local", "--host", "0.0.0.0"]):  # noqa: S104
            out = run_cli(args, env)
            assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        bad = run_cli(["serve"], {**env, "ADJUSTMENTS_API_TOKENS": "admin:supersecret-value-123"})
        assert bad.returncode == 2 and "supersecret" not in bad.stderr
        open_server = start_server(env, tmp_path / "open.log", "--insecure-local")
        try:
            assert open_server.json("GET", "/api/v1/cancellations", role=None)[0] == 200
        finally:
            stop_server(open_server)


class TestDocument:
    def test_openapi_names_every_route_and_each_answer_fits_its_schema(
        self, api: Server, producer: Producer
    ) -> None:
        """The document's paths and methods are exactly the API's, and a record as served
        has every required field of the Record schema and no field the schema lacks."""
        status, spec = api.json("GET", "/openapi.json", role=None)
        assert status == 200 and spec["openapi"].startswith("3.1")
        documented = {(p, m.upper()) for p, ops in spec["paths"].items() for m in ops}
        assert documented == {
            ("/api/v1/cancellations", "POST"),
            ("/api/v1/cancellations", "GET"),
            ("/api/v1/cancellations/batch", "POST"),
            ("/api/v1/cancellations/{id}", "GET"),
            ("/api/v1/replays", "POST"),
            ("/api/v1/compensations", "POST"),
            ("/api/v1/exports", "GET"),
            ("/healthz", "GET"),
            ("/metrics", "GET"),
        }
        validate_spec(spec)  # a valid OpenAPI 3.1 document, as client generators read it

        def fits(value: object, name: str) -> None:
            schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
            OAS31Validator(schema).validate(value)

        schema = spec["components"]["schemas"]["Record"]
        new = {"event_name": "e", "identifier": "d"}
        status, record = api.json("POST", "/api/v1/cancellations", new)
        assert status == 202 and set(record) <= set(schema["properties"])
        fits(record, "Record")
        fits(api.json("GET", f"/api/v1/cancellations/{record['id']}")[1], "Record")
        fits(api.json("GET", "/api/v1/cancellations?limit=5")[1], "RecordPage")
        batch = {"items": [{"event_name": "e", "identifier": "f"}, {"event_name": ""}]}
        fits(api.json("POST", "/api/v1/cancellations/batch", batch)[1], "BatchResult")
        fits(api.json("POST", "/api/v1/replays", {})[1], "ReplayReport")
        fits(api.json("POST", "/api/v1/cancellations", {"event_name": "e"})[1], "Error")
        with pytest.raises(ValidationError):  # the check can fail: a record is not an error
            fits(record, "Error")
        request_schema = spec["components"]["schemas"]["CancelRequest"]
        from adjustments.http.api import CANCEL_FIELDS

        assert set(request_schema["properties"]) == CANCEL_FIELDS


class TestConsoleForms:
    def login(self, api: Server, role: str) -> str:
        status, cookie = console_login(api, TOKENS[role])
        assert status == 303 and cookie
        return cookie

    def test_forms_without_csrf_or_from_a_read_session_change_nothing(
        self, api: Server, producer: Producer, sandbox: SandboxServer, settle: Any
    ) -> None:
        """A replay form posted without the CSRF token, with a wrong one, or by a read
        session is refused (403) and the failed record stays failed; an enqueue token cannot
        log in to the console."""
        sandbox.logic.script("csrf_1", ["400"])
        record = producer.cancel("ev", "csrf_1", api="v1")
        assert settle(record.id).status.value == "failed"
        form = {"ids": record.id, "confirm": "1"}
        operate, read = self.login(api, "operate"), self.login(api, "read")
        for cookie, extra in ((operate, {}), (operate, {"csrf": "forged"}), (read, {})):
            status, _, _ = api.request(
                "POST", "/console/replay", role=None,
                raw=urllib.parse.urlencode({**form, **extra}).encode(),
                headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
            )  # fmt: skip
            assert status == 403
        assert producer.get(record.id).status.value == "failed"
        assert console_login(api, TOKENS["enqueue"])[0] == 401
        assert api.request("GET", "/console", role=None)[0] == 303  # no session: to the login

    def test_replaying_expired_records_needs_the_second_confirmation(
        self, api: Server, producer: Producer, settle: Any
    ) -> None:
        """The preview of an expired record warns that Stripe will most likely refuse it and
        asks for a second confirmation; a confirmation without it replays nothing, one with
        it replays the record."""
        from adjustments.models import CancelRequest

        now = datetime.now(UTC)
        old = CancelRequest("v1", "ev", "exp_1", None, now - timedelta(hours=25))
        record = create_record(producer, old, now=now)
        assert settle(record.id).status.value == "expired"
        cookie = self.login(api, "operate")
        page = api.request("GET", "/console", role=None, headers={"Cookie": cookie})[2].decode()
        csrf = page.split('name="csrf" value="')[1].split('"')[0]

        def post(**fields: str) -> tuple[int, str]:
            status, _, body = api.request(
                "POST", "/console/replay", role=None,
                raw=urllib.parse.urlencode({"csrf": csrf, "ids": record.id, **fields}).encode(),
                headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
            )  # fmt: skip
            return status, body.decode()

        status, preview = post()
        assert status == 200 and "Stripe will most likely refuse them" in preview
        assert 'name="force"' in preview
        assert post(confirm="1")[0] == 400
        assert producer.get(record.id).status.value == "expired"
        status, done = post(confirm="1", force="1")
        assert status == 200 and "1</strong> record(s) replayed" in done
        assert producer.get(record.id).replays == 1

    def test_compensation_is_previewed_then_confirmed_and_the_export_downloads(
        self, api: Server, producer: Producer, sandbox: SandboxServer, settle: Any
    ) -> None:
        """An expired record with its original event: the record page offers a preview; the
        preview shows the customer's total; the confirmation queues the compensation, which
        the worker sends (compensated). The records page's CSV download holds the record."""
        from adjustments.models import CancelRequest, OriginalEvent

        sandbox.logic.meters.define({"event_name": "usage_sum"})
        now = datetime.now(UTC)
        event = OriginalEvent({"stripe_customer_id": "cus_C", "value": "9"}, now)
        old = CancelRequest("v1", "usage_sum", "cmp_1", None, now - timedelta(hours=25), event)
        record = create_record(producer, old, now=now)
        assert settle(record.id).status.value == "expired"
        cookie = self.login(api, "operate")
        page = api.request("GET", f"/console/records/{record.id}", role=None,
                           headers={"Cookie": cookie})[2].decode()  # fmt: skip
        assert 'id="compensate-one"' in page
        csrf = page.split('name="csrf" value="')[1].split('"')[0]

        def post(**fields: str) -> tuple[int, str]:
            status, _, body = api.request(
                "POST", "/console/compensate", role=None,
                raw=urllib.parse.urlencode({"csrf": csrf, "ids": record.id, **fields}).encode(),
                headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
            )  # fmt: skip
            return status, body.decode()

        status, preview = post()
        assert status == 200 and "<td>cus_C</td>" in preview and "<td>-9</td>" in preview
        assert producer.get(record.id).status.value == "expired"  # a preview changes nothing
        status, done = post(confirm="1")
        assert status == 200 and "1</strong> record(s) queued for compensation" in done
        assert settle(record.id).status.value == "compensated"
        _, headers, csv_body = api.request("GET", "/console/export?status=compensated",
                                           role=None, headers={"Cookie": cookie})  # fmt: skip
        assert headers["content-type"].startswith("text/csv") and record.id in csv_body.decode()
