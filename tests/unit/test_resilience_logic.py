"""Pure pieces of fault handling: REDIS_URL targets, server checks, queue envelopes, the key
rule for replays, durability levels, and what a Redis error means for cancel()."""

from __future__ import annotations

import json
import ssl
from datetime import UTC, datetime

import pytest
import redis

from adjustments.config import Durability, Settings
from adjustments.connection import RedisTarget
from adjustments.errors import AcceptanceUnknown, ConfigError, NotAccepted
from adjustments.outcomes import Accepted, Rejected
from adjustments.redis_errors import store_error
from adjustments.retry import KEY_REJECTED, KEY_UNKNOWN, Policy, decide, key_outcome_after
from adjustments.server_checks import ServerFacts, assess
from adjustments.transport import envelope_problem

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class TestRedisTarget:
    def test_plain_url_with_acl_user(self) -> None:
        """User, password and db are read; the broker URL keeps them, describe() does not."""
        t = RedisTarget.parse("redis://app:s3cret@h:6390/2")
        assert (t.hosts, t.db, t.username, t.password, t.ssl) == (
            (("h", 6390),),
            2,
            "app",
            "s3cret",
            {},
        )
        assert t.broker_url() == "redis://app:s3cret@h:6390/2"
        assert "s3cret" not in t.describe() and "s3cret" not in repr(t)

    def test_rediss_verifies_by_default(self) -> None:
        """rediss:// with no parameters verifies the certificate, for both sides."""
        t = RedisTarget.parse("rediss://h:6380/0")
        assert t.ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        assert t.celery_options()["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}

    @pytest.mark.parametrize("spelling", ["none", "CERT_NONE", "cert_none"])
    def test_cert_reqs_in_either_spelling(self, spelling: str) -> None:
        """ssl_cert_reqs is read in redis-py's and kombu's spellings."""
        t = RedisTarget.parse(f"rediss://h/0?ssl_cert_reqs={spelling}&ssl_ca_certs=/ca.pem")
        assert t.ssl == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/ca.pem"}

    def test_sentinel_urls(self) -> None:
        """Several sentinels joined by ';', the db on the last, the master's name required."""
        t = RedisTarget.parse("sentinel://a:26379;sentinel://b:26380/3", sentinel_master="m")
        assert t.hosts == (("a", 26379), ("b", 26380)) and t.db == 3
        opts = t.celery_options()
        assert opts["broker_transport"].endswith("SentinelTransport")
        assert opts["transport_options"]["master_name"] == "m"
        with pytest.raises(ConfigError, match="ADJUSTMENTS_SENTINEL_MASTER"):
            RedisTarget.parse("sentinel://a:26379/0")

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("http://h/0", "must start with"),
            ("redis://h/x", "database must be a number"),
            ("redis://h/0?ssl_ca_certs=/ca.pem", "need a rediss"),
            ("rediss://h/0?foo=1", "unknown parameter"),
            ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
            ("redis://a;redis://b", "only sentinel"),
        ],
    )
    def test_bad_urls_are_refused_without_secrets(self, url: str, message: str) -> None:
        """A bad REDIS_URL is refused with a message that carries no password."""
        with pytest.raises(ConfigError, match=message):
            RedisTarget.parse(url)


def facts(**kw: object) -> ServerFacts:
    base: dict[str, object] = {
        "version": (8, 0, 0),
        "maxmemory_policy": "noeviction",
        "aof_enabled": True,
        "appendfsync": "always",
        "connected_replicas": 0,
    }
    return ServerFacts(**{**base, **kw})  # type: ignore[arg-type]


class TestServerChecks:
    def test_a_safe_server_passes(self) -> None:
        """A persistent, non-evicting server raises no fatal problem and no warning."""
        assert assess(facts(), durability=Durability("fsync"), allow_eviction=False) == ([], [])

    def test_eviction_is_fatal_unless_allowed(self) -> None:
        """An evicting policy is fatal unless ADJUSTMENTS_ALLOW_EVICTION; volatile policies warn."""
        fatal, _ = assess(
            facts(maxmemory_policy="allkeys-lru"),
            durability=Durability("memory"),
            allow_eviction=False,
        )
        assert fatal and "allkeys-lru" in fatal[0] and "ADJUSTMENTS_ALLOW_EVICTION" in fatal[0]
        fatal, warnings = assess(
            facts(maxmemory_policy="volatile-lru"),
            durability=Durability("memory"),
            allow_eviction=True,
        )
        assert not fatal and "volatile-lru" in warnings[0]

    def test_fsync_needs_waitaof_and_an_aof(self) -> None:
        """Redis 6.2 cannot WAITAOF; no append-only file cannot fsync it: both refused."""
        old, _ = assess(
            facts(version=(6, 2, 14)), durability=Durability("fsync"), allow_eviction=False
        )
        assert "6.2.14" in old[0] and "memory" in old[0]
        no_aof, warnings = assess(
            facts(aof_enabled=False), durability=Durability("fsync"), allow_eviction=False
        )
        assert "appendonly yes" in no_aof[0] and "append-only" in warnings[0]
        assert (
            assess(facts(aof_enabled=False), durability=Durability("memory"), allow_eviction=False)[
                0
            ]
            == []
        )

    def test_a_lazy_fsync_is_named_or_refused(self) -> None:
        """appendfsync everysec: memory can lose a second on a crash (a warning); fsync is
        refused, since WAITAOF can confirm before the fsync there (redis/redis#13793)."""
        lazy = facts(appendfsync="everysec")
        _, memory = assess(lazy, durability=Durability("memory"), allow_eviction=False)
        assert "about the last second" in memory[0]
        fatal, _ = assess(lazy, durability=Durability("fsync"), allow_eviction=False)
        assert "needs appendfsync always" in fatal[0] and "13793" in fatal[0]
        unknown, warnings = assess(
            facts(appendfsync=None), durability=Durability("fsync"), allow_eviction=False
        )
        assert not unknown and "cannot be checked" in warnings[0]

    def test_missing_replicas_are_named(self) -> None:
        """Asking for more replicas than are connected is a warning naming both."""
        _, warnings = assess(facts(), durability=Durability("replicas", 2), allow_eviction=False)
        assert "replicas:2" in warnings[0] and "0 connected" in warnings[0]


class TestEnvelope:
    @pytest.mark.parametrize(
        ("item", "problem"),
        [
            ("not json", "not JSON"),
            ("[1, 2]", "a JSON list, not an object"),
            ('"text"', "a JSON str, not an object"),
            ("{}", "no properties object"),
            ('{"properties": {"delivery_info": []}}', "delivery_info is not an object"),
            (
                '{"properties": {"body_encoding": "base64"}, "body": "%%%"}',
                "body is not valid base64",
            ),
            (
                '{"properties": {"body_encoding": "base64"}, "body": 5}',
                "base64 body is not a string",
            ),
        ],
    )
    def test_what_kombu_cannot_deliver(self, item: str, problem: str) -> None:
        """Each queue item kombu cannot deliver is named."""
        assert envelope_problem(item) == problem

    def test_a_real_message_passes(self) -> None:
        """A well-formed message is not a dead letter."""
        item = json.dumps(
            {
                "body": "e30=",
                "headers": {},
                "properties": {"body_encoding": "base64", "delivery_info": {}},
            }
        )
        assert envelope_problem(item) is None


def rejected(status: int | None) -> Rejected:
    return Rejected(status, "api_error" if status else "api_connection_error", None, "x")


class TestKeyRule:
    @pytest.mark.parametrize(
        ("previous", "outcome", "after"),
        [
            ("", rejected(None), KEY_UNKNOWN),  # no answer: it may have executed
            (KEY_UNKNOWN, rejected(429), KEY_UNKNOWN),  # rate limiters answer before the key
            (KEY_UNKNOWN, rejected(409), KEY_UNKNOWN),  # the key is busy: still unknown
            ("", rejected(429), ""),
            (KEY_UNKNOWN, rejected(400), KEY_REJECTED),  # a stored error: nothing executed
            (KEY_UNKNOWN, rejected(500), KEY_REJECTED),
            (KEY_UNKNOWN, Accepted("pending", 200, None), ""),
        ],
    )
    def test_what_the_key_did(
        self, previous: str, outcome: Accepted | Rejected, after: str
    ) -> None:
        """What an idempotency key has done follows from each outcome."""
        assert key_outcome_after(previous, outcome) == after

    def test_running_out_after_an_unknown_outcome_says_so(self) -> None:
        """failed after a timeout then 429s is not a dead letter: last_error says it may have
        been executed."""
        policy = Policy(max_attempts=3, backoff_base_s=1, backoff_cap_s=10)
        d = decide(
            rejected(429),
            attempt=3,
            now=NOW,
            expires_at=None,
            policy=policy,
            key_outcome=KEY_UNKNOWN,
        )
        assert d.reason == "exhausted" and d.error is not None and d.error.outcome_unknown
        assert "may have been executed" in (d.error.message or "")
        plain = decide(rejected(429), attempt=3, now=NOW, expires_at=None, policy=policy)
        assert plain.error is not None and not plain.error.outcome_unknown


class TestDurabilityAndKeys:
    @pytest.mark.parametrize(
        ("raw", "level", "replicas"),
        [("memory", "memory", 0), ("FSYNC", "fsync", 0), ("replicas:2", "replicas", 2)],
    )
    def test_levels(self, raw: str, level: str, replicas: int) -> None:
        """Durability levels parse from their text."""
        d = Durability.parse(raw)
        assert (d.level, d.replicas) == (level, replicas)

    def test_default_is_fsync(self) -> None:
        """The default durability is fsync."""
        assert str(Settings.from_env({}).durability) == "fsync"

    @pytest.mark.parametrize(
        ("env", "problem"),
        [
            ({}, "not set"),
            ({"STRIPE_API_KEY": "pk_live_1"}, "publishable"),
            ({"STRIPE_API_KEY": "rk_live_1"}, "restricted"),
            ({"STRIPE_API_KEY": "whsec_1"}, "secret"),
        ],
    )
    def test_worker_key_problems(self, env: dict[str, str], problem: str) -> None:
        """Keys a worker cannot use are named without quoting them."""
        found = Settings.from_env(env).worker_key_problem()
        assert found is not None and problem in found
        assert "live_1" not in found

    def test_usable_keys(self) -> None:
        """Secret and restricted keys are usable where their API allows."""
        assert Settings.from_env({"STRIPE_API_KEY": "sk_test_1"}).worker_key_problem() is None
        v1 = {"STRIPE_API_KEY": "rk_test_1", "ADJUSTMENTS_STRIPE_API": "v1"}
        assert Settings.from_env(v1).worker_key_problem() is None


class TestStoreErrors:
    @pytest.mark.parametrize(
        ("exc", "kind"),
        [
            (
                redis.ConnectionError("Error 111 connecting to h:6379. Connection refused."),
                NotAccepted,
            ),
            (redis.TimeoutError("Timeout connecting to server"), NotAccepted),
            (redis.exceptions.OutOfMemoryError("OOM command not allowed"), NotAccepted),
            (redis.exceptions.ReadOnlyError("READONLY You can't write"), NotAccepted),
            (redis.TimeoutError("Timeout reading from socket"), AcceptanceUnknown),
            (redis.ConnectionError("Connection closed by server."), AcceptanceUnknown),
        ],
    )
    def test_whether_it_was_written(self, exc: redis.RedisError, kind: type[Exception]) -> None:
        """A Redis error maps to NotAccepted or AcceptanceUnknown by whether the write may have
        happened."""
        assert isinstance(store_error(exc), kind)
