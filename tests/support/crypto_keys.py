"""Fixed field-crypto keys and configurations for the tests (never use these anywhere else)."""

from __future__ import annotations

import base64
from typing import Any

from kmsg_webhook.crypto import FieldCrypto, FieldCryptoConfig, StaticKeyProvider

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
KEY_C = bytes(range(200, 232))
HASH_KEY = b"h" * 32
#: Key ``kA`` (active) and the hash key, as the commands read them from the environment.
KEYS_ENV = {
    "KMSG_WEBHOOK_KEYS": f"kA:{base64.b64encode(KEY_A).decode()}",
    "KMSG_WEBHOOK_ACTIVE_KID": "kA",
    "KMSG_WEBHOOK_HASH_KEY": base64.b64encode(HASH_KEY).decode(),
}


def keys(*kids: str, active: str | None = None) -> StaticKeyProvider:
    """A provider with the named keys among ``A``, ``B``, ``C`` (ids ``kA``, ``kB``, ``kC``)."""
    known = {"A": KEY_A, "B": KEY_B, "C": KEY_C}
    return StaticKeyProvider(
        {f"k{kid}": known[kid] for kid in kids},
        active_kid=f"k{active or kids[0]}",
        hash_key=HASH_KEY,
    )


def config(*kids: str, active: str | None = None, **options: Any) -> FieldCryptoConfig:
    return FieldCryptoConfig(keys=keys(*(kids or ("A",)), active=active), **options)


def conformance_crypto() -> FieldCrypto:
    """What the ``<backend>+crypto`` conformance backends apply: everything sealed."""
    return FieldCrypto(config("A"))
