"""Several Stripe accounts of one's own (issue 21): the platforms' configuration."""

from __future__ import annotations

import pytest

from adjustments.config import Platform, Settings
from adjustments.errors import ConfigError

ENV = {
    "ADJUSTMENTS_PLATFORMS": "us,eu-2",
    "STRIPE_API_KEY_US": "sk_test_us_0000000000",
    "STRIPE_API_KEY_EU_2": "sk_test_eu_0000000000",
    "STRIPE_API_BASE_EU_2": "http://127.0.0.1:9",
    "ADJUSTMENTS_RATE_LIMIT_EU_2": "5",
}


def test_platforms_come_from_their_own_variables() -> None:
    """Names from ADJUSTMENTS_PLATFORMS; each key, base and limit from its suffixed variable;
    the first is the default; no key in the settings' repr."""
    settings = Settings.from_env(ENV)
    assert settings.platform_names == ("us", "eu-2")
    assert settings.platform(None).name == "us"
    eu = settings.platform("eu-2")
    assert (eu.api_base, eu.rate_limit_per_s) == ("http://127.0.0.1:9", 5.0)
    assert "sk_test" not in repr(settings)
    with pytest.raises(ConfigError, match="unknown platform 'asia'"):
        settings.platform("asia")


@pytest.mark.parametrize(
    ("names", "says"),
    [("US", "not a platform name"), ("us,us", "twice"), (" , ", "names no platform"),
     ("us_1", "not a platform name")],
)  # fmt: skip
def test_bad_names_are_refused(names: str, says: str) -> None:
    """Names are lower-case letters, digits and -, each once."""
    with pytest.raises(ConfigError, match=says):
        Settings.from_env({**ENV, "ADJUSTMENTS_PLATFORMS": names})


def test_a_missing_or_unusable_key_names_the_platform_never_the_key() -> None:
    """The worker's start check names the platform and its variable."""
    env = {k: v for k, v in ENV.items() if k != "STRIPE_API_KEY_EU_2"}
    problem = Settings.from_env(env).worker_key_problem()
    assert problem == "platform eu-2: STRIPE_API_KEY_EU_2 is not set: the worker cannot call Stripe"
    published = Settings.from_env({**ENV, "STRIPE_API_KEY_US": "pk_live_abc"})
    assert "platform us: STRIPE_API_KEY_US is a publishable key" in str(
        published.worker_key_problem()
    )
    assert Settings.from_env(ENV).worker_key_problem() is None


def test_without_platforms_the_single_key_works_as_before() -> None:
    """No ADJUSTMENTS_PLATFORMS: STRIPE_API_KEY alone, an unnamed platform."""
    settings = Settings.from_env({"STRIPE_API_KEY": "sk_test_one_000000000"})
    assert settings.platforms == () and settings.platform(None) == Platform(
        "", "sk_test_one_000000000", None, None
    )
    assert settings.worker_key_problem() is None


def test_the_platform_is_part_of_the_identity_and_a_single_key_digest_is_unchanged() -> None:
    """The same identifier on two platforms is two requests (and two idempotency keys); with
    no platform the digest is what it always was, so existing records keep deduplicating."""
    import hashlib

    from adjustments.models import CancelRequest

    plain = CancelRequest("v2", "ev", "i1")
    before = hashlib.sha256("\x1f".join(("v2", "", "ev", "i1")).encode()).hexdigest()
    assert plain.digest == before
    us = CancelRequest("v2", "ev", "i1", platform="us")
    eu = CancelRequest("v2", "ev", "i1", platform="eu")
    assert len({r.digest for r in (plain, us, eu)}) == 3


def test_a_key_of_the_other_mode_for_the_same_platform_is_refused() -> None:
    """The first worker keeps each platform's key mode in Redis; a later worker with a live
    key where the deployment uses a test key (or the reverse) is refused, naming the platform
    and never the key; the same mode starts."""
    import fakeredis

    from adjustments.cli.run import check_key_modes

    client = fakeredis.FakeRedis(decode_responses=True)
    check_key_modes(Settings.from_env(ENV), client)
    check_key_modes(Settings.from_env(ENV), client)  # the same modes: fine
    live = {**ENV, "STRIPE_API_KEY_EU_2": "sk_live_eu_0000000000"}
    with pytest.raises(ConfigError, match="platform eu-2: this worker has a live-mode key") as err:
        check_key_modes(Settings.from_env(live), client)
    assert "sk_live" not in str(err.value)
    single = Settings.from_env({"STRIPE_API_KEY": "sk_test_one_000000000"})
    check_key_modes(single, client)
    with pytest.raises(ConfigError, match="STRIPE_API_KEY: this worker has a live-mode key"):
        check_key_modes(Settings.from_env({"STRIPE_API_KEY": "sk_live_one_00000000"}), client)
