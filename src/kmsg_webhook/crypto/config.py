"""What field crypto protects, how, and what a failure does (validated when built)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from ..errors import ConfigError
from .envelope import KEY_BYTES, KID_PATTERN
from .keys import KEYS_ENV, EnvKeyProvider, KeyProvider

MODES_ENV = "KMSG_WEBHOOK_FIELD_MODES"
FAIL_MODE_ENV = "KMSG_WEBHOOK_FAIL_MODE"
TENANT_ENV = "KMSG_WEBHOOK_TENANT_ID"
ACCEPT_PLAINTEXT_ENV = "KMSG_WEBHOOK_ACCEPT_PLAINTEXT"


class FieldMode(StrEnum):
    """How one field is stored."""

    #: As it is.
    PLAIN = "plain"
    #: AES-256-GCM envelope; opened with any known key.
    ENCRYPT = "encrypt"
    #: Encrypted, plus a keyed HMAC-SHA256 hash in a lookup column (``to``/``from`` only).
    ENCRYPT_HASH = "encrypt+hash"
    #: Only a masked form (``010-****-5678``) is kept: sent and stored (``to``/``from`` only).
    MASK = "mask"


class FailMode(StrEnum):
    """What a *read* (get, list) returns for a value that cannot be decrypted.

    ``closed``: a typed :class:`~kmsg_webhook.errors.DecryptionError` for that record (listings
    name it and return the rest). ``open``: the record, with the value replaced by a redaction
    marker. The dispatcher fails closed in both modes: it never sends or signs with anything
    it could not decrypt.
    """

    CLOSED = "closed"
    OPEN = "open"


#: Modes each field accepts, and why the others make no sense.
_ALLOWED: dict[str, tuple[frozenset[FieldMode], str]] = {
    "secret": (
        frozenset({FieldMode.PLAIN, FieldMode.ENCRYPT}),
        "the dispatcher needs the secret itself to sign, and nothing looks secrets up",
    ),
    "headers": (
        frozenset({FieldMode.PLAIN, FieldMode.ENCRYPT}),
        "header values are sent as stored, and nothing looks them up",
    ),
    "payload": (
        frozenset({FieldMode.PLAIN, FieldMode.ENCRYPT}),
        "the payload is the exact signed body; mask or hash the to/from fields instead",
    ),
    "to": (frozenset(FieldMode), ""),
    "from_": (frozenset(FieldMode), ""),
}


def _mode(name: str, value: FieldMode | str) -> FieldMode:
    try:
        mode = FieldMode(value)
    except ValueError:
        choices = ", ".join(m.value for m in FieldMode)
        raise ConfigError(f"unknown field mode {value!r} for {name} ({choices})") from None
    allowed, why = _ALLOWED[name]
    if mode not in allowed:
        raise ConfigError(f"{name.rstrip('_')} cannot be {mode.value!r}: {why}")
    return mode


@dataclass(frozen=True, slots=True)
class FieldCryptoConfig:
    """Per-field modes, the keys, and the failure policy. The defaults are the secure ones.

    * ``secret``: the endpoint's signing secret and its retired secrets (``plain``/``encrypt``);
    * ``headers``: endpoint custom header values, which often carry credentials (names stay
      readable);
    * ``payload``: the delivery body, encrypted whole (the exact signed bytes come back);
    * ``to``/``from_``: the recipient and sender numbers inside a payload's ``data``.
      ``mask``: the body is built with the masked number (sent and stored masked).
      ``encrypt``: the number stays in the body, which must then be encrypted.
      ``encrypt+hash``: as ``encrypt``, plus a keyed hash in ``to_hash``/``from_hash`` for
      lookups (needs ``keys.hash_key``).

    ``accept_plaintext``: values written before crypto was on are read as they are (legacy);
    set it to false once ``rekey`` has converted them, so no plaintext is ever trusted again.
    ``tenant_id`` goes into every value's associated data.
    """

    keys: KeyProvider
    secret: FieldMode = FieldMode.ENCRYPT
    headers: FieldMode = FieldMode.ENCRYPT
    payload: FieldMode = FieldMode.ENCRYPT
    to: FieldMode = FieldMode.ENCRYPT_HASH
    from_: FieldMode = FieldMode.ENCRYPT_HASH
    fail_mode: FailMode = FailMode.CLOSED
    accept_plaintext: bool = True
    tenant_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.keys, KeyProvider):
            raise ConfigError("keys must be a KeyProvider (StaticKeyProvider, EnvKeyProvider)")
        active = self.keys.active_kid
        if not isinstance(active, str) or not KID_PATTERN.fullmatch(active):
            raise ConfigError(f"invalid active key id {active!r}")
        key = self.keys.key(active)
        if key is None or len(key) != KEY_BYTES:
            raise ConfigError(f"the active key {active!r} must be {KEY_BYTES} bytes")
        for name in _ALLOWED:
            object.__setattr__(self, name, _mode(name, getattr(self, name)))
        try:
            object.__setattr__(self, "fail_mode", FailMode(self.fail_mode))
        except ValueError:
            raise ConfigError(f"fail_mode must be closed or open, not {self.fail_mode!r}") from None
        for name, label in (("to", "to"), ("from_", "from")):
            mode = getattr(self, name)
            sealed = mode in (FieldMode.ENCRYPT, FieldMode.ENCRYPT_HASH)
            if sealed and self.payload is not FieldMode.ENCRYPT:
                raise ConfigError(
                    f"{label}={mode.value!r} needs payload='encrypt': the number travels inside "
                    "the payload (or use mask/plain)"
                )
            if mode is FieldMode.ENCRYPT_HASH and self.keys.hash_key is None:
                raise ConfigError(
                    f"{label}='encrypt+hash' needs a hash key (hash_key=, or "
                    "KMSG_WEBHOOK_HASH_KEY); or choose 'encrypt'"
                )
        if self.tenant_id is not None and not isinstance(self.tenant_id, str):
            raise ConfigError("tenant_id must be a string")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FieldCryptoConfig | None:
        """The configuration the environment describes, or ``None`` without ``KMSG_WEBHOOK_KEYS``.

        Keys: see :class:`~kmsg_webhook.crypto.keys.EnvKeyProvider`. Optional:
        ``KMSG_WEBHOOK_FIELD_MODES`` (``payload=encrypt,to=mask,...``; fields ``secret``,
        ``headers``, ``payload``, ``to``, ``from``), ``KMSG_WEBHOOK_FAIL_MODE``
        (``closed``/``open``), ``KMSG_WEBHOOK_TENANT_ID``, ``KMSG_WEBHOOK_ACCEPT_PLAINTEXT``
        (``true``/``false``).
        """
        source = os.environ if env is None else env
        if not source.get(KEYS_ENV, "").strip():
            return None
        modes: dict[str, str] = {}
        for item in source.get(MODES_ENV, "").split(","):
            if not item.strip():
                continue
            name, sep, value = item.strip().partition("=")
            field = {"from": "from_"}.get(name.strip(), name.strip())
            if not sep or field not in _ALLOWED:
                raise ConfigError(
                    f"{MODES_ENV}: expected field=mode with field secret, headers, payload, "
                    f"to or from; got {item.strip()!r}"
                )
            modes[field] = value.strip()
        accept = source.get(ACCEPT_PLAINTEXT_ENV, "true").strip().lower()
        if accept not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{ACCEPT_PLAINTEXT_ENV} must be true or false")
        return cls(
            keys=EnvKeyProvider(source),
            fail_mode=source.get(FAIL_MODE_ENV, "closed").strip() or "closed",  # type: ignore[arg-type]
            accept_plaintext=accept in ("true", "1", "yes"),
            tenant_id=source.get(TENANT_ENV, "").strip() or None,
            **modes,  # type: ignore[arg-type]
        )
