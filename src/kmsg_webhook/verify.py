"""Receiving webhooks: check signature and timestamp, then parse the event.

    event = verify(body, request.headers, "whsec_...")          # one call
    verifier = Verifier(secrets, replay_guard=ReplayGuard())     # a server: decode keys once
    event = verifier.verify(body, request.headers)

The scheme is detected from the headers (``webhook-signature`` → standard, ``X-Webhook-Signature``
or the header ``kmsg_format`` names → kmsg) unless given. ``kmsg_format`` also names the k-msg
signature's prefix and algorithm, as the original's ``SecurityManager`` took them; HMAC-SHA1 is
accepted there as a legacy of old senders. Any one secret matching any one signature passes
(key rotation). Every problem with the request raises a :class:`VerificationError` subclass,
whose ``reason`` is a short code; a bad *secret* raises :class:`InvalidSecretError` when the
verifier is built.
"""

from __future__ import annotations

import binascii
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import (
    InvalidArgumentError,
    InvalidEventError,
    InvalidPayloadError,
    InvalidSecretError,
    InvalidSignatureError,
    InvalidTimestampError,
    MissingHeaderError,
    ReplayedMessageError,
)
from .events import WebhookEvent
from .signing import (
    DEFAULT_KMSG_SIGNATURE,
    KMSG_TIMESTAMP,
    PRIVATE_KEY_PREFIX,
    PUBLIC_KEY_PREFIX,
    WEBHOOK_ID,
    WEBHOOK_SIGNATURE,
    WEBHOOK_TIMESTAMP,
    KmsgSignatureFormat,
    SignatureScheme,
    decode_secret,
)

__all__ = ["ReplayGuard", "Verifier", "verify"]

_MAX_SIGNATURES = 16  # more entries than any rotation needs; bounds the work one request causes


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secrets: str | Sequence[str],
    *,
    tolerance_s: int = 300,
    now: float | None = None,
    scheme: SignatureScheme | None = None,
    replay_guard: ReplayGuard | None = None,
    kmsg_format: KmsgSignatureFormat = DEFAULT_KMSG_SIGNATURE,
) -> WebhookEvent:
    """Verify one request and return its event (see :class:`Verifier`)."""
    verifier = Verifier(
        secrets,
        tolerance_s=tolerance_s,
        scheme=scheme,
        replay_guard=replay_guard,
        kmsg_format=kmsg_format,
    )
    return verifier.verify(body, headers, now=now)


class ReplayGuard:
    """Message ids seen in the last ``ttl_s`` seconds; a second sighting is a replay.

    Memory is bounded: expired ids are evicted, and past ``max_entries`` the oldest go first.
    Keep ``ttl_s`` at least twice the verifier's tolerance. Thread-safe; per process only.
    """

    def __init__(self, ttl_s: float = 600, max_entries: int = 100_000) -> None:
        if ttl_s <= 0 or max_entries <= 0:
            raise ValueError("ReplayGuard needs a positive ttl_s and max_entries")
        self._ttl = ttl_s
        self._max = max_entries
        self._expiry: OrderedDict[str, float] = OrderedDict()  # oldest expiry first
        self._lock = threading.Lock()

    def check_and_remember(self, msg_id: str, now: float | None = None) -> None:
        """Remember ``msg_id``; raise :class:`ReplayedMessageError` if it is already remembered."""
        now = time.time() if now is None else now
        with self._lock:
            expiry = self._expiry
            while expiry and (len(expiry) >= self._max or next(iter(expiry.values())) <= now):
                expiry.popitem(last=False)  # oldest first
            if expiry.get(msg_id, now) > now:
                raise ReplayedMessageError("This message id was already received")
            expiry[msg_id] = now + self._ttl
            expiry.move_to_end(msg_id)

    def forget(self, msg_id: str) -> None:
        """Drop ``msg_id`` so its retry is accepted (the first delivery was not processed)."""
        with self._lock:
            self._expiry.pop(msg_id, None)

    def __len__(self) -> int:
        return len(self._expiry)


@dataclass(frozen=True, slots=True, repr=False)
class _Keys:
    hmac: tuple[bytes, ...]
    ed25519: tuple[Ed25519PublicKey, ...] = ()


class Verifier:
    """Decoded secrets plus options; :meth:`verify` checks one request. Safe to share."""

    __slots__ = ("_guard", "_keys", "_kmsg", "_scheme", "_tolerance")

    def __init__(
        self,
        secrets: str | Sequence[str],
        *,
        tolerance_s: int = 300,
        scheme: SignatureScheme | None = None,
        replay_guard: ReplayGuard | None = None,
        kmsg_format: KmsgSignatureFormat = DEFAULT_KMSG_SIGNATURE,
    ) -> None:
        if not isinstance(kmsg_format, KmsgSignatureFormat):
            raise InvalidArgumentError("kmsg_format must be a KmsgSignatureFormat")
        self._kmsg = kmsg_format
        items = [secrets] if isinstance(secrets, str) else list(secrets)
        if not items or not all(isinstance(s, str) and s for s in items):
            raise InvalidSecretError("A webhook verifier needs at least one non-empty secret")
        if tolerance_s < 0:
            raise ValueError("tolerance_s must not be negative")
        self._scheme = None if scheme is None else SignatureScheme(scheme)
        self._tolerance = tolerance_s
        self._guard = replay_guard
        self._keys: dict[SignatureScheme, _Keys] = {}
        if self._scheme is not SignatureScheme.KMSG:
            self._keys[SignatureScheme.STANDARD] = _standard_keys(items)
        if self._scheme is not SignatureScheme.STANDARD:
            self._keys[SignatureScheme.KMSG] = _kmsg_keys(items)
            if not self._keys[SignatureScheme.KMSG].hmac and self._scheme is SignatureScheme.KMSG:
                raise InvalidSecretError("The kmsg scheme needs an HMAC secret, not whsk_/whpk_")

    def verify(
        self, body: bytes, headers: Mapping[str, str], *, now: float | None = None
    ) -> WebhookEvent:
        """Return the event of a genuine, fresh request; raise a VerificationError otherwise."""
        return self.verify_with_id(body, headers, now=now)[0]

    def verify_with_id(
        self, body: bytes, headers: Mapping[str, str], *, now: float | None = None
    ) -> tuple[WebhookEvent, str]:
        """Like :meth:`verify`, also returning the signed message id — the idempotency and replay
        key: ``webhook-id`` (standard) or the event's id (kmsg, whose id header is unsigned)."""
        now = time.time() if now is None else now
        kmsg = self._kmsg
        scheme = self._scheme or _detect(headers, kmsg.header)
        if scheme is SignatureScheme.STANDARD:
            msg_id = _required(headers, WEBHOOK_ID)
            ts = _required(headers, WEBHOOK_TIMESTAMP)
            signature = _required(headers, WEBHOOK_SIGNATURE)
            signed = f"{msg_id}.{ts}."
        else:
            msg_id = ""
            ts = _required(headers, KMSG_TIMESTAMP)
            signature = _required(headers, kmsg.header)
            signed = f"{ts}."
        if not (len(ts) <= 12 and ts.isascii() and ts.isdigit()):
            raise InvalidTimestampError("The timestamp header is not an integer of epoch seconds")
        if abs(now - int(ts)) > self._tolerance:
            too = "old" if int(ts) < now else "far in the future"
            raise InvalidTimestampError(
                f"The timestamp is too {too} (tolerance {self._tolerance}s)"
            )
        try:  # surrogateescape: header bytes a server decoded as UTF-8 come back unchanged
            content = signed.encode("utf-8", "surrogateescape") + body
        except UnicodeEncodeError:
            raise InvalidSignatureError("The message id header cannot be encoded") from None
        if not _matches(self._keys[scheme], scheme, content, signature, kmsg):
            raise InvalidSignatureError("No signature matches any of the secrets")
        try:
            event = WebhookEvent.from_json(body)
        except (InvalidEventError, ValueError, TypeError, RecursionError) as exc:
            detail = str(exc)[:200]
            raise InvalidPayloadError(
                f"The body is signed but is not a valid event: {detail}"
            ) from exc
        msg_id = msg_id or event.id
        if self._guard is not None:
            self._guard.check_and_remember(msg_id, now)
        return event, msg_id


def _standard_keys(secrets: list[str]) -> _Keys:
    macs: list[bytes] = []
    publics: list[Ed25519PublicKey] = []
    for key in map(decode_secret, secrets):
        if isinstance(key, bytes):
            macs.append(key)
        else:
            publics.append(key.public_key() if isinstance(key, Ed25519PrivateKey) else key)
    return _Keys(tuple(macs), tuple(publics))


def _kmsg_keys(secrets: list[str]) -> _Keys:
    """A k-msg receiver's key is its configured secret's UTF-8, whatever the prefix."""
    ed25519 = (PRIVATE_KEY_PREFIX, PUBLIC_KEY_PREFIX)
    return _Keys(tuple(s.encode() for s in secrets if not s.startswith(ed25519)))


def _detect(headers: Mapping[str, str], kmsg_header: str) -> SignatureScheme:
    if _header(headers, WEBHOOK_SIGNATURE) is not None:
        return SignatureScheme.STANDARD
    if _header(headers, kmsg_header) is not None:
        return SignatureScheme.KMSG
    raise MissingHeaderError(f"No webhook-signature (or k-msg {kmsg_header}) header")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup, plain dicts included; an empty value counts as absent."""
    value = headers.get(name)
    if value is None:
        name = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value or None


def _required(headers: Mapping[str, str], name: str) -> str:
    value = _header(headers, name)
    if value is None:
        raise MissingHeaderError(f"The {name} header is missing")
    return value


def _matches(
    keys: _Keys, scheme: SignatureScheme, content: bytes, header: str, kmsg: KmsgSignatureFormat
) -> bool:
    entries = header.split()
    if len(entries) > _MAX_SIGNATURES:
        raise InvalidSignatureError(f"The signature header has over {_MAX_SIGNATURES} entries")
    digest = kmsg.algorithm if scheme is SignatureScheme.KMSG else "sha256"
    macs = [hmac.new(key, content, digest).digest() for key in keys.hmac]
    for entry in entries:
        if scheme is SignatureScheme.KMSG:
            if entry.startswith(kmsg.prefix) and any(
                hmac.compare_digest(_unhex(entry[len(kmsg.prefix) :]), m) for m in macs
            ):
                return True
            continue
        version, _, value = entry.partition(",")  # unknown versions are skipped
        if version == "v1" and any(hmac.compare_digest(_unb64(value), m) for m in macs):
            return True
        if version == "v1a" and len(signature := _unb64(value)) == 64:
            for public in keys.ed25519:
                try:
                    public.verify(signature, content)
                    return True
                except InvalidSignature:
                    pass
    return False


def _unb64(value: str) -> bytes:
    try:
        return binascii.a2b_base64(value, strict_mode=True) if len(value) <= 128 else b""
    except (binascii.Error, ValueError):
        return b""


def _unhex(value: str) -> bytes:
    try:
        return bytes.fromhex(value) if len(value) <= 128 else b""
    except ValueError:
        return b""
