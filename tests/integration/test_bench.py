"""`make bench --quick` keeps working: every scenario runs and reports a figure.

Speed is not asserted here (figures live in `make bench`), only that each is measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import ROOT

SCENARIOS = {
    "single enqueue", "bulk enqueue", "end to end, Stripe 100 ms", "worker CPU", "memory",
    "shared limit (3 procs, 50/s; sandbox 60/s)", "adaptive limit (50/s; sandbox 30/s)",
    "durability (appendfsync everysec)", "durability (appendfsync always)",
    "backlog 1,000 at 20/s", "http enqueue", "header guard",
    "deadline first (300 fresh, then 30 closing in 2 s; 100/s)", "finance export",
    "two platforms (20/s each; one worker)",
}  # fmt: skip


class TestBenchQuick:
    def test_every_scenario_reports(self, tmp_path: Path) -> None:
        """bench --quick runs every scenario and reports each figure in its table and JSON."""
        out_path = tmp_path / "bench.json"
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench", "--quick", "--json", str(out_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        report = json.loads(out_path.read_text())
        assert report["quick"] is True
        assert {row["scenario"] for row in report["rows"]} == SCENARIOS
        assert all(
            isinstance(row["value"], float | int) and row["value"] >= 0 for row in report["rows"]
        )
        assert "scenario" in out.stdout and "JSON:" in out.stdout
