"""The package's version, read once from its installed metadata (written in pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("adjustments")
except PackageNotFoundError:  # pragma: no cover - running from a source tree, not installed
    VERSION = "0.0.0"
