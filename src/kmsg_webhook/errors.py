"""Every exception kmsg-webhook raises, rooted in :class:`WebhookError`."""

from __future__ import annotations


class WebhookError(Exception):
    """Base class of all kmsg-webhook errors."""


class ConfigError(WebhookError, ValueError):
    """A configuration value is invalid (raised when the config object is built)."""


class InvalidEventError(WebhookError, ValueError):
    """An event is missing a required field or has a malformed one."""


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


class RuntimeClosedError(WebhookError, RuntimeError):
    """The runtime was shut down; it accepts no more work."""


class IntakeFullError(WebhookError):
    """The bounded intake buffer is full and the caller asked not to wait."""
