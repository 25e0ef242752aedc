"""`adjustments worker` with its clock off by ``CHAOS_SKEW_S`` seconds (ahead, or behind when
negative): the nemesis's clock skew. The worker's own sense of now (attempts, leases,
deadlines, reconciliation, heartbeats) is shifted; Redis's clock (the rate limiter) is not.

Usage: python -m benchmarks.chaos_skew worker [worker options]
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta


def main() -> None:
    skew = float(os.environ.get("CHAOS_SKEW_S", "0"))
    real_time = time.time

    def skewed_time() -> float:
        return real_time() + skew

    def skewed_utcnow() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=skew)

    time.time = skewed_time
    from adjustments import attempt
    from adjustments.cli import main as cli_main

    attempt.utcnow = skewed_utcnow  # the worker's clock (runtime.ServerClock reads it)
    defaults = attempt.run_attempt.__kwdefaults__ or {}
    defaults["clock"] = skewed_utcnow
    sys.argv = ["adjustments", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
