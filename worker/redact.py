"""Scrub anything that looks like a Stripe secret or restricted key from text."""

from __future__ import annotations

import re
from typing import Any

_KEY = re.compile(r"\b(sk|rk)_(live|test)?_?[A-Za-z0-9]{4,}[A-Za-z0-9_]*")
MASK = "[REDACTED]"


def redact(text: str) -> str:
    """Replace every sk_/rk_ key in ``text`` with a mask."""
    return _KEY.sub(MASK, text) if ("sk_" in text or "rk_" in text) else text


def redact_value(value: Any) -> Any:
    """Redact strings, recursing into dicts, lists and tuples; leave other values alone."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value
