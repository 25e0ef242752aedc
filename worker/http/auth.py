"""Bearer tokens, console sessions and CSRF tokens.

Tokens come from ``ADJUSTMENTS_API_TOKENS=role:token[,role:token...]`` with the roles
``enqueue`` (post cancellations), ``read`` (read everything) and ``operate`` (everything).
Every comparison is constant-time and no token is ever logged or echoed.

A console session is a signed cookie ``role.expiry.signature``: nothing is stored server-side,
several server processes accept each other's sessions, and changing the tokens ends every
session (the signing key is derived from them). Each form carries a CSRF token derived from
the session cookie, checked on every POST, on top of ``SameSite=Strict``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field

from ..errors import ConfigError

ROLES = ("enqueue", "read", "operate")
ALLOWED: dict[str, frozenset[str]] = {
    "enqueue": frozenset({"enqueue"}),
    "read": frozenset({"read"}),
    "operate": frozenset({"enqueue", "read", "operate"}),
}
SESSION_S = 8 * 3600
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Token:
    role: str
    secret: str = field(repr=False)


def parse_tokens(spec: str | None) -> list[Token]:
    """``role:token[,role:token...]`` as tokens; ConfigError (never quoting a token) else."""
    tokens: list[Token] = []
    for position, item in enumerate((spec or "").split(","), start=1):
        if not item.strip():
            continue
        role, sep, secret = item.strip().partition(":")
        if not sep or role not in ROLES:
            raise ConfigError(
                f"ADJUSTMENTS_API_TOKENS item {position}: expected role:token with a role in "
                f"{', '.join(ROLES)}"
            )
        if len(secret) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"ADJUSTMENTS_API_TOKENS item {position} ({role}): a token needs at least "
                f"{MIN_TOKEN_CHARS} characters"
            )
        tokens.append(Token(role, secret))
    return tokens


class Auth:
    """Who a request is: from its bearer token or its session cookie."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        material = "\0".join(f"{t.role}:{t.secret}" for t in tokens).encode()
        self._key = hashlib.sha256(b"adjustments-session\0" + material).digest()

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def role_for_token(self, presented: str) -> str | None:
        """The role of ``presented``, comparing with every token in constant time."""
        found = None
        given = presented.encode()
        for token in self.tokens:
            if hmac.compare_digest(given, token.secret.encode()):
                found = found or token.role
        return found

    def role_for_header(self, authorization: str | None) -> str | None:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        return self.role_for_token(presented.strip())

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def session_cookie(self, role: str, *, now: float | None = None) -> str:
        expires = int((now or time.time()) + SESSION_S)
        payload = f"{role}.{expires}"
        return f"{payload}.{self._sign('session|' + payload)}"

    def role_for_session(self, cookie: str | None, *, now: float | None = None) -> str | None:
        role, _, rest = (cookie or "").partition(".")
        expires, _, signature = rest.partition(".")
        if role not in ROLES or not expires.isdigit():
            return None
        expected = self._sign(f"session|{role}.{expires}")
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return None
        return role if int(expires) > (now or time.time()) else None

    def csrf_token(self, cookie: str) -> str:
        return self._sign("csrf|" + cookie)

    def csrf_ok(self, cookie: str | None, presented: str | None) -> bool:
        if not cookie or not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.csrf_token(cookie).encode())


def allowed(role: str | None, need: str) -> bool:
    return role is not None and need in ALLOWED[role]
