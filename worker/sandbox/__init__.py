"""A local Stripe-compatible server for the meter event adjustment endpoints (v1 and v2)."""

from ..sandbox.config import SandboxConfig
from ..sandbox.server import SandboxServer

__all__ = ["SandboxConfig", "SandboxServer"]
