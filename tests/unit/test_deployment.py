"""Every command in the Procfile and docker-compose.yml is a real `adjustments` command."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def procfile_commands() -> list[tuple[str, list[str]]]:
    out = []
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            out.append((f"Procfile:{name}", shlex.split(command)))
    return out


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def compose_commands() -> list[tuple[str, list[str]]]:
    out = []
    for name, service in compose()["services"].items():
        if "build" in service:  # our image; the others are Redis and stripe-mock
            command = service["command"]
            out.append(
                (f"compose:{name}", shlex.split(command) if isinstance(command, str) else command)
            )
    return out


COMMANDS = procfile_commands() + compose_commands()


class TestDeploymentFiles:
    def test_both_files_declare_worker_and_beat(self) -> None:
        names = {where for where, _ in COMMANDS}
        assert {"Procfile:worker", "Procfile:beat", "compose:worker", "compose:beat"} <= names

    @pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
    def test_command_exists(self, where: str, argv: list[str]) -> None:
        """`adjustments SUB --help` exits 0 for each SUB named in a deployment file."""
        assert argv[0] == "adjustments", where
        out = subprocess.run(
            [sys.executable, "-m", "adjustments.cli", *argv[1:], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, f"{where}: {out.stderr}"
        assert out.stdout.startswith("Usage: adjustments " + argv[1])

    def test_redis_is_persistent_and_never_evicts(self) -> None:
        command = " ".join(compose()["services"]["redis"]["command"])
        assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command

    def test_dockerfile_runs_the_worker(self) -> None:
        assert 'CMD ["adjustments", "worker"]' in (ROOT / "Dockerfile").read_text()
