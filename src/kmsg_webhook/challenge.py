"""Endpoint verification: the ``webhook-challenge`` handshake, as the ``standardwebhooks``
package (1.3) defines it.

The sender POSTs an empty body with ``webhook-challenge: <random token>``. A receiver holding the
endpoint's secret answers 2xx with ``webhook-challenge-response: v1,<base64 HMAC-SHA256(k,
token)>``, where ``k = HMAC-SHA256(secret key, "wev-v1")``: proof of the secret that reveals
neither it nor any webhook signature. The secret key is the one the scheme signs with
(:func:`~kmsg_webhook.signing.decode_secret`); ed25519 keys cannot answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as _random
from collections.abc import Iterable

from .signing import SignatureScheme, decode_secret

__all__ = [
    "WEBHOOK_CHALLENGE",
    "WEBHOOK_CHALLENGE_RESPONSE",
    "challenge_key",
    "challenge_response",
    "new_challenge",
    "response_matches",
]

WEBHOOK_CHALLENGE = "webhook-challenge"
WEBHOOK_CHALLENGE_RESPONSE = "webhook-challenge-response"
_KEY_LABEL = b"wev-v1"


def new_challenge() -> str:
    """A fresh random challenge (URL-safe text, 192 bits)."""
    return _random.token_urlsafe(24)


def challenge_key(secret: str, scheme: SignatureScheme) -> bytes | None:
    """The HMAC key ``secret`` signs with under ``scheme``; ``None`` for ed25519 keys."""
    key = decode_secret(secret, scheme)
    return key if isinstance(key, bytes) else None


def challenge_response(key: bytes, challenge: str) -> str:
    """The ``webhook-challenge-response`` value for ``challenge`` under HMAC key ``key``."""
    verification_key = hmac.digest(key, _KEY_LABEL, hashlib.sha256)
    signature = hmac.digest(verification_key, challenge.encode(), hashlib.sha256)
    return "v1," + base64.b64encode(signature).decode()


def response_matches(keys: Iterable[bytes], challenge: str, answer: str | None) -> bool:
    """Whether ``answer`` is the response to ``challenge`` under any of ``keys``."""
    if not answer:
        return False
    given = answer.strip().encode("utf-8", "surrogateescape")
    return any(
        hmac.compare_digest(given, challenge_response(key, challenge).encode()) for key in keys
    )
