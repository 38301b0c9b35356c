"""The envelope a sealed value is stored in: AES-256-GCM, versioned, one line of text.

::

    kmsg:enc:v1:A256GCM:<kid>:<aad check>:<nonce>:<tag>:<ciphertext>

Every part after the algorithm is base64url without padding except ``kid`` (letters, digits,
``.``, ``_``, ``-``; at most 64). ``nonce`` is 12 random bytes, ``tag`` the 16-byte GCM tag,
``ciphertext`` the UTF-8 plaintext encrypted (as long as the plaintext). The associated data
(AAD, :func:`associated_data`) is not stored; ``aad check`` is the first 6 bytes of its SHA-256,
so a ciphertext moved to another row is reported as such rather than as tampering. Text that
does not start with ``kmsg:enc:`` is not an envelope (legacy plaintext).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from json.encoder import encode_basestring as _json_string

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "kmsg:enc:"
VERSION = "v1"
ALGORITHM = "A256GCM"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
AAD_CHECK_BYTES = 6
#: Key ids: safe inside the envelope (no ``:``) and in environment variables.
KID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
_AAD_DOMAIN = "kmsg-webhook/field/v1"
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_HEAD = f"{PREFIX}{VERSION}:{ALGORITHM}:"
_B64 = "[A-Za-z0-9_-]"
#: A well-formed v1 envelope (kid, aad check, nonce, tag, ciphertext), checked in one pass.
_WELL_FORMED = re.compile(
    re.escape(_HEAD)
    + rf"([A-Za-z0-9._-]{{1,64}}):({_B64}{{8}}):({_B64}{{16}}):({_B64}{{22}}):({_B64}*)"
)


class EnvelopeFormatError(ValueError):
    """Text that starts like an envelope but is not a valid one (says what is wrong)."""


def is_sealed(value: str) -> bool:
    """Whether ``value`` is an envelope (anything else is plaintext)."""
    return value.startswith(PREFIX)


def b64(data: bytes) -> str:
    """base64url without padding (``base64.urlsafe_b64encode``, minus two call layers: this
    runs four times per sealed value)."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    """base64url, padding optional, *not* validated (see :func:`split_sealed`)."""
    padded = text + "=" * (-len(text) % 4)
    return binascii.a2b_base64(padded.encode("ascii").translate(_FROM_URLSAFE))


def unb64(text: str) -> bytes:
    """base64url (or standard base64), padding optional; anything else is a ValueError."""
    normal = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(normal + "=" * (-len(normal) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None


def associated_data(*, tenant: str | None, table: str, column: str, record_id: str) -> bytes:
    """The AAD binding a value to its place: compact JSON of a fixed-order array, UTF-8.

    ``["kmsg-webhook/field/v1", <tenant or "">, <table>, <column>, <record id>]``. ``table`` is
    the logical name (``endpoints``/``deliveries``), not the configured table name, so rows keep
    opening after a table is renamed or a database is moved between backends.
    """
    return aad_prefix(tenant, table, column) + aad_tail(record_id)


@lru_cache(maxsize=256)
def aad_prefix(tenant: str | None, table: str, column: str) -> bytes:
    """The AAD up to the record id (the same for every row of a column)."""
    parts = [_AAD_DOMAIN, tenant or "", table, column]
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":"))[:-1].encode() + b","


def aad_tail(record_id: str) -> bytes:
    # What json.dumps(..., ensure_ascii=False) writes for a string, and the closing bracket.
    return (_json_string(record_id) + "]").encode("utf-8")


def aad_check(aad: bytes) -> bytes:
    return hashlib.sha256(aad).digest()[:AAD_CHECK_BYTES]


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope (nothing in it is secret without the key)."""

    kid: str
    aad_check: bytes
    nonce: bytes
    tag: bytes
    ciphertext: bytes

    def to_text(self) -> str:
        return ":".join(
            (
                PREFIX + VERSION,
                ALGORITHM,
                self.kid,
                b64(self.aad_check),
                b64(self.nonce),
                b64(self.tag),
                b64(self.ciphertext),
            )
        )

    @classmethod
    def parse(cls, text: str) -> Envelope:
        """The envelope in ``text``; :class:`EnvelopeFormatError` says what is wrong."""
        match = _WELL_FORMED.fullmatch(text)
        if match is not None and len(match[5]) % 4 != 1:  # the common case, in one pass
            kid, check, nonce, tag, ciphertext = match.groups()
            decode = base64.urlsafe_b64decode
            return cls(
                kid,
                decode(check),
                decode(nonce),
                decode(tag + "=="),
                decode(ciphertext + "=" * (-len(ciphertext) % 4)),
            )
        if not is_sealed(text):
            raise EnvelopeFormatError("not an envelope")
        parts = text[len(PREFIX) :].split(":")
        if len(parts) != 7:
            raise EnvelopeFormatError(f"expected 7 fields after the prefix, found {len(parts)}")
        version, algorithm, kid, check, nonce, tag, ciphertext = parts
        if version != VERSION:
            raise EnvelopeFormatError(f"unsupported envelope version {version[:8]!r}")
        if algorithm != ALGORITHM:
            raise EnvelopeFormatError(f"unsupported algorithm {algorithm[:16]!r}")
        if not KID_PATTERN.fullmatch(kid):
            raise EnvelopeFormatError("invalid key id")
        try:
            envelope = cls(kid, unb64(check), unb64(nonce), unb64(tag), unb64(ciphertext))
        except ValueError as exc:
            raise EnvelopeFormatError(str(exc)) from None
        sizes = (len(envelope.aad_check), len(envelope.nonce), len(envelope.tag))
        if sizes != (AAD_CHECK_BYTES, NONCE_BYTES, TAG_BYTES):
            raise EnvelopeFormatError("wrong field length")
        return envelope


def split_sealed(text: str) -> tuple[str, str, bytes, bytes, bytes] | None:
    """``(kid, aad check, nonce, tag, ciphertext)`` of what looks like a v1 envelope, without
    validating it (``None`` if it does not look like one). Decryption is the check; on failure
    :meth:`Envelope.parse` says what is wrong."""
    parts = text.split(":")
    if len(parts) != 9 or parts[2] != VERSION or parts[3] != ALGORITHM:
        return None
    try:
        nonce, tag, ciphertext = _decode(parts[6]), _decode(parts[7]), _decode(parts[8])
    except ValueError:  # binascii.Error, or non-ASCII text
        return None
    if len(nonce) != NONCE_BYTES or len(tag) != TAG_BYTES:
        return None
    return parts[4], parts[5], nonce, tag, ciphertext


def seal(cipher: AESGCM, kid: str, plaintext: str, aad: bytes) -> str:
    """Encrypt ``plaintext`` under ``cipher`` (the key ``kid``) with a fresh random nonce."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = cipher.encrypt(nonce, plaintext.encode("utf-8"), aad)
    # Envelope(...).to_text(), written out: this runs for every stored payload.
    return (
        f"{_HEAD}{kid}:{b64(aad_check(aad))}:{b64(nonce)}:"
        f"{b64(sealed[-TAG_BYTES:])}:{b64(sealed[:-TAG_BYTES])}"
    )


def unseal(cipher: AESGCM, envelope: Envelope, aad: bytes) -> str:
    """Decrypt; raises :class:`cryptography.exceptions.InvalidTag` when not authentic."""
    plain = cipher.decrypt(envelope.nonce, envelope.ciphertext + envelope.tag, aad)
    return plain.decode("utf-8")
