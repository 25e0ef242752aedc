"""Every Lua script names its KEYS and ARGV in a header and reads them nowhere else."""

from __future__ import annotations

from pathlib import Path

import pytest

LUA = Path(__file__).resolve().parents[2] / "worker" / "lua"
SCRIPTS = sorted(LUA.glob("*.lua"))


def body_of(text: str) -> str:
    """What follows the header: the script after the first blank line that comes after its
    first ``local`` binding (the header is comments, bindings and the fields loop)."""
    first_local = text.find("\nlocal ")
    if first_local < 0:
        return text
    blank = text.find("\n\n", first_local)
    return text[blank:] if blank >= 0 else ""


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_keys_and_argv_are_read_only_in_the_header(script: Path) -> None:
    """No KEYS[n] or ARGV[n] below the header's named locals."""
    body = body_of(script.read_text())
    assert "KEYS" not in body and "ARGV" not in body, script.name


def test_the_recovering_rate_is_defined_once() -> None:
    """The rate formula lives in rate_common.lua; the scripts that need it call it."""
    defining = [s.name for s in SCRIPTS if "recovery * (now_us" in s.read_text()]
    assert defining == ["rate_common.lua"]
    callers = {s.name for s in SCRIPTS if "recovered_rate(" in s.read_text()} - {"rate_common.lua"}
    assert callers == {"rate_acquire.lua", "rate_penalize.lua", "rate_peek.lua", "rate_next.lua"}
