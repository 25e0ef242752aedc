"""The README's five-command trial, run verbatim in an empty directory with only the project
installed (issue 18): the cancellation it makes ends `pending` at the sandbox."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- trial: a test runs this block verbatim -->"


def trial_block() -> str:
    readme = (ROOT / "README.md").read_text()
    after = readme.split(MARKER, 1)[1]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match, "the trial block follows its marker"
    return match.group(1)


def test_the_readme_trial_works_verbatim(tmp_path: Path) -> None:
    """The five commands start the sandbox, the bundled Redis and a worker, and enqueue one
    cancellation whose status (by event name and identifier) then reaches `pending`."""
    block = trial_block()
    assert len([line for line in block.splitlines() if line.strip()]) == 5
    script = (
        "set -e\n" + block + "for i in $(seq 1 120); do\n"
        "  s=$(adjustments status ai_search_api trial_1 --json 2>/dev/null | python3 -c "
        "\"import json,sys; print(json.load(sys.stdin)['status'])\" || true)\n"
        '  [ "$s" = pending ] && break\n'
        "  sleep 0.5\n"
        "done\n"
        'echo "FINAL=$s"\n'
        "kill $(jobs -p) 2>/dev/null || true\n"
        "wait || true\n"
    )
    bin_dir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=150)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        subprocess.run(
            ["adjustments", "embedded", "stop"], cwd=tmp_path, env=env, check=False, timeout=30
        )
    assert "FINAL=pending" in out, out[-3000:]
    assert re.search(r"adj_\S+\s+queued", out), out[-3000:]  # what `cancel` printed
