"""Settings from the environment."""

from __future__ import annotations

import pytest

from adjustments.config import KNOBS, Settings, reference
from adjustments.errors import ConfigError


class TestSettings:
    def test_defaults(self) -> None:
        """An empty environment gives the documented defaults (embedded Redis, v2)."""
        s = Settings.from_env({})
        assert s.redis_url is None and s.default_api == "v2"
        assert (s.max_attempts, s.backoff_base_s, s.backoff_cap_s) == (10, 2.0, 300.0)
        assert s.retention_s == 30 * 24 * 3600 and s.worker_concurrency == 64
        assert s.visibility_timeout_s > s.backoff_cap_s + s.claim_lease_s

    def test_overrides(self) -> None:
        """Environment variables override the defaults, normalised."""
        env = {
            "REDIS_URL": "redis://h:1/2",
            "STRIPE_API_KEY": "sk_test_x",
            "ADJUSTMENTS_STRIPE_API": "V1",
            "ADJUSTMENTS_MAX_ATTEMPTS": "3",
            "ADJUSTMENTS_BACKOFF_BASE_S": "0.5",
            "ADJUSTMENTS_STRIPE_TIMEOUT_S": "2",
        }
        s = Settings.from_env(env)
        assert (s.redis_url, s.default_api, s.max_attempts, s.backoff_base_s) == (
            "redis://h:1/2",
            "v1",
            3,
            0.5,
        )
        assert s.lease_s == 60.0

    @pytest.mark.parametrize(
        ("env", "message"),
        [
            ({"ADJUSTMENTS_STRIPE_API": "v3"}, "v1 or v2"),
            ({"ADJUSTMENTS_MAX_ATTEMPTS": "zero"}, "whole number"),
            ({"ADJUSTMENTS_MAX_ATTEMPTS": "0"}, ">= 1"),
            ({"ADJUSTMENTS_BACKOFF_CAP_S": "-1"}, ">= 0"),
            ({"ADJUSTMENTS_DURABILITY": "disk"}, "memory, fsync or replicas"),
            ({"ADJUSTMENTS_DURABILITY": "replicas:0"}, "replicas:N"),
            ({"ADJUSTMENTS_LEASE_S": "5", "ADJUSTMENTS_STRIPE_TIMEOUT_S": "10"}, "LEASE"),
        ],
    )
    def test_invalid_values_are_refused(self, env: dict[str, str], message: str) -> None:
        """Each invalid value is a ConfigError naming its variable."""
        with pytest.raises(ConfigError, match=message):
            Settings.from_env(env)

    def test_key_never_in_repr(self) -> None:
        """The API key is not printed by repr()."""
        s = Settings.from_env({"STRIPE_API_KEY": "sk_test_supersecret"})
        assert "supersecret" not in repr(s)


class TestReference:
    def test_every_setting_has_its_line_in_the_configuration_reference(self) -> None:
        """Each environment-backed field has a meaning, and the generated table has one row per
        variable with a default that matches the field's own."""
        assert [name for name, knob in KNOBS.items() if not knob.doc] == []
        rows = {env: default for env, default, _ in reference()}
        assert set(rows) >= {knob.env for knob in KNOBS.values()}
        assert rows["ADJUSTMENTS_MAX_ATTEMPTS"] == f"`{Settings().max_attempts}`"
        assert rows["ADJUSTMENTS_DURABILITY"] == "`fsync`" and rows["REDIS_URL"].startswith("—")
