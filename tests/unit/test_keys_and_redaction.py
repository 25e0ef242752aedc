"""Key names, idempotency keys, and secret redaction."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from adjustments import keys
from adjustments.logging import redact_processor
from adjustments.models import CancelRequest, Status
from adjustments.redact import redact


def req(**kw: str) -> CancelRequest:
    base = {"api": "v2", "event_name": "ev", "identifier": "id"}
    base.update(kw)
    return CancelRequest(base["api"], base["event_name"], base["identifier"])  # type: ignore[arg-type]


class TestKeys:
    def test_identifiers_are_hashed_in_key_names(self) -> None:
        """User data never appears raw in a Redis key."""
        r = CancelRequest("v1", "secret_event", "user@example.com", "acct_1")
        key = keys.dedupe("adj", r.digest)
        assert "user@example.com" not in key and "secret_event" not in key
        assert key.startswith("adj:dedupe:")

    def test_digest_separates_fields(self) -> None:
        """(ab, c) and (a, bc) are different requests; api and account count too."""
        assert (
            req(event_name="ab", identifier="c").digest
            != req(event_name="a", identifier="bc").digest
        )
        assert req(api="v1").digest != req(api="v2").digest

    def test_idempotency_key_is_deterministic_per_generation(self) -> None:
        """The same request and generation give the same key; a new generation a new one."""
        digest = req().digest
        assert keys.idempotency_key(digest, 0) == keys.idempotency_key(digest, 0)
        assert keys.idempotency_key(digest, 0) != keys.idempotency_key(digest, 1)
        assert len(keys.idempotency_key(digest, 99)) <= 255

    def test_index_names(self) -> None:
        """Status index keys are prefix:idx:status."""
        assert keys.index("adj", Status.FAILED) == "adj:idx:failed"


class TestRedaction:
    def test_keys_are_masked(self) -> None:
        """Secret and restricted keys, live or test, are replaced."""
        text = "bad key sk_test_51Habc123XYZ and rk_live_9zzTOP and sk_abcdEFGH1234"
        out = redact(text)
        assert "sk_test_51Habc123XYZ" not in out and "rk_live_9zzTOP" not in out
        assert "sk_abcdEFGH1234" not in out and out.count("[REDACTED]") == 3

    def test_ordinary_text_is_untouched(self) -> None:
        """Redaction leaves text that only looks like a key prefix alone."""
        assert redact("task_id=abc desk_top risk_score") == "task_id=abc desk_top risk_score"

    def test_processor_redacts_every_field(self) -> None:
        """The log pipeline masks keys in the event and in nested fields."""
        with capture_logs(processors=[redact_processor]) as logs:
            structlog.get_logger().info(
                "auth failed sk_test_abcdef123", detail={"k": "rk_test_zz99"}
            )
        assert logs[0]["event"] == "auth failed [REDACTED]"
        assert logs[0]["detail"] == {"k": "[REDACTED]"}
