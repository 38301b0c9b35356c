"""Where field-crypto keys come from: a provider answers "which key seals" and "key for kid".

The *active* key seals new values; every key the provider knows opens values sealed under it,
so keys rotate without downtime: add the new key, make it active, run ``kmsg-webhook rekey``,
then remove the old one. The hash key (HMAC-SHA256 for lookup hashes) is separate and is not
rotated by ``rekey`` alone (see ``docs/field-crypto.md``).
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from ..errors import ConfigError
from .envelope import KEY_BYTES, KID_PATTERN, unb64

KEYS_ENV = "KMSG_WEBHOOK_KEYS"
ACTIVE_KID_ENV = "KMSG_WEBHOOK_ACTIVE_KID"
HASH_KEY_ENV = "KMSG_WEBHOOK_HASH_KEY"
MIN_HASH_KEY_BYTES = 32


@runtime_checkable
class KeyProvider(Protocol):
    """Encryption keys by key id, the id of the one that seals, and the hash key."""

    @property
    def active_kid(self) -> str:
        """The key id new values are sealed under."""
        ...

    @property
    def hash_key(self) -> bytes | None:
        """The HMAC key of lookup hashes (``encrypt+hash``); ``None`` when there is none."""
        ...

    def key(self, kid: str) -> bytes | None:
        """The 32-byte AES key with this id, or ``None`` when unknown."""
        ...


def generate_key() -> str:
    """A new random 32-byte key as base64 (for ``KMSG_WEBHOOK_KEYS`` or a hash key)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _key_bytes(value: bytes | str, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return unb64(value.strip())
        except ValueError:
            raise ConfigError(f"{what} is not valid base64") from None
    raise ConfigError(f"{what} must be bytes or base64 text")


class StaticKeyProvider:
    """Keys given in code: ``StaticKeyProvider({"k2026": key}, active_kid="k2026", hash_key=hk)``.

    Keys are 32 raw bytes or their base64 (standard or url-safe, padding optional). With one
    key, ``active_kid`` may be omitted. ``hash_key`` (at least 32 bytes) is needed only for
    ``encrypt+hash`` fields. Keys never appear in ``repr`` or in error messages.
    """

    def __init__(
        self,
        keys: Mapping[str, bytes | str],
        *,
        active_kid: str | None = None,
        hash_key: bytes | str | None = None,
    ) -> None:
        if not isinstance(keys, Mapping) or not keys:
            raise ConfigError("field crypto needs at least one key")
        parsed: dict[str, bytes] = {}
        for kid, value in keys.items():
            if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
                raise ConfigError(f"invalid key id {kid!r}: 1-64 letters, digits, '.', '_' or '-'")
            key = _key_bytes(value, f"key {kid}")
            if len(key) != KEY_BYTES:
                raise ConfigError(f"key {kid} must be {KEY_BYTES} bytes (AES-256), not {len(key)}")
            parsed[kid] = key
        if active_kid is None:
            if len(parsed) != 1:
                raise ConfigError("active_kid is required when there is more than one key")
            active_kid = next(iter(parsed))
        if active_kid not in parsed:
            raise ConfigError(f"active key id {active_kid!r} is not among the keys")
        self._keys = parsed
        self._active = active_kid
        self._hash_key: bytes | None = None
        if hash_key is not None:
            hashed = _key_bytes(hash_key, "the hash key")
            if len(hashed) < MIN_HASH_KEY_BYTES:
                raise ConfigError(f"the hash key must be at least {MIN_HASH_KEY_BYTES} bytes")
            if hashed in parsed.values():
                raise ConfigError("the hash key must differ from every encryption key")
            self._hash_key = hashed

    @property
    def active_kid(self) -> str:
        return self._active

    @property
    def hash_key(self) -> bytes | None:
        return self._hash_key

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id this provider opens."""
        return tuple(self._keys)

    def key(self, kid: str) -> bytes | None:
        return self._keys.get(kid)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kids={list(self._keys)!r}, active_kid={self._active!r}, "
            f"hash_key={'set' if self._hash_key else None})"
        )


class EnvKeyProvider(StaticKeyProvider):
    """Keys from environment variables (what the CLI uses).

    * ``KMSG_WEBHOOK_KEYS``: ``kid:base64key`` pairs separated by commas, e.g.
      ``k2026a:3q2+7w...,k2025b:AAEC...``;
    * ``KMSG_WEBHOOK_ACTIVE_KID``: the key id that seals (default: the first listed);
    * ``KMSG_WEBHOOK_HASH_KEY``: base64 HMAC key for ``encrypt+hash`` fields (optional).
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        source = os.environ if env is None else env
        raw = source.get(KEYS_ENV, "").strip()
        if not raw:
            raise ConfigError(f"{KEYS_ENV} is not set (kid:base64key,kid:base64key,...)")
        keys: dict[str, str] = {}
        for item in raw.split(","):
            kid, sep, value = item.strip().partition(":")
            if not sep or not kid.strip() or not value.strip():
                raise ConfigError(f"{KEYS_ENV}: every entry must be kid:base64key")
            if kid.strip() in keys:
                raise ConfigError(f"{KEYS_ENV}: key id {kid.strip()!r} is listed twice")
            keys[kid.strip()] = value.strip()
        active = source.get(ACTIVE_KID_ENV, "").strip() or next(iter(keys))
        hash_key = source.get(HASH_KEY_ENV, "").strip() or None
        super().__init__(keys, active_kid=active, hash_key=hash_key)
