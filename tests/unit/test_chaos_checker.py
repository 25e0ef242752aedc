"""`make chaos`'s checker, rule by rule: each one passes a clean history and names the
records of one that breaks it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from benchmarks.chaos_checker import Acked, Evidence, check, table

ATTEMPT = {"attempt": 1, "http_status": 200}


def record(status: str, identifier: str = "c1", platform: str = "us", **kw: Any) -> dict[str, Any]:
    history = kw.pop("history", [{**ATTEMPT, "outcome": "accepted", "status": status}])
    return {
        "status": status,
        "platform": platform,
        "identifier": identifier,
        "replays": 0,
        "expires_at_ms": None,
        "compensation_identifier": None,
        "history": history,
        **kw,
    }


def evidence(**kw: Any) -> Evidence:
    base: dict[str, Any] = {
        "acked": [Acked("r1", "us", "c1")],
        "records": {"r1": record("pending")},
        "executions": {("us", "c1"): [100.0]},
        "compensation_events": Counter(),
        "metrics_records": {"pending": 1},
    }
    return Evidence(**{**base, **kw})


def broken(e: Evidence) -> dict[str, list[str]]:
    return {v.rule: v.violations for v in check(e) if v.violations}


def test_a_clean_history_passes_every_rule() -> None:
    """One accepted cancellation executed once: every rule holds, and the table lists them."""
    verdicts = check(evidence())
    assert all(v.ok for v in verdicts) and len(verdicts) == 8
    assert "violations" in table(verdicts)


def test_an_acknowledged_record_still_live_or_missing() -> None:
    """An acknowledged record still live, or gone, is named."""
    live = broken(
        evidence(records={"r1": record("retrying")}, executions={}, metrics_records={"retrying": 1})
    )
    assert live == {"every acknowledged cancellation is terminal": ["r1 (us/c1): retrying"]}
    gone = broken(evidence(records={}, executions={}, metrics_records={"pending": 0}))
    assert gone == {"nothing acknowledged is missing": ["r1 (us/c1)"]}


def test_two_executions_of_one_platform_and_identifier() -> None:
    """Two executions on one platform break at-most-once (the other platform's is its own)."""
    found = broken(evidence(executions={("us", "c1"): [1.0, 2.0], ("eu", "c1"): [1.0]}))
    assert found["each (platform, identifier) executed at most once"] == ["us/c1: 2 times"]
    assert (
        "r1 is pending but was executed 2 times"
        in found["accepted ones executed exactly once, the others never"]
    )


def test_an_expired_record_that_stripe_executed_anyway() -> None:
    """A record that says expired while Stripe executed its cancellation is named; one that
    says its outcome is unknown is not, unless it was compensated (a double correction)."""
    expired = record(
        "expired", history=[{**ATTEMPT, "outcome": "window_closed", "status": "expired"}]
    )
    found = broken(evidence(records={"r1": expired}, metrics_records={"expired": 1}))
    assert found == {
        "accepted ones executed exactly once, the others never": [
            "r1 is expired but Stripe executed its cancellation"
        ]
    }
    expired["key_outcome"] = "unknown"  # it says it may have been executed
    assert broken(evidence(records={"r1": expired}, metrics_records={"expired": 1})) == {}
    expired["status"] = "compensated"  # ...but then it must never be compensated
    found = broken(evidence(records={"r1": expired}, metrics_records={"compensated": 1}))
    assert (
        "r1 is compensated but Stripe executed its cancellation"
        in found["accepted ones executed exactly once, the others never"]
    )


def test_compensations_once_and_only_for_what_stripe_did_not_cancel() -> None:
    """One compensating event per compensated record; two, or none, are named."""
    compensated = record(
        "compensated",
        compensation_identifier="adjcmp_1",
        history=[
            {**ATTEMPT, "outcome": "window_closed", "status": "expired"},
            {"outcome": "compensating", "status": "queued"},
            {**ATTEMPT, "outcome": "compensated", "status": "compensated"},
        ],
    )
    clean = evidence(
        records={"r1": compensated},
        executions={},
        compensation_events=Counter({"adjcmp_1": 1}),
        metrics_records={"compensated": 1},
    )
    assert broken(clean) == {}
    twice = evidence(
        records={"r1": compensated},
        executions={},
        compensation_events=Counter({"adjcmp_1": 2}),
        metrics_records={"compensated": 1},
    )
    assert broken(twice) == {
        "each compensation recorded once, only for what was not cancelled": [
            "r1: 2 compensating events",
            "r1: compensated without its event recorded",
        ]
    }


def test_illegal_transitions_are_named() -> None:
    """A transition the state machine does not allow (a pending record replayed) is named."""
    bad = record(
        "pending",
        history=[
            {**ATTEMPT, "outcome": "accepted", "status": "pending"},
            {"outcome": "replayed", "status": "queued"},  # a pending record is never replayed
            {**ATTEMPT, "outcome": "accepted", "status": "pending"},
        ],
    )
    found = broken(evidence(records={"r1": bad}))
    assert found == {
        "every transition in every history is legal": ["r1: replayed from pending to queued"]
    }


def test_a_send_after_the_deadline() -> None:
    """An execution after the record's deadline is named, unless a forced replay lifted it."""
    late = record("pending", expires_at_ms="100000")
    found = broken(evidence(records={"r1": late}, executions={("us", "c1"): [105.0]}))
    assert found == {"no record sent after its deadline": ["r1: executed 5.0 s after its deadline"]}
    forced = record("pending", expires_at_ms="100000", replays=1)  # a forced replay: no deadline
    lost = evidence(records={"r1": late}, executions={("us", "c1"): [105.0]}, forced={"r1"})
    assert broken(lost) == {}  # ...also when a failover lost the replay's write
    assert broken(evidence(records={"r1": forced}, executions={("us", "c1"): [105.0]})) == {}


def test_metrics_that_disagree_with_the_records() -> None:
    """Metrics whose record counts differ from the records are named."""
    found = broken(evidence(metrics_records={"pending": 2}))
    assert found == {
        "the metrics' record counts agree with the records": [
            "pending: metrics say 2, the records 1"
        ]
    }
    found = broken(evidence(metrics_records={}))  # a scrape that read nothing proves nothing
    assert found == {
        "the metrics' record counts agree with the records": [
            "the metrics scrape read no record counts"
        ]
    }
