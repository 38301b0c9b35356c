"""kmsg-webhook: webhooks you can trust.

A durable outbox (deliveries are stored before any send), a signing batched dispatcher with
retries scheduled in the store, a private-host URL guard, and receiver-side verification.
"""

from .clock import Clock, ManualClock, SystemClock
from .config import HealthPolicy, WebhookConfig
from .errors import (
    ConfigError,
    DeliveryNotFoundError,
    DuplicateEndpointError,
    EndpointNotFoundError,
    EndpointUrlError,
    IntakeFullError,
    InvalidEndpointError,
    InvalidEventError,
    InvalidPayloadError,
    InvalidSecretError,
    InvalidSignatureError,
    InvalidTimestampError,
    MissingHeaderError,
    ReplayedMessageError,
    RuntimeClosedError,
    SigningError,
    StoreError,
    UnknownEventTypeError,
    VerificationError,
    WebhookError,
)
from .events import EventMetadata, WebhookEvent, WebhookEventType
from .memory import create_in_memory_persistence
from .models import (
    AttemptOutcome,
    DeliveryFilter,
    DeliveryPage,
    DeliveryStats,
    DeliveryStatus,
    EndpointFilters,
    EndpointInput,
    EndpointStatus,
    ProbeResult,
    RetiredSecret,
    RetryConfig,
    RuntimeStats,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from .runtime import WebhookRuntimeService, add_endpoints, probe_endpoint
from .sender import SecurityOptions
from .signing import SignatureScheme, Signer, generate_secret, generate_signing_keypair
from .store import DeliveryStore, EndpointStore, WebhookPersistence
from .urlguard import GuardedResolver, StaticResolver, validate_endpoint_url
from .verify import ReplayGuard, verify

__all__ = [
    "AttemptOutcome",
    "Clock",
    "ConfigError",
    "DeliveryFilter",
    "DeliveryNotFoundError",
    "DeliveryPage",
    "DeliveryStats",
    "DeliveryStatus",
    "DeliveryStore",
    "DuplicateEndpointError",
    "EndpointFilters",
    "EndpointInput",
    "EndpointNotFoundError",
    "EndpointStatus",
    "EndpointStore",
    "EndpointUrlError",
    "EventMetadata",
    "GuardedResolver",
    "HealthPolicy",
    "IntakeFullError",
    "InvalidEndpointError",
    "InvalidEventError",
    "InvalidPayloadError",
    "InvalidSecretError",
    "InvalidSignatureError",
    "InvalidTimestampError",
    "ManualClock",
    "MissingHeaderError",
    "ProbeResult",
    "ReplayGuard",
    "ReplayedMessageError",
    "RetiredSecret",
    "RetryConfig",
    "RuntimeClosedError",
    "RuntimeStats",
    "SecurityOptions",
    "SignatureScheme",
    "Signer",
    "SigningError",
    "StaticResolver",
    "StoreError",
    "SystemClock",
    "UnknownEventTypeError",
    "VerificationError",
    "WebhookAttempt",
    "WebhookConfig",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookError",
    "WebhookEvent",
    "WebhookEventType",
    "WebhookPersistence",
    "WebhookRuntimeService",
    "add_endpoints",
    "create_in_memory_persistence",
    "generate_secret",
    "generate_signing_keypair",
    "probe_endpoint",
    "validate_endpoint_url",
    "verify",
]
