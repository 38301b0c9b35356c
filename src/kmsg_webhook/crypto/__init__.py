"""Field crypto: stored endpoint secrets, header values, payloads and phone numbers protected.

    from kmsg_webhook.crypto import FieldCryptoConfig, StaticKeyProvider

    config = FieldCryptoConfig(keys=StaticKeyProvider({"k1": key}, hash_key=hash_key))
    runtime = WebhookRuntimeService(persistence="sqlite:///hooks.db", field_crypto=config)

Modes per field (``plain``, ``encrypt``, ``encrypt+hash``, ``mask``), AES-256-GCM envelopes
bound to their row, key rotation with ``rekey``, fail closed. See ``docs/field-crypto.md``.
"""

from ..errors import DecryptionError, DecryptionFailure, FieldCryptoError
from ..stores.sealed import (
    CryptoDeliveryStore,
    CryptoEndpointStore,
    field_crypto_of,
    stored_view,
    with_field_crypto,
)
from .config import FailMode, FieldCryptoConfig, FieldMode
from .envelope import PREFIX as ENVELOPE_PREFIX
from .envelope import associated_data, is_sealed
from .fields import DELIVERIES, ENDPOINTS, FieldCrypto, redaction
from .keys import EnvKeyProvider, KeyProvider, StaticKeyProvider, generate_key
from .rekey import RekeyReport, rekey

__all__ = [
    "DELIVERIES",
    "ENDPOINTS",
    "ENVELOPE_PREFIX",
    "CryptoDeliveryStore",
    "CryptoEndpointStore",
    "DecryptionError",
    "DecryptionFailure",
    "EnvKeyProvider",
    "FailMode",
    "FieldCrypto",
    "FieldCryptoConfig",
    "FieldCryptoError",
    "FieldMode",
    "KeyProvider",
    "RekeyReport",
    "StaticKeyProvider",
    "associated_data",
    "field_crypto_of",
    "generate_key",
    "is_sealed",
    "redaction",
    "rekey",
    "stored_view",
    "with_field_crypto",
]
