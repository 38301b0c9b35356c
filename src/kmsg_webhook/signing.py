"""Signing outgoing webhooks: secret forms, key generation and the per-endpoint :class:`Signer`.

Two schemes (:class:`SignatureScheme`):

``STANDARD`` (default) — Standard Webhooks (https://www.standardwebhooks.com)::

    webhook-id: <message id, the same on every retry>
    webhook-timestamp: <integer epoch seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256> v1a,<base64 ed25519>   (one entry per key)

    signed content: f"{msg_id}.{timestamp}.{body}"

``KMSG`` — the original k-msg runtime's headers, for receivers built against k-msg::

    X-Webhook-ID, X-Webhook-Event, X-Webhook-Timestamp (epoch seconds of this attempt)
    X-Webhook-Signature: sha256=<lower-case hex HMAC-SHA256>   (space-separated if several keys;
                                                                 k-msg's own verifier reads one)
    signed content: f"{timestamp}.{body}"

  The signature header's name and prefix can be changed (:class:`KmsgSignatureFormat`), as the
  original's ``signatureHeader`` / ``signaturePrefix`` could. The original also offered HMAC-SHA1;
  :mod:`kmsg_webhook.verify` still accepts it from old senders (legacy), nothing here signs with it.

Secret forms (decoded in one place, :func:`decode_secret`):

* ``whsec_<base64>`` — symmetric; the key is the decoded bytes (``STANDARD``). Under ``KMSG`` the
  whole string's UTF-8 bytes are the key, exactly as a k-msg receiver uses its configured secret.
* ``whsk_<base64>`` — ed25519 private key: 64 bytes (seed + public key, what Svix issues) or a
  32-byte seed. ``STANDARD`` only.
* ``whpk_<base64>`` — ed25519 public key (32 bytes); verifies, cannot sign. ``STANDARD`` only.
* any other non-empty string — a raw symmetric secret used as its UTF-8 bytes (both schemes).
  Official Standard Webhooks libraries would base64-decode such a string, so prefer ``whsec_``.

Nothing here logs a secret or puts one in an exception message or ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets as _random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, TypeAlias

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import ConfigError, InvalidSecretError, SigningError
from .ids import new_id

__all__ = [
    "DEFAULT_KMSG_SIGNATURE",
    "KMSG_EVENT",
    "KMSG_ID",
    "KMSG_SIGNATURE",
    "KMSG_TIMESTAMP",
    "PRIVATE_KEY_PREFIX",
    "PUBLIC_KEY_PREFIX",
    "RESERVED_HEADERS",
    "SYMMETRIC_PREFIX",
    "WEBHOOK_ID",
    "WEBHOOK_SIGNATURE",
    "WEBHOOK_TIMESTAMP",
    "Key",
    "KmsgSignatureFormat",
    "SignatureScheme",
    "SignedHeaders",
    "Signer",
    "decode_secret",
    "generate_secret",
    "generate_signing_keypair",
    "sign",
]


class SignatureScheme(StrEnum):
    """Which headers and signed content a webhook carries."""

    STANDARD = "standard"
    KMSG = "kmsg"


WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"
KMSG_ID = "X-Webhook-ID"
KMSG_EVENT = "X-Webhook-Event"
KMSG_TIMESTAMP = "X-Webhook-Timestamp"
KMSG_SIGNATURE = "X-Webhook-Signature"

RESERVED_HEADERS: frozenset[str] = frozenset(
    {
        WEBHOOK_ID,
        WEBHOOK_TIMESTAMP,
        WEBHOOK_SIGNATURE,
        KMSG_ID.lower(),
        KMSG_EVENT.lower(),
        KMSG_TIMESTAMP.lower(),
        KMSG_SIGNATURE.lower(),
        # Endpoint verification's challenge (the runtime sends it only when it verifies).
        "webhook-challenge",
        # What the body is: always JSON, sent as is, its length set by the HTTP client.
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        # The connection's own business (hop-by-hop, RFC 9110 7.6.1) or the request's routing:
        # set by the HTTP client; a custom value would change how the request travels.
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)
"""Lower-case names custom endpoint headers must never set: refused when an endpoint is saved,
dropped at send from endpoints written to a store directly."""

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_KMSG_FIXED = frozenset({KMSG_ID.lower(), KMSG_EVENT.lower(), KMSG_TIMESTAMP.lower()})


@dataclass(frozen=True, slots=True)
class KmsgSignatureFormat:
    """Where and how the ``KMSG`` scheme carries its signature: ``<header>: <prefix><hex>``.

    The defaults are the original's (``X-Webhook-Signature``, ``sha256=``, HMAC-SHA256). Give a
    receiver written against the original the same values its ``SecurityManager`` was given.
    ``algorithm="sha1"`` is legacy: receivers verify it (old senders), senders refuse it. As in
    the original, the prefix does not follow the algorithm (``sha256=`` before a SHA-1 hex).
    """

    header: str = KMSG_SIGNATURE
    prefix: str = "sha256="
    algorithm: Literal["sha256", "sha1"] = "sha256"

    def __post_init__(self) -> None:
        if not isinstance(self.header, str) or not _TOKEN.fullmatch(self.header):
            raise ConfigError(f"The k-msg signature header {self.header!r} is not a header name")
        lowered = self.header.lower()
        if lowered in _KMSG_FIXED or (
            lowered in RESERVED_HEADERS and lowered != KMSG_SIGNATURE.lower()
        ):
            raise ConfigError(f"The k-msg signature header cannot be {self.header}")
        if not isinstance(self.prefix, str) or (
            self.prefix and not (self.prefix.isascii() and self.prefix.isprintable())
        ):
            raise ConfigError("The k-msg signature prefix must be printable ASCII")
        if " " in self.prefix:
            raise ConfigError("The k-msg signature prefix cannot hold a space (it separates keys)")
        if self.algorithm not in ("sha256", "sha1"):
            raise ConfigError(f"Unknown k-msg signature algorithm {self.algorithm!r}")


DEFAULT_KMSG_SIGNATURE = KmsgSignatureFormat()
"""The original's format: ``X-Webhook-Signature: sha256=<hex HMAC-SHA256>``."""

SYMMETRIC_PREFIX = "whsec_"
PRIVATE_KEY_PREFIX = "whsk_"
PUBLIC_KEY_PREFIX = "whpk_"

Key: TypeAlias = bytes | Ed25519PrivateKey | Ed25519PublicKey
"""A decoded secret: HMAC key bytes, an ed25519 private key, or an ed25519 public key."""


def _b64decode(text: str, form: str) -> bytes:
    """Strict standard base64 (missing padding tolerated); the error never quotes the text."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecretError(f"A {form} secret is not valid base64 after its prefix") from None


def decode_secret(secret: str, scheme: SignatureScheme = SignatureScheme.STANDARD) -> Key:
    """Decode one configured secret for ``scheme``; raise :class:`InvalidSecretError` if unusable.

    Use it to validate a secret when an endpoint is configured.
    """
    if not isinstance(secret, str) or not secret:
        raise InvalidSecretError("A webhook secret must be a non-empty string")
    is_private = secret.startswith(PRIVATE_KEY_PREFIX)
    if is_private or secret.startswith(PUBLIC_KEY_PREFIX):
        if scheme is SignatureScheme.KMSG:
            raise InvalidSecretError(
                "ed25519 keys (whsk_/whpk_) need the standard scheme; the kmsg scheme is HMAC only"
            )
        raw = _b64decode(secret[5:], "whsk_" if is_private else "whpk_")
        if not is_private:
            if len(raw) != 32:
                raise InvalidSecretError(
                    f"An ed25519 public key (whpk_) must be 32 bytes, not {len(raw)}"
                )
            return Ed25519PublicKey.from_public_bytes(raw)
        if len(raw) not in (32, 64):
            raise InvalidSecretError(
                "An ed25519 signing key (whsk_) must be 64 bytes (seed + public key) "
                f"or a 32-byte seed, not {len(raw)}"
            )
        private = Ed25519PrivateKey.from_private_bytes(raw[:32])
        if len(raw) == 64 and private.public_key().public_bytes_raw() != raw[32:]:
            raise InvalidSecretError("An ed25519 signing key's (whsk_) public half does not match")
        return private
    if scheme is SignatureScheme.STANDARD and secret.startswith(SYMMETRIC_PREFIX):
        raw = _b64decode(secret[len(SYMMETRIC_PREFIX) :], "whsec_")
        if not raw:
            raise InvalidSecretError("A whsec_ secret decodes to no bytes")
        return raw
    return secret.encode()


def generate_secret(nbytes: int = 32) -> str:
    """A new symmetric secret: ``whsec_`` + base64 of ``nbytes`` (24..64) random bytes."""
    if not 24 <= nbytes <= 64:
        raise ValueError("A webhook secret should have 24 to 64 random bytes")
    return SYMMETRIC_PREFIX + base64.b64encode(_random.token_bytes(nbytes)).decode()


def generate_signing_keypair() -> tuple[str, str]:
    """A new ed25519 pair ``(whsk_..., whpk_...)``: keep the first, give receivers the second.

    The private form is the 64-byte seed + public key, as Svix issues them.
    """
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    return (
        PRIVATE_KEY_PREFIX + base64.b64encode(private.private_bytes_raw() + public).decode(),
        PUBLIC_KEY_PREFIX + base64.b64encode(public).decode(),
    )


def _check_header_value(name: str, value: str) -> None:
    # Printable ASCII without spaces: safe as a header value and byte-identical on every server.
    if not value or not value.isascii() or not value.isprintable() or " " in value:
        raise SigningError(f"The {name} must be non-empty printable ASCII without spaces")


class Signer:
    """Signs webhooks for one endpoint; decode its keys once and reuse it for every attempt.

    ``secrets`` holds one secret or several (rotation: every key signs, receivers holding any
    one of them verify). Under ``KMSG`` several secrets give several space-separated
    ``sha256=`` values, which k-msg's own verifier does not understand: give k-msg receivers one.
    No secret at all is an error, never a silent unsigned send.
    """

    __slots__ = ("_ed25519", "_hmacs", "_kmsg", "_scheme")

    def __init__(
        self,
        secrets: str | Sequence[str],
        scheme: SignatureScheme = SignatureScheme.STANDARD,
        *,
        kmsg_format: KmsgSignatureFormat = DEFAULT_KMSG_SIGNATURE,
    ) -> None:
        self._scheme = SignatureScheme(scheme)
        if kmsg_format.algorithm != "sha256":
            raise SigningError("HMAC-SHA1 is accepted for verifying only; sign with sha256")
        self._kmsg = kmsg_format
        items = [secrets] if isinstance(secrets, str) else list(secrets)
        if not items:
            raise SigningError("The endpoint has no secret to sign with; refusing to send unsigned")
        self._hmacs: list[bytes] = []
        self._ed25519: list[Ed25519PrivateKey] = []
        for secret in items:
            key = decode_secret(secret, self._scheme)
            if isinstance(key, bytes):
                self._hmacs.append(key)
            elif isinstance(key, Ed25519PrivateKey):
                self._ed25519.append(key)
            else:
                raise InvalidSecretError("A whpk_ public key can only verify; signing needs whsk_")

    @property
    def scheme(self) -> SignatureScheme:
        return self._scheme

    def headers(
        self, *, msg_id: str, timestamp: int, body: bytes, event_type: str
    ) -> dict[str, str]:
        """The id, timestamp and signature headers of one attempt (nothing else).

        ``msg_id`` stays the same across retries; ``timestamp`` is this attempt's epoch seconds.
        """
        if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
            raise SigningError("The timestamp must be a non-negative integer of epoch seconds")
        _check_header_value("message id", msg_id)
        ts = str(timestamp)
        if self._scheme is SignatureScheme.STANDARD:
            prefix = f"{msg_id}.{ts}.".encode()
            if len(self._hmacs) == 1 and not self._ed25519:  # the usual case, per attempt
                signature = "v1," + _b64(_hmac(self._hmacs[0], prefix, body))
            else:
                signatures = [f"v1,{_b64(_hmac(mac, prefix, body))}" for mac in self._hmacs]
                signatures += [f"v1a,{_b64(key.sign(prefix + body))}" for key in self._ed25519]
                signature = " ".join(signatures)
            return {WEBHOOK_ID: msg_id, WEBHOOK_TIMESTAMP: ts, WEBHOOK_SIGNATURE: signature}
        _check_header_value("event type", event_type)
        prefix = f"{ts}.".encode()
        kmsg = self._kmsg
        return {
            KMSG_ID: msg_id,
            KMSG_EVENT: event_type,
            KMSG_TIMESTAMP: ts,
            kmsg.header: " ".join(
                f"{kmsg.prefix}{_hmac(mac, prefix, body).hex()}" for mac in self._hmacs
            ),
        }

    def __repr__(self) -> str:
        return (
            f"Signer(scheme={self._scheme.value!r}, hmac_keys={len(self._hmacs)}, "
            f"ed25519_keys={len(self._ed25519)})"
        )


@dataclass(frozen=True, slots=True)
class SignedHeaders(Mapping[str, str]):
    """The three Standard Webhooks headers of one signed message.

    A mapping of the standard header names, so it can be passed as request headers as it is
    (``headers={**signed, "content-type": "application/json"}`` to add more).
    """

    webhook_id: str
    webhook_timestamp: str
    webhook_signature: str

    def __getitem__(self, name: str) -> str:
        if name == WEBHOOK_ID:
            return self.webhook_id
        if name == WEBHOOK_TIMESTAMP:
            return self.webhook_timestamp
        if name == WEBHOOK_SIGNATURE:
            return self.webhook_signature
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter((WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE))

    def __len__(self) -> int:
        return 3


def sign(
    body: bytes | str,
    secrets: str | Sequence[str],
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> SignedHeaders:
    """Sign one Standard Webhooks message: its id, timestamp and signature headers.

    ``msg_id`` defaults to a new ``msg_`` id (keep it the same when resending the message) and
    ``timestamp`` to now, in epoch seconds. A ``str`` body is signed as its UTF-8 bytes; send
    exactly those bytes. Several secrets sign with every key, as :class:`Signer` does.
    """
    signer = Signer(secrets)
    headers = signer.headers(
        msg_id=new_id("msg") if msg_id is None else msg_id,
        timestamp=int(time.time()) if timestamp is None else timestamp,
        body=body.encode() if isinstance(body, str) else body,
        event_type="",
    )
    return SignedHeaders(
        webhook_id=headers[WEBHOOK_ID],
        webhook_timestamp=headers[WEBHOOK_TIMESTAMP],
        webhook_signature=headers[WEBHOOK_SIGNATURE],
    )


def _hmac(key: bytes, prefix: bytes, body: bytes) -> bytes:
    # The standard library's one-shot HMAC (one C call; an hmac.HMAC object costs four Python
    # calls per message, about as much as the hashing).
    return hmac.digest(key, prefix + body, "sha256")


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode()
