"""Every Redis key name and derived identifier, in one place.

Identifiers and event names are user data: they are hashed, never pasted into a key. Plain
strings in, strings out: this module imports nothing of ours.
"""

from __future__ import annotations

import hashlib

RECORD = "rec"
DEDUPE = "dedupe"
INDEX = "idx"
HISTORY = "hist"
DEADLINE = "deadline"
LOCK = "lock"


def request_digest(
    api: str, account: str, event_name: str, identifier: str, platform: str = ""
) -> str:
    """A stable digest of what is cancelled, where: the dedupe identity of a request (see
    ``CancelRequest.digest``)."""
    parts: tuple[str, ...] = (api, account, event_name, identifier)
    if platform:  # a single-key deployment's digests stay what they always were
        parts = (*parts, f"platform={platform}")
    # Unit separators keep ("a", "bc") and ("ab", "c") apart.
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def record(prefix: str, record_id: str) -> str:
    return f"{prefix}:{RECORD}:{record_id}"


def dedupe(prefix: str, digest: str) -> str:
    return f"{prefix}:{DEDUPE}:{digest}"


def history(prefix: str, record_id: str) -> str:
    """A capped list of a record's attempts (JSON entries, oldest first)."""
    return f"{prefix}:{HISTORY}:{record_id}"


def deadline(prefix: str) -> str:
    """Live records scored by when their window closes (ms): 24 h after Stripe received the
    event, or (not given) 24 h after the cancellation was enqueued."""
    return f"{prefix}:{DEADLINE}"


def ready(prefix: str, platform: str = "") -> str:
    """One platform's records ready to be sent, scored by the order they go in: their
    deadline (ms), or with ``ADJUSTMENTS_ORDER=fifo`` the time they became ready. Workers
    take the lowest. A record without a platform (a single-key deployment) is in the
    unnamed set; the scripts name a record's set from its ``platform`` field the same way."""
    return f"{prefix}:ready:{platform}" if platform else f"{prefix}:ready"


def claim(prefix: str, token: str) -> str:
    """Which record the claim with this lease token took (for a claim sent again after its
    answer was lost); expires with the lease."""
    return f"{prefix}:claim:{token}"


def rate_limiter(prefix: str, platform: str = "") -> str:
    """A Stripe account's shared rate limiter state: the single key's, or a platform's."""
    return f"{prefix}:ratelimit:{platform}" if platform else f"{prefix}:ratelimit"


def dead_letter(prefix: str) -> str:
    """Queue items no worker could parse, newest first (``dead_letter_total`` counts all)."""
    return f"{prefix}:deadletter"


def dead_letter_total(dead_letter_key: str) -> str:
    """How many items were ever dead-lettered into ``dead_letter_key``."""
    return f"{dead_letter_key}:total"


def memo(prefix: str, name: str) -> str:
    """What the HTTP API remembers under ``name`` (an Idempotency-Key's answer, a console
    session), hashed: a name is client data."""
    return f"{prefix}:memo:" + hashlib.sha256(name.encode()).hexdigest()


def worker(prefix: str, node: str) -> str:
    """One worker's heartbeat hash (node, pid, version, ...), expiring after 3 intervals."""
    return f"{prefix}:worker:{node}"


def workers(prefix: str) -> str:
    """Node names of workers that have beaten, scored by their last beat (ms)."""
    return f"{prefix}:workers"


def last_reconcile(prefix: str) -> str:
    """When the last reconciliation run finished, and its counts."""
    return f"{prefix}:reconcile:last"


def health_probe(prefix: str) -> str:
    """A key /healthz writes (expiring in a minute) to learn whether Redis accepts writes."""
    return f"{prefix}:health:probe"


def key_modes(prefix: str) -> str:
    """Hash: each platform's key mode (test or live), written by the first worker to start."""
    return f"{prefix}:key-modes"


def lock(prefix: str, name: str) -> str:
    return f"{prefix}:{LOCK}:{name}"


def index_prefix(prefix: str) -> str:
    """Scripts append a status to this to name that status's index."""
    return f"{prefix}:{INDEX}:"


def index(prefix: str, status: str) -> str:
    """One status's index (``status``: a Status, or its name)."""
    return index_prefix(prefix) + str(status)


def idempotency_key(digest: str, generation: int) -> str:
    """The Idempotency-Key for one generation of a request (<= 255 chars, deterministic)."""
    return f"adjustments-{digest[:48]}-g{generation}"
