"""Runtime configuration, validated when built (a bad value fails here, not later)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from yarl import URL

from .errors import ConfigError
from .events import WebhookEventType
from .operational import OperationalWebhook
from .signing import DEFAULT_KMSG_SIGNATURE, KmsgSignatureFormat, SignatureScheme
from .tls import TLSSetting, trust_context
from .urlguard import (
    IPNetwork,
    parse_allowed_host,
    parse_allowed_network,
    validate_endpoint_url,
)


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{name} must be zero or more, got {value!r}")


@dataclass(frozen=True, slots=True)
class SecurityOptions:
    """Endpoint URL policy, applied when an endpoint is saved, before every send and to every
    DNS answer at connect time.

    ``allow_private_hosts`` admits every private address and local name. The allow-list admits
    only what it names: ``allowed_networks`` (CIDR strings such as ``"10.0.0.0/8"``, CLI
    ``--allow-network``) and ``allowed_hosts`` (names, ``"*.svc.cluster.local"`` for any name
    below; CLI ``--allow-host``). A listed name only skips the local-name check: what it
    resolves to must still be public or inside ``allowed_networks``. http is accepted only for
    localhost names and addresses when private hosts are allowed, and for listed names and
    listed private addresses (see :mod:`kmsg_webhook.urlguard`).
    """

    allow_private_hosts: bool = False
    allow_http_for_localhost: bool = True
    #: Normalised to a tuple of ``ipaddress`` networks; an invalid entry is a ConfigError.
    allowed_networks: Sequence[IPNetwork | str] = ()
    #: Normalised to a tuple of lower-case names.
    allowed_hosts: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name, parse in (
            ("allowed_networks", parse_allowed_network),
            ("allowed_hosts", parse_allowed_host),
        ):
            values = getattr(self, name)
            if isinstance(values, str):
                raise ConfigError(f"{name} must be a list, not a str")
            try:
                object.__setattr__(self, name, tuple(map(parse, values)))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None

    def check(self, url: str) -> URL:
        """``url`` parsed if this policy admits it, else :class:`EndpointUrlError`."""
        return validate_endpoint_url(
            url,
            allow_private_hosts=self.allow_private_hosts,
            allow_http_for_localhost=self.allow_http_for_localhost,
            allowed_networks=self.allowed_networks,
            allowed_hosts=self.allowed_hosts,
        )

    def describe(self) -> str:
        """The policy in one line (worker start lines and refusal reports)."""
        if self.allow_private_hosts:
            return "private hosts allowed"
        listed = [*map(str, self.allowed_networks), *self.allowed_hosts]
        return "public hosts" + (f" and {', '.join(listed)}" if listed else " only")


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """When the dispatcher disables a failing endpoint (status ``error`` with a reason).

    An endpoint is disabled after ``max_consecutive_failures`` deliveries in a row ended failed
    or exhausted, or when it has had no success for ``max_failing_ms`` since its first failure.
    ``None`` turns a rule off. A success resets both. A ``410 Gone`` always disables.
    """

    max_consecutive_failures: int | None = 20
    max_failing_ms: int | None = 5 * 24 * 3600 * 1000

    def __post_init__(self) -> None:
        if self.max_consecutive_failures is not None:
            _positive("health.max_consecutive_failures", self.max_consecutive_failures)
        if self.max_failing_ms is not None:
            _positive("health.max_failing_ms", self.max_failing_ms)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished deliveries are kept, by final status, counted from their creation
    (``None``: kept until purged by hand). Pending deliveries are never deleted.

    The runtime (and so every worker) deletes what the policy lets go every ``interval_ms``,
    ``batch_size`` rows per store call. The in-memory store is bounded besides, whatever the
    per-status ages say: it keeps finished deliveries at most ``memory_max_age`` and at most
    ``memory_max_rows`` rows in all (the oldest finished ones go first).
    """

    success: timedelta | None = None
    failed: timedelta | None = None
    exhausted: timedelta | None = None
    memory_max_rows: int | None = 100_000
    memory_max_age: timedelta | None = timedelta(hours=1)
    interval_ms: int = 10_000
    batch_size: int = 100

    def __post_init__(self) -> None:
        for name in ("success", "failed", "exhausted", "memory_max_age"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, timedelta) or value <= timedelta()):
                raise ConfigError(f"retention.{name} must be a positive timedelta or None")
        if self.memory_max_rows is not None:
            _positive("retention.memory_max_rows", self.memory_max_rows)
        _positive("retention.interval_ms", self.interval_ms)
        _positive("retention.batch_size", self.batch_size)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Delivery settings. Field names and defaults follow the original's ``WebhookConfig``.

    Retries: ``max_retries`` retries after the first attempt; the wait before retry *n* is
    ``retry_delay_ms * backoff_multiplier**(n-1)``, capped at ``max_delay_ms``, and with
    ``jitter`` scaled by a random factor in [0.5, 1]. A ``Retry-After`` answer lengthens the wait
    (never beyond ``max_delay_ms``).

    Intake: concurrent ``emit`` calls are written in one store call of up to ``batch_size``
    events; a batch waits at most ``batch_timeout_ms`` for company, and not at all when the
    writer is idle. At most ``intake_queue_size`` events wait; further emits wait for room.
    No emit waits longer than ``emit_timeout_ms``.

    History: ``retention`` says how long finished deliveries are kept (see
    :class:`RetentionPolicy`); the in-memory store is bounded by default.
    """

    max_retries: int = 3
    retry_delay_ms: int = 1_000
    max_delay_ms: int = 300_000
    backoff_multiplier: float = 2.0
    jitter: bool = True
    timeout_ms: int = 30_000
    enable_security: bool = True
    #: Fallback signing secret for endpoints that have none.
    secret_key: str | None = field(default=None, repr=False)
    signature_scheme: SignatureScheme = SignatureScheme.STANDARD
    #: The ``KMSG`` scheme's signature header name and prefix (sha256 only when sending).
    kmsg_signature: KmsgSignatureFormat = DEFAULT_KMSG_SIGNATURE
    enabled_events: frozenset[WebhookEventType] = frozenset(WebhookEventType)
    batch_size: int = 10
    batch_timeout_ms: int = 5_000
    intake_queue_size: int = 10_000
    #: Deliveries claimed per store round trip.
    claim_batch_size: int = 100
    #: How long a claim is owned; an expired lease is claimable by any worker.
    lease_ms: int | None = None
    #: Idle poll interval of the dispatcher (in-process emits wake it at once).
    poll_interval_ms: int = 500
    #: Attempts in flight at once. Each is a coroutine waiting on a socket, so this is sized
    #: for I/O: endpoints that time out hold one slot each (see :mod:`kmsg_webhook.pacing`).
    max_concurrency: int = 256
    #: The most attempts in flight to one endpoint; it starts at 1 and grows while the
    #: endpoint answers fast.
    max_concurrency_per_endpoint: int = 10
    max_response_body_bytes: int = 4_096
    #: Largest event body (its JSON, in UTF-8 bytes) ``emit`` accepts; a larger event raises
    #: :class:`~kmsg_webhook.errors.PayloadTooLargeError` and nothing is stored. The default
    #: equals the receiver middleware's ``max_body_bytes``.
    max_payload_bytes: int = 1_048_576
    #: How long the runtime trusts its cached endpoint list (changes made through this runtime
    #: apply at once; changes made by another process within this many milliseconds).
    endpoint_cache_ttl_ms: int = 1_000
    user_agent: str = "kmsg-webhook/0.1"
    health: HealthPolicy = field(default_factory=HealthPolicy)
    #: Where to send signed operational messages (endpoint disabled/enabled/recovered,
    #: delivery exhausted); see :mod:`kmsg_webhook.operational`.
    operational_webhook: OperationalWebhook | None = None
    #: Which servers to trust over https: an ``ssl.SSLContext``, or the path of a CA bundle
    #: in PEM trusted instead of the system's (a private CA, or a pinned self-signed
    #: certificate). ``None``: the system's CAs. Verification cannot be turned off.
    ssl: TLSSetting = None
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    #: The longest an ``emit`` waits for its event to be stored before it raises
    #: :class:`~kmsg_webhook.errors.EmitTimeoutError`; ``None``: the store's retry limit
    #: (``retry_timeout``, 30 s by default) plus five seconds.
    emit_timeout_ms: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ConfigError(f"max_retries must be an integer, got {self.max_retries!r}")
        _non_negative("max_retries", self.max_retries)
        _non_negative("retry_delay_ms", self.retry_delay_ms)
        _non_negative("max_delay_ms", self.max_delay_ms)
        if self.max_delay_ms < self.retry_delay_ms:
            raise ConfigError("max_delay_ms must be >= retry_delay_ms")
        if not isinstance(self.backoff_multiplier, int | float) or self.backoff_multiplier < 1:
            raise ConfigError(f"backoff_multiplier must be >= 1, got {self.backoff_multiplier!r}")
        for name in (
            "timeout_ms",
            "batch_size",
            "batch_timeout_ms",
            "intake_queue_size",
            "claim_batch_size",
            "poll_interval_ms",
            "max_concurrency",
            "max_concurrency_per_endpoint",
            "max_response_body_bytes",
            "max_payload_bytes",
        ):
            _positive(name, getattr(self, name))
        _non_negative("endpoint_cache_ttl_ms", self.endpoint_cache_ttl_ms)
        if self.lease_ms is not None:
            _positive("lease_ms", self.lease_ms)
            if self.lease_ms <= self.timeout_ms:
                raise ConfigError("lease_ms must be longer than timeout_ms")
        try:
            scheme = SignatureScheme(self.signature_scheme)
        except ValueError:
            raise ConfigError(f"unknown signature_scheme {self.signature_scheme!r}") from None
        object.__setattr__(self, "signature_scheme", scheme)
        object.__setattr__(self, "enabled_events", _event_set(self.enabled_events))
        if self.secret_key is not None and not self.secret_key:
            raise ConfigError("secret_key must not be empty (use None for no fallback secret)")
        if not isinstance(self.health, HealthPolicy):
            raise ConfigError("health must be a HealthPolicy")
        if self.operational_webhook is not None and not isinstance(
            self.operational_webhook, OperationalWebhook
        ):
            raise ConfigError("operational_webhook must be an OperationalWebhook")
        trust_context(self.ssl)  # a missing or unreadable CA file fails here, not at a send
        if not isinstance(self.retention, RetentionPolicy):
            raise ConfigError("retention must be a RetentionPolicy")
        if self.emit_timeout_ms is not None:
            _positive("emit_timeout_ms", self.emit_timeout_ms)
        if not isinstance(self.kmsg_signature, KmsgSignatureFormat):
            raise ConfigError("kmsg_signature must be a KmsgSignatureFormat")
        if self.kmsg_signature.algorithm != "sha256":
            raise ConfigError(
                "kmsg_signature.algorithm: HMAC-SHA1 is accepted for verifying only (legacy); "
                "the sender signs with sha256"
            )

    @property
    def effective_lease_ms(self) -> int:
        """Lease length: configured, or twice the timeout plus ten seconds of slack."""
        return self.lease_ms if self.lease_ms is not None else 2 * self.timeout_ms + 10_000


def _event_set(values: Iterable[WebhookEventType | str]) -> frozenset[WebhookEventType]:
    if isinstance(values, str):
        raise ConfigError("enabled_events must be a collection of event types, not a str")
    try:
        return frozenset(WebhookEventType.parse(v) for v in values)
    except ValueError as exc:
        raise ConfigError(f"enabled_events: {exc}") from None
