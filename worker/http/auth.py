"""Bearer tokens, console sessions and CSRF tokens.

Tokens come from ``ADJUSTMENTS_API_TOKENS=[name=]role:token[,...]`` with the roles
``enqueue`` (post cancellations), ``read`` (read everything) and ``operate`` (everything).
A token's name (default ``<role>-<position>``) is who asked: it is stored as
``requested_by`` on the records created with it.
Every comparison is constant-time and no token is ever logged or echoed.

A console session is a random id in an ``HttpOnly``, ``SameSite=Strict`` cookie; the session
itself (its role and which token opened it) is kept in Redis, so several server processes
share sessions, logout revokes one at once, and changing or removing its token ends it. Each
form carries a CSRF token derived from the session id (and the login form one derived from a
login cookie), checked on every POST on top of ``SameSite=Strict``. Without tokens
(``--insecure-local``) the derivation key is random for each process: nothing a page can
read or guess lets it forge one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from ..errors import ConfigError

ROLES = ("enqueue", "read", "operate")
ALLOWED: dict[str, frozenset[str]] = {
    "enqueue": frozenset({"enqueue"}),
    "read": frozenset({"read"}),
    "operate": frozenset({"enqueue", "read", "operate"}),
}
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
SESSION_S = 8 * 3600
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Token:
    role: str
    secret: str = field(repr=False)
    name: str = ""


def parse_tokens(spec: str | None) -> list[Token]:
    """``role:token[,role:token...]`` as tokens; ConfigError (never quoting a token) else."""
    tokens: list[Token] = []
    for position, item in enumerate((spec or "").split(","), start=1):
        if not item.strip():
            continue
        head, sep, secret = item.strip().partition(":")
        name, named, role = head.rpartition("=")
        if not sep or role not in ROLES or (named and not _NAME.fullmatch(name)):
            raise ConfigError(
                f"ADJUSTMENTS_API_TOKENS item {position}: expected [name=]role:token with a role "
                f"in {', '.join(ROLES)} and a name of letters, digits, '.', '_', '-' or '@'"
            )
        if len(secret) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"ADJUSTMENTS_API_TOKENS item {position} ({role}): a token needs at least "
                f"{MIN_TOKEN_CHARS} characters"
            )
        tokens.append(Token(role, secret, name or f"{role}-{position}"))
    roles: dict[str, str] = {}
    for position, token in enumerate(tokens, start=1):
        earlier = roles.setdefault(token.secret, token.role)
        if earlier != token.role:  # which role would it be? Refused rather than guessed
            raise ConfigError(
                f"ADJUSTMENTS_API_TOKENS item {position}: the same token is given the roles "
                f"{earlier} and {token.role}; give each role its own token"
            )
    return tokens


def fingerprint(secret: str) -> str:
    """A short digest that names a token without revealing it (stored with a session)."""
    return hashlib.sha256(b"adjustments-token\0" + secret.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Session:
    """A console session as stored: its role and the fingerprint of the token that opened
    it ("" for an --insecure-local session)."""

    role: str
    token: str


class Auth:
    """Who a request is: from its bearer token or its session."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        if tokens:  # several server processes must accept each other's CSRF tokens
            material = "\0".join(f"{t.role}:{t.secret}" for t in tokens).encode()
            self._key = hashlib.sha256(b"adjustments-session\0" + material).digest()
        else:
            self._key = secrets.token_bytes(32)
        self._fingerprints = {fingerprint(t.secret): t.role for t in tokens}

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def token_for(self, presented: str) -> Token | None:
        """The configured token ``presented`` is, comparing with every one in constant time."""
        found = None
        given = presented.encode()
        for token in self.tokens:
            if hmac.compare_digest(given, token.secret.encode()):
                found = found or token
        return found

    def role_for_token(self, presented: str) -> str | None:
        token = self.token_for(presented)
        return token.role if token else None

    def token_for_header(self, authorization: str | None) -> Token | None:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        return self.token_for(presented.strip())

    def role_for_header(self, authorization: str | None) -> str | None:
        token = self.token_for_header(authorization)
        return token.role if token else None

    def still_valid(self, session: Session) -> bool:
        """A stored session holds only while its token is configured with the same role."""
        if not self.enabled:
            return session.token == "" and session.role == "operate"
        return self._fingerprints.get(session.token) == session.role

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, session_id: str) -> str:
        return self._sign("csrf|" + session_id)

    def csrf_ok(self, session_id: str | None, presented: str | None) -> bool:
        if not session_id or not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.csrf_token(session_id).encode())

    def login_csrf(self, nonce: str) -> str:
        return self._sign("login|" + nonce)

    def login_csrf_ok(self, nonce: str | None, presented: str | None) -> bool:
        if not nonce or not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.login_csrf(nonce).encode())


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def article(word: str | None) -> str:
    """``an`` before a vowel (an enqueue token, an operate token), else ``a``."""
    return "an" if (word or "x")[0] in "aeiou" else "a"


def allowed(role: str | None, need: str) -> bool:
    return role is not None and need in ALLOWED[role]
