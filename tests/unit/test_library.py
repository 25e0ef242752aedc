"""The package as a library: its public face, configuration in code, and what it refuses."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import adjustments
from adjustments import ConfigError, InvalidInput, Producer, Settings
from adjustments.config import KNOBS, SETTINGS_MODULE_ENV, load_settings
from adjustments.http.memo import Memo
from adjustments.models import CancelRequest
from adjustments.operations import Operations
from adjustments.readouts import Readouts

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class TestPublicApi:
    def test_every_exported_name_exists(self) -> None:
        """`from adjustments import X` works for every name in __all__, and nothing private
        is exported."""
        for name in adjustments.__all__:
            assert hasattr(adjustments, name), name
        assert not [n for n in adjustments.__all__ if n.startswith("_") and n != "__version__"]
        assert {"Producer", "Record", "Status", "Settings", "InvalidInput"} <= set(
            adjustments.__all__
        )

    def test_version_comes_from_package_metadata(self) -> None:
        """__version__ is the installed distribution's version."""
        assert adjustments.__version__ == importlib.metadata.version("adjustments")

    def test_errors_a_caller_handles_are_ours(self) -> None:
        """Input errors are ValueErrors; store errors and not-found share our base class."""
        assert issubclass(adjustments.InvalidInput, ValueError)
        for error in (
            adjustments.RecordNotFound,
            adjustments.StoreError,
            adjustments.StoreUnavailable,
            adjustments.NotAccepted,
            adjustments.AcceptanceUnknown,
        ):
            assert issubclass(error, adjustments.AdjustmentsError)
        assert issubclass(adjustments.StoreUnavailable, adjustments.StoreError)

    @pytest.mark.parametrize(
        ("owner", "method"),
        [
            (owner, name)
            for owner in (Producer, Readouts, Operations, Memo)
            for name, value in vars(owner).items()
            if (not name.startswith("_") or name == "__init__")
            and (inspect.isfunction(value) or isinstance(value, classmethod))
        ],
        ids=lambda v: v if isinstance(v, str) else v.__name__,
    )
    def test_public_methods_name_every_parameter(self, owner: type, method: str) -> None:
        """Each public method of the producer and of what it hands out (read-outs, operator
        actions, the HTTP memo) has a docstring that mentions each parameter by name."""
        function = getattr(owner, method)
        doc = inspect.getdoc(function) or ""
        assert doc, f"{owner.__name__}.{method} has no docstring"
        params = [p for p in inspect.signature(function).parameters if p not in ("self", "cls")]
        missing = [p for p in params if not re.search(rf"\b{p}\b", doc)]
        assert missing == [], f"{owner.__name__}.{method} does not document {missing}"

    def test_importing_changes_no_logging_or_signal(self) -> None:
        """A host process that imports the package keeps its logging and Celery signals."""
        code = (
            "import logging; from celery import signals; import adjustments, "
            "adjustments.tasks, adjustments.celery_app\n"
            "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
            "for s in (signals.setup_logging, signals.task_prerun, signals.task_postrun):\n"
            "    assert not s.receivers, s\n"
        )
        import subprocess

        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stderr


class TestSettingsInCode:
    @pytest.mark.parametrize(
        ("given", "message"),
        [
            ({"default_api": "v3"}, "v1 or v2"),
            ({"max_attempts": 0}, r"ADJUSTMENTS_MAX_ATTEMPTS \(max_attempts\) must be >= 1"),
            ({"max_attempts": 2.5}, "whole number"),
            ({"max_attempts": True}, "whole number"),
            ({"backoff_cap_s": float("nan")}, "a number"),
            ({"backoff_cap_s": "10"}, "a number"),
            ({"rate_limit_per_s": -1}, ">= 0"),
            ({"queue": ""}, "non-empty"),
            ({"queue": None}, "non-empty"),
            ({"redis_url": " redis://h"}, "non-empty string"),
            ({"durability": "disk"}, "memory, fsync or replicas"),
            ({"allow_eviction": "yes"}, "True or False"),
            ({"lease_s": 5, "stripe_timeout_s": 10}, "lease_s"),
        ],
    )
    def test_invalid_fields_are_refused(self, given: dict[str, object], message: str) -> None:
        """Settings(...) is checked like the environment, naming field and variable."""
        with pytest.raises(ConfigError, match=message):
            Settings(**given)  # type: ignore[arg-type]

    def test_valid_fields_are_normalised(self) -> None:
        """Settings normalises valid values (durability, paths, floats, the derived lease)."""
        s = Settings(durability="replicas:2", data_dir="/tmp/x", backoff_base_s=1)  # type: ignore[arg-type]
        assert str(s.durability) == "replicas:2" and s.data_dir == Path("/tmp/x")
        assert isinstance(s.backoff_base_s, float) and s.claim_lease_s == 60.0
        assert Settings(stripe_timeout_s=30).claim_lease_s == 90.0

    def test_replace_validates_again(self) -> None:
        """dataclasses.replace validates the new settings."""
        with pytest.raises(ConfigError, match="max_attempts"):
            dataclasses.replace(Settings(), max_attempts=0)

    def test_every_field_has_an_environment_variable(self) -> None:
        """Every Settings field has its environment variable in KNOBS (platforms: a family of
        variables, ADJUSTMENTS_PLATFORMS and each platform's own, read by Settings.from_env)."""
        fields = {f.name for f in dataclasses.fields(Settings)}
        assert set(KNOBS) == fields - {"platforms"}

    def test_settings_from_a_module(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """ADJUSTMENTS_SETTINGS_MODULE names a module whose `settings` is used as is."""
        (tmp_path / "my_adj_settings.py").write_text(
            "from adjustments import Settings\n"
            "settings = Settings(redis_url='redis://cache:6379/3', max_attempts=4)\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        env = {SETTINGS_MODULE_ENV: "my_adj_settings", "ADJUSTMENTS_MAX_ATTEMPTS": "9"}
        s = load_settings(env)
        assert (s.redis_url, s.max_attempts) == ("redis://cache:6379/3", 4)

    @pytest.mark.parametrize(
        ("source", "message"),
        [(None, "cannot be imported"), ("settings = {'max_attempts': 3}\n", "must define")],
    )
    def test_a_bad_settings_module_is_a_config_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str | None, message: str
    ) -> None:
        """A settings module that is missing or has no Settings is a ConfigError."""
        name = f"bad_adj_settings_{'missing' if source is None else 'dict'}"
        if source is not None:
            (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        with pytest.raises(ConfigError, match=message):
            load_settings({SETTINGS_MODULE_ENV: name})


class TestProducerConfiguration:
    def test_explicit_producer_reads_no_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Unrelated (even invalid) variables do not reach Producer(url, settings=...)."""
        monkeypatch.setenv("STRIPE_API_KEY", "pk_test_publishable")
        monkeypatch.setenv("ADJUSTMENTS_MAX_ATTEMPTS", "many")
        monkeypatch.setenv("ADJUSTMENTS_QUEUE", "someone_elses")
        with Producer("redis://127.0.0.1:1/0") as producer:
            assert producer.settings == Settings()
        with Producer("redis://127.0.0.1:1/0", settings=Settings(queue="q2")) as producer:
            assert producer.settings.queue == "q2"

    def test_from_env_without_redis_url_is_a_clear_error_and_writes_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Producer.from_env() without REDIS_URL says so and creates no file."""
        monkeypatch.delenv("REDIS_URL", raising=False)
        monkeypatch.delenv(SETTINGS_MODULE_ENV, raising=False)
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ConfigError, match="REDIS_URL is not set"):
            Producer.from_env()
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("url", ["", "http://x", "redis://h:port/0", "redis://h/x"])
    def test_a_malformed_url_is_a_config_error(self, url: str) -> None:
        """A malformed Redis URL is a ConfigError."""
        with pytest.raises(ConfigError):
            Producer(url)


class TestRefusedAtEnqueue:
    def test_received_more_than_24_hours_ago(self) -> None:
        """Stripe would refuse it: the request is refused before anything is written."""
        with pytest.raises(InvalidInput, match="more than 24 h ago"):
            CancelRequest.build(
                "ev", "id", api="v1", event_received_at=NOW - timedelta(hours=25), now=NOW
            )
        inside = NOW - timedelta(hours=23, minutes=59)
        built = CancelRequest.build("ev", "id", api="v1", event_received_at=inside, now=NOW)
        assert built.event_received_at == inside

    @pytest.mark.parametrize(
        ("api", "account", "ok"),
        [
            ("v1", "acct_1", True),
            ("v1", "acct_1/acct_2", False),
            ("v2", "acct_1", True),
            ("v2", "acct_1/acct_2", True),
            ("v2", "acct_1/", False),
            ("v2", "acct_1/cus_2", False),
            ("v2", "acct_1\n", False),
        ],
    )
    def test_account_forms_per_version(self, api: str, account: str, ok: bool) -> None:
        """v2's Stripe-Context also takes acct_.../acct_...; v1's Stripe-Account does not."""
        if ok:
            built = CancelRequest.build("ev", "id", api=api, stripe_account=account, now=NOW)
            assert built.stripe_account == account
        else:
            with pytest.raises(InvalidInput, match="stripe_account"):
                CancelRequest.build("ev", "id", api=api, stripe_account=account, now=NOW)

    def test_the_hint_for_a_naive_time_is_a_value_that_is_accepted(self) -> None:
        """The example a refused naive received-at suggests is itself accepted."""
        with pytest.raises(InvalidInput) as info:
            CancelRequest.build("ev", "id", api="v1", event_received_at="2026-11-22T11:00", now=NOW)
        example = str(info.value).rsplit("e.g. ", 1)[1]
        built = CancelRequest.build("ev", "id", api="v1", event_received_at=example, now=NOW)
        assert built.event_received_at == NOW

    def test_lone_surrogate(self) -> None:
        """An identifier with a lone surrogate is InvalidInput."""
        with pytest.raises(InvalidInput, match="lone surrogate"):
            CancelRequest.build("ev", "id\udcff", api="v1", now=NOW)


class TestCliArguments:
    """Argument checks in-process through the entry point: one line, exit 2."""

    @pytest.mark.parametrize(
        ("argv", "env", "message"),
        [
            (["cancel", "ev", "id\udcff"], {"REDIS_URL": "redis://127.0.0.1:1/0"}, "UTF-8"),
            (["status", "adj_\udcff"], {"REDIS_URL": "redis://127.0.0.1:1/0"}, "UTF-8"),
            (["cancel", "ev", "x"], {"REDIS_URL": "redis://h:port/0"}, "REDIS_URL"),
            (["stats"], {"REDIS_URL": "memcached://h"}, "REDIS_URL must start"),
            (
                ["cancel", "ev", "x", "--received-at", "0001-01-01T00:00:00+14:00"],
                {"REDIS_URL": "redis://127.0.0.1:1/0"},
                "out of range",
            ),
        ],
    )
    def test_bad_arguments_are_one_line_and_exit_2(
        self,
        argv: list[str],
        env: dict[str, str],
        message: str,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Bad CLI arguments are one line on stderr and exit 2."""
        from adjustments.cli import main

        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2
        assert err.count("\n") == 1 and message in err and err.startswith("adjustments: error:")
