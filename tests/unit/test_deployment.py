"""Every command in the Procfile and docker-compose.yml is a real `adjustments` command."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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
    def test_both_files_declare_worker_beat_and_web(self) -> None:
        """Procfile and compose both run a worker, beat and the web server."""
        names = {where for where, _ in COMMANDS}
        assert {"Procfile:worker", "Procfile:beat", "compose:worker", "compose:beat"} <= names
        assert {"Procfile:web", "compose:web"} <= names  # adjustments serve

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
        """compose's Redis is append-only and never evicts."""
        command = " ".join(compose()["services"]["redis"]["command"])
        assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command

    def test_dockerfile_runs_the_worker(self) -> None:
        """The image's command is adjustments worker."""
        assert 'CMD ["adjustments", "worker"]' in (ROOT / "Dockerfile").read_text()


class TestImageAndLock:
    def dockerfile(self) -> list[str]:
        return [
            line.strip()
            for line in (ROOT / "Dockerfile").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]

    def test_base_image_is_pinned(self) -> None:
        """A Python patch release on a named Debian release, never a moving tag."""
        base = next(line for line in self.dockerfile() if line.startswith("FROM "))
        assert re.fullmatch(r"FROM python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base)

    def test_dependencies_are_a_layer_of_their_own_and_the_user_is_not_root(self) -> None:
        """The image installs pinned dependencies before the source and runs as a non-root user."""
        lines = self.dockerfile()
        deps = next(i for i, line in enumerate(lines) if "-r requirements.txt" in line)
        source = lines.index("COPY worker ./worker")
        assert "-c constraints.txt" in lines[deps] and deps < source
        user = [line for line in lines if line.startswith("USER ")]
        assert user and user[-1] not in ("USER root", "USER 0")

    def test_lock_file_pins_every_dependency_within_its_declared_range(self) -> None:
        """constraints.txt pins each declared dependency (runtime and dev) to one version that
        pyproject.toml allows."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        declared = [Requirement(r) for r in project["dependencies"]]
        declared += [Requirement(r) for r in project["optional-dependencies"]["dev"]]
        pins: dict[str, str] = {}
        for line in (ROOT / "constraints.txt").read_text().splitlines():
            if line and not line.startswith("#"):
                name, version = line.split("==")
                pins[canonicalize_name(name)] = version
        for requirement in declared:
            pinned = pins.get(canonicalize_name(requirement.name))
            assert pinned is not None, f"{requirement.name} is not in constraints.txt"
            assert requirement.specifier.contains(pinned), f"{requirement} vs {pinned}"


class TestLayoutMap:
    def test_the_layout_section_names_every_module_and_folder(self) -> None:
        """Each module and sub-package of worker/ (and each Lua script) is in the layout block
        of the development page, so the map cannot drift from the tree."""
        text = (ROOT / "docs" / "development.md").read_text()
        block = text.split("## Layout", 1)[1].split("```", 2)[1]
        worker = ROOT / "worker"
        names = {p.stem for p in worker.glob("*.py") if p.stem != "__init__"}
        names |= {f"{p.name}/" for p in worker.iterdir() if p.is_dir() and p.name != "__pycache__"}
        names |= {p.stem for p in (worker / "lua").glob("*.lua")}
        names |= {p.stem for p in (worker / "http").glob("*.py") if p.stem != "__init__"}
        names |= {
            p.stem for p in (worker / "cli").glob("*.py") if p.stem not in ("__init__", "__main__")
        }
        missing = sorted(n for n in names if n not in block)
        assert missing == []


class TestTestsAsDocumentation:
    def test_every_test_says_what_it_checks(self) -> None:
        """Every test function has a behaviour docstring (pytest -v and the file read as a
        list of facts)."""
        import ast

        bare = []
        for path in sorted((ROOT / "tests").rglob("test_*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test"):
                    continue
                if not ast.get_docstring(node):
                    bare.append(f"{path.relative_to(ROOT)}::{node.name}")
        assert bare == []


class TestComposeAndDashboard:
    def test_every_service_of_ours_has_the_shared_environment(self) -> None:
        """A service's own environment adds to the shared one (web keeps
        ADJUSTMENTS_STRIPE_API and the rest), it never replaces it."""
        services = compose()["services"]
        shared = services["worker"]["environment"]
        assert "ADJUSTMENTS_STRIPE_API" in shared
        for name, service in services.items():
            if "build" in service:
                assert set(shared) <= set(service["environment"]), name
        assert "ADJUSTMENTS_API_TOKENS" in services["web"]["environment"]

    def test_images_are_pinned_and_the_deployment_metrics_run(self) -> None:
        """No image is `latest`; the deployment metrics exporter is a service."""
        services = compose()["services"]
        for name, service in services.items():
            if "image" in service:
                assert not service["image"].endswith(":latest"), name
                assert ":" in service["image"], name
        assert services["metrics"]["command"][:2] == ["adjustments", "metrics"]

    def test_every_panel_has_a_unit_and_named_series(self) -> None:
        """Grafana: each panel has a unit, each query a legend; stats have thresholds."""
        import json

        dashboard = json.loads((ROOT / "deploy" / "grafana" / "adjustments.json").read_text())
        for panel in dashboard["panels"]:
            defaults = panel["fieldConfig"]["defaults"]
            assert defaults.get("unit"), panel["title"]
            assert all(t.get("legendFormat") for t in panel["targets"]), panel["title"]
            if panel["type"] == "stat":
                assert defaults["thresholds"]["steps"], panel["title"]
