"""Who may use the console, and what every response carries.

Without a token the console trusts whoever reaches its socket, so it may only listen on a
loopback address. With a token, a browser signs in once (``/login``) and holds a session
cookie derived from a per-process key; scripts may send ``Authorization: Bearer <token>``.
Every state change is a POST carrying a CSRF token bound to a cookie (double submit, signed
with the same key), from a page of the same origin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import ConfigError, UnsafeOperationError

TOKEN_ENV = "KMSG_WEBHOOK_CONSOLE_TOKEN"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
MIN_TOKEN_LENGTH = 16
SESSION_COOKIE = "kmsg_console_session"
CSRF_COOKIE = "kmsg_console_csrf"
CSRF_FIELD = "csrf_token"

#: Nothing but this origin's own stylesheet and script; no inline code, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def check_bind(host: str, token: str | None) -> None:
    """Refuse a guessable token (:class:`ConfigError`) and serving beyond loopback without a
    token (:class:`UnsafeOperationError`)."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"the console token must be at least {MIN_TOKEN_LENGTH} characters")
    if token is None and host not in LOOPBACK_HOSTS:
        raise UnsafeOperationError(
            f"binding the console to {host} needs a token (--token or ${TOKEN_ENV}); "
            "without one it listens on 127.0.0.1 only"
        )


@dataclass(frozen=True, slots=True)
class Guard:
    """The console's credentials: the operator token (``None``: none required) and a random
    per-process key that signs session and CSRF cookies (a restart signs everyone out)."""

    token: str | None
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self.key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def token_matches(self, candidate: str) -> bool:
        """Constant-time comparison with the operator token."""
        if self.token is None:
            return True
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def session_cookie(self) -> str:
        """The value of the session cookie a signed-in browser holds."""
        return self._sign("session", "operator")

    def authenticated(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credential:
            return self.token_matches(credential.strip())
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.session_cookie().encode())

    def csrf_token(self, nonce: str) -> str:
        """The form token that goes with the CSRF cookie ``nonce``."""
        return self._sign("csrf", nonce)

    def csrf_valid(self, nonce: str | None, submitted: str) -> bool:
        if not nonce or not submitted:
            return False
        return hmac.compare_digest(submitted.encode(), self.csrf_token(nonce).encode())


def same_origin(request: web.Request) -> bool:
    """False when the browser says the request comes from a page of another origin."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


def new_nonce() -> str:
    return secrets.token_urlsafe(32)
