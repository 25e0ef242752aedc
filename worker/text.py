"""Stored text shown to people: escaped so that it cannot drive a terminal or reorder what
an operator reads."""

from __future__ import annotations

import re

# C0 and C1 controls, lone surrogates (undecodable input), and the invisible or direction-
# changing format characters: bidirectional embeddings, overrides and isolates (U+202A-E,
# U+2066-9, the trick behind "Trojan Source"), marks, zero-width characters, the BOM.
_HIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with control, format (bidirectional, zero-width) characters and lone
    surrogates escaped (``\\x1b``, ``\\u202e``), so stored data shows as what it is."""
    return _HIDDEN.sub(_escape, text)
