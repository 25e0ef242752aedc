"""Writes that wait, in their own round trip, until they are as durable as configured
(``ADJUSTMENTS_DURABILITY``): WAITAOF for ``fsync``, WAIT for ``replicas:N``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis

from .config import Durability
from .errors import AcceptanceUnknown, ClaimNotDurable


def _exec_replies(replies: list[Any]) -> list[Any]:
    """The replies of a MULTI/EXEC sent as plain commands (MULTI, the queued commands, EXEC):
    the EXEC's list; a command refused while queued (out of memory, read-only) is raised, as
    nothing of the transaction ran. A NoScriptError inside EXEC is returned (nothing ran that
    needed the script: it is loaded and the whole transaction sent again)."""
    executed = replies[-1]
    if isinstance(executed, Exception):
        refused = [r for r in replies[1:-1] if isinstance(r, Exception)]
        raise refused[0] if refused else executed
    results = cast(list[Any], executed)
    failed = [r for r in results if isinstance(r, Exception)]
    if failed and not all(isinstance(r, redis.exceptions.NoScriptError) for r in failed):
        raise failed[0]
    return results


class Durable:
    """Runs scripts on ``client`` and waits for ``durability`` within ``timeout_ms``."""

    def __init__(self, client: redis.Redis, durability: Durability, timeout_ms: int) -> None:
        self.client = client
        self.durability = durability
        self.timeout_ms = timeout_ms

    def scripts(
        self,
        script: Any,
        calls: Sequence[tuple[Sequence[str], Sequence[str]]],
        *,
        raise_on_error: bool = True,
        atomic: bool = False,
    ) -> list[Any]:
        """Run ``script`` (a registered Script) for each ``(keys, args)`` in one round trip (and its
        durability wait). The script goes as a plain EVALSHA: redis-py's pipelined Script
        would first ask SCRIPT EXISTS, a second round trip on every cancel(). A server that
        does not know the script yet (NOSCRIPT: nothing ran) gets it loaded, once. With
        ``raise_on_error=False`` a command's own error is its reply (the others stand).
        ``atomic``: inside MULTI/EXEC (the durability wait after EXEC, as WAIT and WAITAOF do
        not block inside a transaction); a command refused while queued discards them all."""
        for attempt in range(2):
            pipe: Any = self.client.pipeline(transaction=False)
            if atomic:
                pipe.execute_command("MULTI")
            for script_keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(script_keys), *script_keys, *args)
            if atomic:
                pipe.execute_command("EXEC")
            try:
                replies = self.execute(pipe, raise_on_error=not atomic and raise_on_error)
                if atomic:
                    replies = _exec_replies(replies)
            except redis.exceptions.NoScriptError:
                replies = [redis.exceptions.NoScriptError()]
            if attempt or not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                return replies
            script.sha = self.client.script_load(script.script)
        raise AssertionError("unreachable")  # pragma: no cover

    def execute(self, pipe: Any, *, raise_on_error: bool = True) -> list[Any]:
        """Run ``pipe`` and, in the same round trip, wait until its writes are as durable as
        configured; AcceptanceUnknown if Redis did not confirm that in time."""
        level = self.durability.level
        timeout = self.timeout_ms
        if level == "fsync":
            pipe.execute_command("WAITAOF", 1, 0, timeout)
        elif level == "replicas":
            pipe.execute_command("WAIT", self.durability.replicas, timeout)
        replies = cast(list[Any], pipe.execute(raise_on_error=raise_on_error))
        if level == "memory":
            return replies
        confirmed = replies.pop()
        if isinstance(confirmed, Exception):
            raise confirmed
        if level == "fsync" and int(confirmed[0]) < 1:
            raise AcceptanceUnknown(
                f"Redis wrote the request but did not confirm it on disk within {timeout} ms "
                "(WAITAOF): call cancel() again, it returns the same record"
            )
        if level == "replicas" and int(confirmed) < self.durability.replicas:
            raise AcceptanceUnknown(
                f"Redis wrote the request but only {int(confirmed)} of "
                f"{self.durability.replicas} replica(s) confirmed it within {timeout} ms: "
                "call cancel() again, it returns the same record"
            )
        return replies

    def claim(self, script: Any, *, keys: list[str], args: list[Any]) -> list[Any]:
        """Run a claim script, and (with ADJUSTMENTS_DURABILITY=replicas:N) wait in the same
        round trip until the claim is on the replicas: a worker calls Stripe only once a
        failover can no longer lose the fact that it did (the record stays ``processing``
        with its attempt counted, so an outcome lost with the old master is known to be in
        doubt rather than forgotten). Replication keeps order, so everything written before
        the claim (the request, a replay, a compensation begun) is then on the replicas too.
        ClaimNotDurable when they do not confirm it in time, as when fewer than N are
        connected (right after a failover, until the old master returns as a replica): as
        producers cannot accept requests then, workers do not send; with one replica and
        ``replicas:1`` that trades availability for never losing an attempt (run two
        replicas to have both). (With ``fsync`` the claim is not waited for: under ``appendfsync
        always`` it is on disk before Redis answers; under ``everysec`` a power cut within
        that second can lose it, as docs/reliability.md's durability section says.)"""
        if self.durability.level != "replicas":
            return cast(list[Any], script(keys=keys, args=args))
        wanted = self.durability.replicas
        for attempt in range(2):
            pipe: Any = self.client.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", wanted, self.timeout_ms)
            try:
                reply, confirmed = pipe.execute()
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                script.sha = self.client.script_load(script.script)
                continue
            if int(confirmed) >= wanted or str(reply[0]) != "claimed":
                return cast(list[Any], reply)
            raise ClaimNotDurable(
                f"a claim was not confirmed by {wanted} replica(s) in time "
                "(ADJUSTMENTS_DURABILITY): nothing is sent; the record is taken again when its "
                "lease ends"
            )
        raise AssertionError("unreachable")  # pragma: no cover
