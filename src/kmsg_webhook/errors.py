"""Every exception kmsg-webhook raises, rooted in :class:`WebhookError`."""

from __future__ import annotations

from enum import StrEnum


class WebhookError(Exception):
    """Base class of all kmsg-webhook errors."""


class ConfigError(WebhookError, ValueError):
    """A configuration value is invalid (raised when the config object is built)."""


class InvalidEventError(WebhookError, ValueError):
    """An event is missing a required field or has a malformed one."""


class PayloadTooLargeError(InvalidEventError):
    """An event's JSON body is larger than ``WebhookConfig.max_payload_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"Event body is {size} bytes, over the limit of {limit} bytes "
            "(WebhookConfig.max_payload_bytes)"
        )
        self.size = size
        self.limit = limit


class InvalidBatchError(InvalidEventError):
    """One event of an :meth:`~kmsg_webhook.WebhookRuntimeService.emit_many` call is invalid;
    nothing of the call was stored. ``index`` is its position, ``event_id`` its id, and the
    event's own error is the ``__cause__``."""

    def __init__(self, index: int, event_id: str, error: InvalidEventError) -> None:
        super().__init__(f"events[{index}] (id {event_id!r}): {error}; nothing was stored")
        self.index = index
        self.event_id = event_id


class InvalidArgumentError(WebhookError, TypeError):
    """A public call got an argument of the wrong type (an ``emit`` of a dict, a store of 5)."""


class UnknownEventTypeError(InvalidEventError):
    """An event type string is not one of :class:`~kmsg_webhook.events.WebhookEventType`."""

    def __init__(self, value: object) -> None:
        super().__init__(f"Unknown event type: {value!r}")
        self.value = value


class EndpointUrlError(WebhookError, ValueError):
    """An endpoint URL is not allowed (not https, private host, malformed, ...).

    ``reason`` is a short machine-readable code; the message explains it to a person.
    """

    def __init__(self, message: str, *, reason: str, url: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.url = url


class InvalidEndpointError(WebhookError, ValueError):
    """An endpoint definition is invalid (no events, bad retry config, bad header, ...)."""


class EndpointNotFoundError(WebhookError, LookupError):
    """No endpoint has the given id."""

    def __init__(self, endpoint_id: str) -> None:
        super().__init__(f"Webhook endpoint {endpoint_id} not found")
        self.endpoint_id = endpoint_id


class DuplicateEndpointError(WebhookError, ValueError):
    """Another endpoint already uses this id or URL (the original silently replaced it)."""

    def __init__(self, message: str, *, field: str, value: str) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class DeliveryNotFoundError(WebhookError, LookupError):
    """No delivery has the given id."""

    def __init__(self, delivery_id: str) -> None:
        super().__init__(f"Webhook delivery {delivery_id} not found")
        self.delivery_id = delivery_id


class SigningError(WebhookError):
    """A payload cannot be signed (signing is on but the endpoint has no usable secret, ...)."""


class InvalidSecretError(SigningError, ValueError):
    """A secret or key is not in a recognised form (``whsec_``, ``whsk_``, ``whpk_``, raw text)."""


class VerificationError(WebhookError):
    """A received webhook failed verification. Subclasses say why."""

    reason = "verification_failed"


class MissingHeaderError(VerificationError):
    """A header the scheme needs is absent."""

    reason = "missing_header"


class InvalidTimestampError(VerificationError):
    """The timestamp header is malformed or outside the tolerance window."""

    reason = "invalid_timestamp"


class InvalidSignatureError(VerificationError):
    """No signature in the request matches any of the given secrets."""

    reason = "invalid_signature"


class ReplayedMessageError(VerificationError):
    """The message id was already seen within the replay window."""

    reason = "replayed"


class InvalidPayloadError(VerificationError):
    """The body is signed correctly but is not a valid event."""

    reason = "invalid_payload"


class StoreError(WebhookError):
    """A persistence backend failed (connection lost, constraint broken, ...)."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached or opened: unreachable after retrying, or a SQLite file that
    does not exist (the CLI creates one only for ``migrate`` or with ``--create``)."""


class IncompleteStoreError(ConfigError, TypeError):
    """A store object lacks methods of the persistence protocol; ``missing`` names them."""

    def __init__(self, role: str, store: object, missing: tuple[str, ...]) -> None:
        protocol = "EndpointStore" if role == "endpoint_store" else "DeliveryStore"
        super().__init__(
            f"{role} {type(store).__name__} lacks {', '.join(missing)}: a store implements every "
            f"method of kmsg_webhook.stores.protocol.{protocol} (the conformance suite checks them)"
        )
        self.role = role
        self.missing = missing


class UnsafeOperationError(WebhookError):
    """An operation was refused because it would be unsafe as asked: a store holding sealed
    values opened without their keys, a demo on a store in use, a purge not confirmed."""


class EmitTimeoutError(StoreError):
    """An ``emit`` was not stored within ``WebhookConfig.emit_timeout_ms``.

    The event may or may not have been stored. Emit it again with the same event id: a
    re-emit stores nothing twice (deliveries are unique per endpoint and event id).
    """


class RuntimeClosedError(WebhookError, RuntimeError):
    """The runtime was shut down; it accepts no more work."""


class FlushTimeoutError(WebhookError, TimeoutError):
    """``flush(timeout=...)`` ran out of time; what it did not send stays queued in the store."""


class IntakeFullError(WebhookError):
    """The bounded intake buffer is full and the caller asked not to wait."""


class FieldCryptoError(WebhookError):
    """Field crypto failed for one stored value. Messages never contain plaintext or keys."""


class MissingKeysError(FieldCryptoError, UnsafeOperationError):
    """The store holds sealed values and no keys were given to open them: a dispatching runtime
    refuses to start rather than fail every delivery it would claim."""


class DecryptionFailure(StrEnum):
    """Why a stored value could not be opened."""

    #: Not an envelope this code can parse (truncated, bad base64, unknown version/algorithm).
    MALFORMED = "malformed"
    #: Sealed under a key id the key provider does not know (removed too early, wrong env).
    UNKNOWN_KID = "unknown_kid"
    #: Sealed for another row, column, table or tenant (a ciphertext moved between rows).
    WRONG_AAD = "wrong_aad"
    #: The authentication tag does not match: the ciphertext, nonce or tag was altered.
    TAMPERED = "tampered"
    #: Plaintext where an envelope is required (``accept_plaintext=False``).
    PLAINTEXT = "plaintext"


class DecryptionError(FieldCryptoError):
    """A stored value cannot be decrypted; ``kind`` says why, the rest says where.

    Raised for that one record only: listings report it next to the rows that could be read,
    and the dispatcher settles the delivery ``failed`` with this message as the reason.
    """

    def __init__(
        self,
        kind: DecryptionFailure,
        *,
        table: str,
        column: str,
        record_id: str,
        kid: str | None = None,
        detail: str | None = None,
    ) -> None:
        where = f"{table}.{column} of {record_id}"
        key = f" (key id {kid})" if kid else ""
        extra = f": {detail}" if detail else ""
        super().__init__(f"cannot decrypt {where}{key}: {kind.value}{extra}")
        self.kind = kind
        self.table = table
        self.column = column
        self.record_id = record_id
        self.kid = kid


class ConsoleError(WebhookError, ValueError):
    """The operator console cannot start as configured, or a request gave invalid input."""
