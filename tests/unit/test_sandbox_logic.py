"""The sandbox's Stripe rules, without HTTP: validation, auth, idempotency, scripts."""

from __future__ import annotations

import json

import pytest

from adjustments.sandbox.config import SandboxConfig
from adjustments.sandbox.stripe_logic import StripeLogic

AUTH = "Bearer sk_test_unit"
V1 = b"event_name=ev&type=cancel&cancel%5Bidentifier%5D=id1"
V2 = json.dumps({"event_name": "ev", "type": "cancel", "cancel": {"identifier": "id1"}}).encode()


@pytest.fixture
def logic() -> StripeLogic:
    return StripeLogic(SandboxConfig())


class TestSandboxRules:
    def test_v1_success_shape(self, logic: StripeLogic) -> None:
        """The sandbox's v1 answer has Stripe's shape."""
        reply = logic.handle("v1", AUTH, None, "k1", V1)
        assert reply.status == 200 and reply.body["object"] == "billing.meter_event_adjustment"
        assert reply.body["cancel"] == {"identifier": "id1"} and "id" not in reply.body
        assert reply.headers["Request-Id"].startswith("req_")

    def test_v2_success_shape(self, logic: StripeLogic) -> None:
        """The sandbox's v2 answer has Stripe's shape."""
        reply = logic.handle("v2", AUTH, None, "k1", V2)
        assert reply.body["object"] == "v2.billing.meter_event_adjustment"
        assert reply.body["id"].startswith("mtr_event_adj_") and reply.body["created"].endswith("Z")

    @pytest.mark.parametrize(
        ("api", "body", "code"),
        [
            ("v1", b"event_name=ev&type=cancel", "parameter_missing"),
            (
                "v1",
                b"event_name=ev&type=cancel&cancel%5Bidentifier%5D=x&color=red",
                "parameter_unknown",
            ),
            ("v1", b"type=cancel&cancel%5Bidentifier%5D=x", "parameter_missing"),
            (
                "v2",
                b'{"event_name":"ev","type":"cancel","cancel":{}}',
                "invalid_cancel_configuration",
            ),
            ("v2", b"not json", "invalid_request"),
        ],
    )
    def test_schema_violations_are_400(
        self, logic: StripeLogic, api: str, body: bytes, code: str
    ) -> None:
        """Bodies that break Stripe's schema are 400 with its error code."""
        reply = logic.handle(api, AUTH, None, "k", body)
        assert reply.status == 400 and reply.body["error"]["code"] == code

    def test_auth_required(self, logic: StripeLogic) -> None:
        """No key, or a key the endpoint refuses, is 401."""
        assert logic.handle("v1", None, None, "k", V1).status == 401
        assert logic.handle("v2", "Bearer rk_test_x", None, "k", V2).status == 401  # v2: sk_ only

    def test_idempotent_replay_of_a_500(self, logic: StripeLogic) -> None:
        """A stored 500 is replayed with Idempotent-Replayed; a new key executes."""
        logic.script("id1", ["500"])
        first = logic.handle("v1", AUTH, None, "k1", V1)
        again = logic.handle("v1", AUTH, None, "k1", V1)
        assert (first.status, again.status) == (500, 500)
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert logic.handle("v1", AUTH, None, "k2", V1).status == 200
        assert logic.executions["id1"] == 1

    def test_same_key_other_params_is_an_idempotency_error(self, logic: StripeLogic) -> None:
        """Reusing an idempotency key with other parameters is an idempotency_error."""
        logic.handle("v1", AUTH, None, "k1", V1)
        other = logic.handle("v1", AUTH, None, "k1", V1.replace(b"id1", b"id2"))
        assert other.status == 400 and other.body["error"]["type"] == "idempotency_error"

    def test_v2_second_cancellation_is_already_canceled(self, logic: StripeLogic) -> None:
        """A second v2 cancellation of one event is already_canceled, executed once."""
        logic.handle("v2", AUTH, None, "k1", V2)
        reply = logic.handle("v2", AUTH, None, "k2", V2)
        assert reply.status == 400 and reply.body["error"]["type"] == "already_canceled"
        assert logic.executions["id1"] == 1

    def test_rate_limit(self) -> None:
        """Over rps_limit the sandbox answers 429 rate_limit, marked as a rate limiter's."""
        logic = StripeLogic(SandboxConfig(rps_limit=1, burst=2))
        replies = [logic.handle("v1", AUTH, None, f"k{i}", V1) for i in range(5)]
        assert [r.status for r in replies[:2]] == [200, 200]
        limited = [r for r in replies[2:] if r.status == 429]
        assert limited and all(
            r.headers["Stripe-Rate-Limited-Reason"] == "endpoint-rate" for r in limited
        )

    def test_a_lock_timeout_429_is_not_marked(self) -> None:
        """The sandbox's error_429 is Stripe's lock_timeout: a 429 without the header."""
        logic = StripeLogic(SandboxConfig(error_429=1.0))
        reply = logic.handle("v2", AUTH, None, "k", V2)
        assert reply.status == 429 and reply.body["error"]["code"] == "lock_timeout"
        assert "Stripe-Rate-Limited-Reason" not in reply.headers

    def test_unknown_scripted_outcome_refused(self, logic: StripeLogic) -> None:
        """Scripting an unknown outcome is refused."""
        with pytest.raises(ValueError, match="unknown scripted"):
            logic.script("x", ["explode"])


class TestAccountHeaders:
    """v1 acts for a connected account through Stripe-Account, v2 through Stripe-Context."""

    @pytest.mark.parametrize(
        ("api", "account", "context", "status"),
        [
            ("v1", "acct_1", None, 200),
            ("v1", None, "acct_1", 400),  # Stripe-Context on v1
            ("v1", "acct_1/acct_2", None, 400),  # a path is a v2 context only
            ("v1", "cus_1", None, 400),
            ("v2", None, "acct_1", 200),
            ("v2", None, "acct_1/acct_2", 200),
            ("v2", "acct_1", None, 400),  # Stripe-Account on v2
            ("v2", None, "acct_1/", 400),
            ("v2", None, "cus_1", 400),
        ],
    )
    def test_each_version_takes_its_own_header(
        self, logic: StripeLogic, api: str, account: str | None, context: str | None, status: int
    ) -> None:
        """v1 takes Stripe-Account, v2 Stripe-Context; the other version's header is refused."""
        body = V1 if api == "v1" else V2
        reply = logic.handle(api, AUTH, account, "k", body, context=context)
        assert reply.status == status
