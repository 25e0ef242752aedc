"""`make chaos`'s checker: what the whole history must show once the faults stop and the
deployment settles. Plain data in, a table out, so that each rule has tests of its own
(tests/unit/test_chaos_checker.py) and a violation names its records.

The evidence: what each producer call was told (the acknowledged requests), every record
with its transition history (read from Redis after the settle period), what the sandbox
executed (per platform key and identifier, with the time) and the compensating meter events
it recorded, and the deployment's record counts as the metrics report them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TERMINAL = {"pending", "complete", "failed", "expired", "compensated"}
LIVE = {"queued", "processing", "retrying"}
ACCEPTED = {"pending", "complete"}
# Where each kind of history entry may start from (the status the record had before it).
FROM = {
    "replayed": {"failed", "expired"},
    "compensating": {"expired"},
    "not_compensated": {"expired", "processing"},
    "window_closed": LIVE,
}
ATTEMPT_FROM = LIVE  # an attempt claims a live record (processing) and ends it
ATTEMPT_TO = {"retrying", "pending", "complete", "failed", "expired", "compensated"}
HISTORY_CAP = 20  # the store keeps the last 20 entries (store.HISTORY_CAP)


@dataclass(frozen=True)
class Acked:
    """A request a producer was told it accepted: its record id, platform and identifier."""

    record_id: str
    platform: str
    identifier: str


@dataclass
class Evidence:
    acked: list[Acked]
    records: dict[str, dict[str, Any]]  # record id -> the record (Record.to_dict, history)
    # (platform, identifier) -> the times (epoch s) the sandbox executed its cancellation
    executions: dict[tuple[str, str], list[float]]
    compensation_events: Counter[str]  # compensation identifier -> meter events recorded
    metrics_records: dict[str, int]  # status -> adjustments_records from the metrics
    # Records an operator's forced replay put back (no deadline: Stripe decides). Taken from
    # the history, not the record: a failover can lose the replay's write after its send.
    forced: set[str] = field(default_factory=set)
    late_grace_s: float = 1.0  # a send this close after the deadline is the clock's jitter


@dataclass
class Verdict:
    rule: str
    checked: int
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def check(e: Evidence) -> list[Verdict]:
    return [
        acknowledged_terminal(e),
        nothing_missing(e),
        at_most_once(e),
        exactly_once_if_accepted(e),
        compensations(e),
        legal_transitions(e),
        not_after_deadline(e),
        metrics_agree(e),
    ]


def acknowledged_terminal(e: Evidence) -> Verdict:
    v = Verdict("every acknowledged cancellation is terminal", len(e.acked))
    for a in e.acked:
        status = e.records.get(a.record_id, {}).get("status")
        if status is not None and status not in TERMINAL:
            v.violations.append(f"{a.record_id} ({a.platform}/{a.identifier}): {status}")
    return v


def nothing_missing(e: Evidence) -> Verdict:
    v = Verdict("nothing acknowledged is missing", len(e.acked))
    v.violations += [
        f"{a.record_id} ({a.platform}/{a.identifier})"
        for a in e.acked
        if a.record_id not in e.records
    ]
    return v


def at_most_once(e: Evidence) -> Verdict:
    v = Verdict("each (platform, identifier) executed at most once", len(e.executions))
    v.violations += [
        f"{p}/{i}: {len(times)} times" for (p, i), times in e.executions.items() if len(times) > 1
    ]
    return v


def _cancellation(record: Mapping[str, Any]) -> tuple[str, str]:
    return (record.get("platform") or "", record["identifier"])


def exactly_once_if_accepted(e: Evidence) -> Verdict:
    """A record that says Stripe accepted its cancellation was executed exactly once; one
    that ended without (failed, expired) was never executed, unless it says its outcome is
    unknown (an attempt got no answer, or its worker died mid-call); a compensated one never
    was (its usage would be corrected twice)."""
    v = Verdict("accepted ones executed exactly once, the others never", len(e.records))
    for rid, record in e.records.items():
        times = e.executions.get(_cancellation(record), [])
        status = record["status"]
        if status in ACCEPTED and len(times) != 1:
            v.violations.append(f"{rid} is {status} but was executed {len(times)} times")
        elif status == "compensated" and times:
            v.violations.append(f"{rid} is compensated but Stripe executed its cancellation")
        elif status in {"failed", "expired"} and times and record.get("key_outcome") != "unknown":
            v.violations.append(f"{rid} is {status} but Stripe executed its cancellation")
    return v


def compensations(e: Evidence) -> Verdict:
    """A compensated record's negative event was recorded once; none was recorded for a
    record that is not compensated (or was recorded twice)."""
    by_identifier = {
        r["compensation_identifier"]: rid
        for rid, r in e.records.items()
        if r.get("compensation_identifier")
    }
    v = Verdict(
        "each compensation recorded once, only for what was not cancelled", len(by_identifier)
    )
    for identifier, count in e.compensation_events.items():
        rid = by_identifier.get(identifier)
        if count > 1:
            v.violations.append(f"{rid or identifier}: {count} compensating events")
        if rid is not None and e.records[rid]["status"] != "compensated":
            v.violations.append(f"{rid}: a compensating event, yet {e.records[rid]['status']}")
    for identifier, rid in by_identifier.items():
        if e.records[rid]["status"] == "compensated" and e.compensation_events[identifier] != 1:
            v.violations.append(f"{rid}: compensated without its event recorded")
    return v


def transitions_of(history: Sequence[Mapping[str, Any]]) -> Iterable[tuple[str, str, str]]:
    """(kind, from, to) for each entry; ``from`` is "?" where the history was capped."""
    before = "queued" if len(history) < HISTORY_CAP else "?"
    for entry in history:
        kind = str(entry.get("outcome") or "")
        to = str(entry.get("status") or "")
        yield kind, before, to
        before = to


def legal_transitions(e: Evidence) -> Verdict:
    v = Verdict("every transition in every history is legal", len(e.records))
    for rid, record in e.records.items():
        history = record.get("history") or []
        last = "queued"
        for kind, before, to in transitions_of(history):
            allowed = FROM.get(kind, ATTEMPT_FROM)
            targets = (
                {"queued"}
                if kind in ("replayed", "compensating")
                else ({"expired"} if kind in ("window_closed", "not_compensated") else ATTEMPT_TO)
            )
            if (before != "?" and before not in allowed) or to not in targets:
                v.violations.append(f"{rid}: {kind} from {before} to {to}")
            last = to
        status = record["status"]
        if history and status != last and not (status == "processing" and last in LIVE):
            v.violations.append(f"{rid}: status {status}, its history ends at {last}")
    return v


def not_after_deadline(e: Evidence) -> Verdict:
    """No cancellation was executed after its record's 24 h window closed (the deadline the
    record was given, when the event's receipt time was known)."""
    v = Verdict("no record sent after its deadline", 0)
    for rid, record in e.records.items():
        deadline_ms = record.get("expires_at_ms")
        if not deadline_ms or record.get("replays") or rid in e.forced:  # forced: no deadline
            continue
        v.checked += 1
        for t in e.executions.get(_cancellation(record), []):
            late = t - int(deadline_ms) / 1000
            if late > e.late_grace_s:
                v.violations.append(f"{rid}: executed {late:.1f} s after its deadline")
    return v


def metrics_agree(e: Evidence) -> Verdict:
    counted = Counter(r["status"] for r in e.records.values())
    v = Verdict("the metrics' record counts agree with the records", len(e.metrics_records))
    if not e.metrics_records:  # a scrape that read nothing proves nothing
        v.violations.append("the metrics scrape read no record counts")
    for status, value in e.metrics_records.items():
        if counted.get(status, 0) != value:
            v.violations.append(
                f"{status}: metrics say {value}, the records {counted.get(status, 0)}"
            )
    return v


def table(verdicts: Sequence[Verdict]) -> str:
    rows = [("rule", "checked", "violations")] + [
        (v.rule, str(v.checked), str(len(v.violations))) for v in verdicts
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
