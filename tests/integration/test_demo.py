"""`make demo` end to end, as a user runs it: every planned outcome, and the missed windows
compensated with each customer's usage back to what is right."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.slow


def test_the_demo_runs_end_to_end(tmp_path: Path) -> None:
    """`adjustments demo` with 200 cancellations exits 0 with both OK lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADJUSTMENTS_", "STRIPE_"))}
    env["ADJUSTMENTS_DATA_DIR"] = str(tmp_path)
    out = run_cli(["demo", "--count", "200"], env, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK: all 200 requests reached the status the sandbox's faults call for" in out.stdout
    assert "compensated" in out.stdout
    assert "OK: every missed window was compensated" in out.stdout
