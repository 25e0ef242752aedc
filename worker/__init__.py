"""adjustments: cancel Stripe meter events asynchronously through a Celery queue."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("adjustments")  # written once, in pyproject.toml
except PackageNotFoundError:  # pragma: no cover - running from a source tree, not installed
    __version__ = "0.0.0"
