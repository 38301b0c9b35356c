"""Stored records: endpoints, deliveries, attempts, and what listings and stats return."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from .errors import FieldCryptoError, InvalidEndpointError
from .events import WebhookEvent, WebhookEventType


class EndpointStatus(StrEnum):
    """Lifecycle of an endpoint. Only ``active`` endpoints receive events."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    #: Disabled automatically (410 Gone, ``webhook-delivery: disable``, health policy); see
    #: ``disabled_reason``.
    ERROR = "error"
    SUSPENDED = "suspended"
    #: Added with ``verify=True``: active once the receiver answers the challenge.
    PENDING_VERIFICATION = "pending_verification"


class DeliveryStatus(StrEnum):
    """``pending`` → ``success`` | ``failed`` (not retryable) | ``exhausted`` (retries used up)."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    EXHAUSTED = "exhausted"

    @property
    def terminal(self) -> bool:
        return self is not DeliveryStatus.PENDING


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Per-endpoint override of the runtime's retry settings (``None`` keeps the global value)."""

    max_retries: int | None = None
    retry_delay_ms: int | None = None
    backoff_multiplier: float | None = None

    def __post_init__(self) -> None:
        if self.max_retries is not None and not 0 <= self.max_retries <= 50:
            raise InvalidEndpointError("retry_config.max_retries must be between 0 and 50")
        if self.retry_delay_ms is not None and self.retry_delay_ms < 0:
            raise InvalidEndpointError("retry_config.retry_delay_ms must be >= 0")
        if self.backoff_multiplier is not None and self.backoff_multiplier < 1:
            raise InvalidEndpointError("retry_config.backoff_multiplier must be >= 1")


@dataclass(frozen=True, slots=True)
class EndpointFilters:
    """Metadata filters. A non-empty list requires the event's value to be present and listed."""

    provider_id: tuple[str, ...] = ()
    channel_id: tuple[str, ...] = ()
    template_id: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("provider_id", "channel_id", "template_id"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise InvalidEndpointError(f"filters.{name} must be a list of strings, not a str")
            object.__setattr__(self, name, tuple(value))

    def matches(self, event: WebhookEvent) -> bool:
        # Fail closed: a filtered endpoint never receives an event lacking the filtered key
        # (``None in (...)`` is false). Straight-line: this runs for every event × endpoint.
        meta = event.metadata
        return (
            (not self.provider_id or meta.provider_id in self.provider_id)
            and (not self.channel_id or meta.channel_id in self.channel_id)
            and (not self.template_id or meta.template_id in self.template_id)
        )


@dataclass(frozen=True, slots=True)
class RetiredSecret:
    """A previous secret that still signs until ``expires_at`` (secret rotation grace period)."""

    secret: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"RetiredSecret(secret='***', expires_at={self.expires_at!r})"


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A registered receiver. ``secret`` signs; ``previous_secrets`` also sign until they expire."""

    id: str
    url: str
    events: tuple[WebhookEventType, ...]
    created_at: datetime
    updated_at: datetime
    status: EndpointStatus = EndpointStatus.ACTIVE
    name: str | None = None
    description: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    secret: str | None = field(default=None, repr=False)
    previous_secrets: tuple[RetiredSecret, ...] = ()
    retry_config: RetryConfig | None = None
    filters: EndpointFilters | None = None
    last_triggered_at: datetime | None = None
    disabled_reason: str | None = None
    #: Exhausted/failed deliveries since the last success (health policy input).
    consecutive_failures: int = 0
    #: First failed attempt since the last success.
    failing_since: datetime | None = None
    last_success_at: datetime | None = None
    #: Client certificate (PEM, with its chain) presented to this endpoint over https (mTLS).
    client_cert: str | None = None
    #: Its private key (PEM); sealed like the secrets when field crypto encrypts secrets.
    client_key: str | None = field(default=None, repr=False)
    #: Deliveries of one ``ordering_key`` go out strictly one after another, in emit order.
    ordered: bool = False

    @property
    def active(self) -> bool:
        """Whether the endpoint receives events (derived from ``status``: never contradictory)."""
        return self.status is EndpointStatus.ACTIVE

    def matches(self, event: WebhookEvent) -> bool:
        """Active, subscribed to the event type, and every metadata filter passes."""
        return (
            self.status is EndpointStatus.ACTIVE
            and event.type in self.events
            and (self.filters is None or self.filters.matches(event))
        )

    def signing_secrets(self, now: datetime) -> list[str]:
        """The current secret first, then retired secrets still inside their grace period."""
        secrets = [self.secret] if self.secret else []
        secrets.extend(s.secret for s in self.previous_secrets if s.expires_at > now)
        return secrets


@dataclass(frozen=True, slots=True)
class EndpointInput:
    """What a caller gives to register an endpoint; the runtime fills ids, times and status."""

    url: str
    events: Sequence[WebhookEventType | str]
    active: bool | None = None
    status: EndpointStatus | None = None
    id: str | None = None
    name: str | None = None
    description: str | None = None
    headers: Mapping[str, str] | None = None
    secret: str | None = field(default=None, repr=False)
    retry_config: RetryConfig | None = None
    filters: EndpointFilters | None = None
    #: Client certificate and key in PEM, for receivers that require mutual TLS (both or none).
    client_cert: str | None = None
    client_key: str | None = field(default=None, repr=False)
    #: Send the deliveries of one event ``ordering_key`` one after another, in emit order.
    ordered: bool = False
    #: Prove the receiver holds the secret before anything is sent: the endpoint starts
    #: ``pending_verification`` and becomes active when it answers a ``webhook-challenge``.
    verify: bool = False


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One HTTP attempt. ``response_body`` is truncated to the configured limit."""

    attempt_number: int
    started_at: datetime
    latency_ms: float
    http_status: int | None = None
    response_body: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event bound for one endpoint: an outbox row, written before any send.

    ``payload`` is the exact request body. Signatures and secrets are never stored here.
    ``attempts`` keeps the most recent attempts (capped); ``attempt_count`` counts all of them.
    ``to_hash``/``from_hash`` are keyed hashes of the recipient and sender numbers in the
    payload (field crypto ``encrypt+hash``), for lookups that never decrypt anything.
    """

    id: str
    endpoint_id: str
    event_id: str
    event_type: WebhookEventType
    url: str
    payload: str
    status: DeliveryStatus
    created_at: datetime
    next_attempt_at: datetime | None
    attempts: tuple[WebhookAttempt, ...] = ()
    attempt_count: int = 0
    completed_at: datetime | None = None
    last_error: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    to_hash: str | None = None
    from_hash: str | None = None
    #: The event's ordering key when the endpoint is ordered: no delivery of the same endpoint
    #: and key is claimed while an earlier one (in store order) is still pending.
    ordering_key: str | None = None

    @property
    def last_attempt(self) -> WebhookAttempt | None:
        return self.attempts[-1] if self.attempts else None


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What a worker learned from one attempt, recorded by :meth:`DeliveryStore.record`.

    Recorded only while ``worker_id`` still holds the delivery's lease, so a worker whose lease
    expired (and whose delivery was reclaimed) can never overwrite the newer owner's result.
    ``attempt`` is ``None`` when the delivery was settled without a request (endpoint removed
    or disabled); ``error`` then says why.
    """

    delivery_id: str
    worker_id: str
    attempt: WebhookAttempt | None
    status: DeliveryStatus
    next_attempt_at: datetime | None
    completed_at: datetime | None
    error: str | None = None

    @property
    def last_error(self) -> str | None:
        if self.attempt is None:
            return self.error
        if self.attempt.ok:
            return None
        if self.attempt.error:
            return self.attempt.error
        return f"HTTP {self.attempt.http_status}"


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Which deliveries a listing, stats, replay or purge looks at (all conditions AND-ed)."""

    endpoint_id: str | None = None
    event_type: WebhookEventType | None = None
    event_id: str | None = None
    statuses: tuple[DeliveryStatus, ...] = ()
    created_after: datetime | None = None
    created_before: datetime | None = None
    #: Keyed hashes (``FieldCrypto.recipient_hash``) of the payload's ``to`` / ``from``.
    to_hash: str | None = None
    from_hash: str | None = None

    def matches(self, delivery: WebhookDelivery) -> bool:
        return self.matches_fields(
            delivery.endpoint_id,
            delivery.event_type,
            delivery.event_id,
            delivery.status,
            delivery.created_at,
            delivery.to_hash,
            delivery.from_hash,
        )

    def matches_fields(
        self,
        endpoint_id: str,
        event_type: str,
        event_id: str,
        status: str,
        created_at: datetime,
        to_hash: str | None,
        from_hash: str | None,
    ) -> bool:
        """:meth:`matches` on the fields it reads, for a store that keeps rows as values: the
        event type and status may be their stored values (``StrEnum`` members equal those)."""
        return (
            (self.endpoint_id is None or endpoint_id == self.endpoint_id)
            and (self.to_hash is None or to_hash == self.to_hash)
            and (self.from_hash is None or from_hash == self.from_hash)
            and (self.event_type is None or event_type == self.event_type)
            and (self.event_id is None or event_id == self.event_id)
            and (not self.statuses or status in self.statuses)
            and (self.created_after is None or created_at >= self.created_after)
            and (self.created_before is None or created_at < self.created_before)
        )


@dataclass(frozen=True, slots=True)
class RetentionCutoffs:
    """Which finished deliveries may be deleted: those of each final status created before
    its moment (``None`` keeps every row of that status). Pending rows are always kept."""

    success: datetime | None = None
    failed: datetime | None = None
    exhausted: datetime | None = None

    def by_status(self) -> list[tuple[DeliveryStatus, datetime]]:
        """The statuses that have a cutoff, with it."""
        pairs = (
            (DeliveryStatus.SUCCESS, self.success),
            (DeliveryStatus.FAILED, self.failed),
            (DeliveryStatus.EXHAUSTED, self.exhausted),
        )
        return [(status, cutoff) for status, cutoff in pairs if cutoff is not None]


@dataclass(frozen=True, slots=True)
class RecordError:
    """A record a listing could not return as stored (its field crypto failed)."""

    record_id: str
    error: FieldCryptoError


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """One page of a listing, newest first. Pass ``next_cursor`` back to get the next page.

    ``errors`` names rows of this page whose fields could not be decrypted; with
    ``fail_mode="closed"`` they are left out of ``items``, with ``"open"`` they are in ``items``
    with the unreadable value replaced by a redaction marker.
    """

    items: tuple[WebhookDelivery, ...]
    next_cursor: str | None
    errors: tuple[RecordError, ...] = ()


class EndpointList(list[WebhookEndpoint]):
    """A list of endpoints that also names the endpoints that could not be decrypted.

    It is a plain ``list`` (compares equal to one); ``errors`` is empty without field crypto.
    """

    def __init__(
        self, items: Iterable[WebhookEndpoint] = (), errors: Iterable[RecordError] = ()
    ) -> None:
        super().__init__(items)
        self.errors: tuple[RecordError, ...] = tuple(errors)


@dataclass(frozen=True, slots=True)
class PayloadRewrite:
    """One delivery row rewritten by a maintenance walk (``rekey``), compare-and-set.

    Applied only while the stored payload still equals ``expected_payload``; sets ``payload``,
    ``to_hash`` and ``from_hash``. Nothing else of the row changes.
    """

    delivery_id: str
    expected_payload: str
    payload: str
    to_hash: str | None
    from_hash: str | None


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    """Aggregates over the deliveries a :class:`DeliveryFilter` selects."""

    total: int = 0
    pending: int = 0
    success: int = 0
    failed: int = 0
    exhausted: int = 0
    total_attempts: int = 0
    #: Mean latency of the last attempt over deliveries that have one.
    average_latency_ms: float = 0.0
    by_event_type: Mapping[str, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        """Percent of terminal deliveries that succeeded (0 when none finished)."""
        done = self.success + self.failed + self.exhausted
        return 100.0 * self.success / done if done else 0.0


#: The latency percentiles :meth:`DeliveryStore.activity` reports, in percent.
LATENCY_PERCENTILES = (50, 95, 99)
#: How many of the most recently finished deliveries those percentiles look at, at most.
LATENCY_SAMPLE = 10_000
#: The finished statuses, in the order activity aggregates carry their counts.
FINISHED_STATUSES = (DeliveryStatus.SUCCESS, DeliveryStatus.FAILED, DeliveryStatus.EXHAUSTED)


@dataclass(frozen=True, slots=True)
class MinuteCount:
    """How many deliveries finished with ``status`` in the minute starting at ``minute``."""

    minute: datetime
    status: DeliveryStatus
    count: int


@dataclass(frozen=True, slots=True)
class LatencyPercentiles:
    """Nearest-rank percentiles of last-attempt latency over ``samples`` deliveries
    (``None`` when there were none)."""

    samples: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


@dataclass(frozen=True, slots=True)
class EndpointOutcomes:
    """How one endpoint's deliveries finished since :attr:`DeliveryActivity.since`."""

    endpoint_id: str
    success: int = 0
    failed: int = 0
    exhausted: int = 0

    @property
    def finished(self) -> int:
        return self.success + self.failed + self.exhausted

    @property
    def success_rate(self) -> float:
        """Percent of the finished deliveries that succeeded (0 when none finished)."""
        return 100.0 * self.success / self.finished if self.finished else 0.0


@dataclass(frozen=True, slots=True)
class DeliveryActivity:
    """What an operator looks at first (:meth:`DeliveryStore.activity`).

    ``per_minute``: deliveries finished (success, failed, exhausted) per minute from ``since``
    to ``now``, by outcome, oldest first; minutes without any are left out. ``latency``:
    last-attempt latency of the most recently finished of them (at most
    :data:`LATENCY_SAMPLE`).
    ``by_endpoint``: the same finished deliveries counted per endpoint, by endpoint id.
    """

    since: datetime
    now: datetime
    per_minute: tuple[MinuteCount, ...] = ()
    latency: LatencyPercentiles = field(default_factory=LatencyPercentiles)
    by_endpoint: tuple[EndpointOutcomes, ...] = ()


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The outbox's pending rows at a moment (``now``): what is due, scheduled and leased.

    ``due``: pending, due at ``now`` and not leased (or its lease expired), so claimable.
    ``scheduled``: pending retries (or rows) due later. ``leased``: pending rows a worker holds
    under a live lease (being sent). ``oldest_due_at``: the earliest due time among the ``due``
    rows; ``next_due_at``: the earliest due time among the ``scheduled`` ones.
    """

    due: int = 0
    scheduled: int = 0
    leased: int = 0
    oldest_due_at: datetime | None = None
    next_due_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """An endpoint's status and health counters, without its secrets or headers."""

    id: str
    url: str
    status: EndpointStatus
    consecutive_failures: int
    failing_since: datetime | None
    last_success_at: datetime | None
    disabled_reason: str | None

    @property
    def troubled(self) -> bool:
        """Not active, or failing since its last success."""
        return (
            self.status is not EndpointStatus.ACTIVE
            or self.consecutive_failures > 0
            or self.failing_since is not None
        )


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Outcome of :meth:`WebhookRuntimeService.probe_endpoint` (one attempt, no retries)."""

    endpoint_id: str
    url: str
    success: bool
    response_time_ms: float
    tested_at: datetime
    http_status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EmitResult:
    """What :meth:`WebhookRuntimeService.emit_many` stored for one event.

    ``stored`` deliveries were written by the call, one per matching endpoint; the
    ``already_stored`` others existed for this event id (an event emitted again, or twice in
    the call) and were not written again. Both are 0 for an event no endpoint takes (or of a
    type outside ``config.enabled_events``).
    """

    event_id: str
    stored: int
    already_stored: int


@dataclass(frozen=True, slots=True)
class EndpointVerification:
    """Outcome of :meth:`WebhookRuntimeService.verify_endpoint`: one challenge, not retried.

    ``verified`` when the receiver answered 2xx with the right ``webhook-challenge-response``;
    ``endpoint`` is the endpoint afterwards (active if it was pending and is now verified).
    """

    endpoint: WebhookEndpoint
    verified: bool
    response_time_ms: float
    http_status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """Endpoint counts plus delivery aggregates."""

    total_endpoints: int
    active_endpoints: int
    deliveries: DeliveryStats


# -- building records on the hot paths --------------------------------------------------------
#
# A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__``, about five
# times the cost of a plain slot store, and a delivery builds several records. Calling any class
# with keywords costs as much again: CPython packs them into a dict for ``__init__`` and unpacks
# it. The hot paths therefore build records through a plain function per record type, which
# takes the same arguments as the record's constructor (same names, order and defaults: a test
# checks). It fills a mutable twin of the record class (same fields, hence the same slots in the
# same order) and then gives the instance the record's class, which Python allows between
# identical layouts. What comes out is an ordinary frozen instance (equal, hashable,
# immutable). This section is the only code that knows the trick.


def _twin_of(cls: type) -> type:
    """A class with ``cls``'s slots, mutable, that nothing constructs: builders fill it."""
    twin: type = dataclasses.make_dataclass(
        f"{cls.__name__}Twin",
        [f.name for f in dataclasses.fields(cls)],
        slots=True,
        init=False,
        repr=False,
        eq=False,
        match_args=False,
    )
    return twin


_DeliveryTwin = _twin_of(WebhookDelivery)
_AttemptTwin = _twin_of(WebhookAttempt)
_OutcomeTwin = _twin_of(AttemptOutcome)
_new_twin = object.__new__


def build_delivery(
    id: str,
    endpoint_id: str,
    event_id: str,
    event_type: WebhookEventType,
    url: str,
    payload: str,
    status: DeliveryStatus,
    created_at: datetime,
    next_attempt_at: datetime | None,
    attempts: tuple[WebhookAttempt, ...] = (),
    attempt_count: int = 0,
    completed_at: datetime | None = None,
    last_error: str | None = None,
    lease_owner: str | None = None,
    lease_expires_at: datetime | None = None,
    to_hash: str | None = None,
    from_hash: str | None = None,
    ordering_key: str | None = None,
) -> WebhookDelivery:
    """``WebhookDelivery(...)`` for the hot paths."""
    new: Any = _new_twin(_DeliveryTwin)
    new.id = id
    new.endpoint_id = endpoint_id
    new.event_id = event_id
    new.event_type = event_type
    new.url = url
    new.payload = payload
    new.status = status
    new.created_at = created_at
    new.next_attempt_at = next_attempt_at
    new.attempts = attempts
    new.attempt_count = attempt_count
    new.completed_at = completed_at
    new.last_error = last_error
    new.lease_owner = lease_owner
    new.lease_expires_at = lease_expires_at
    new.to_hash = to_hash
    new.from_hash = from_hash
    new.ordering_key = ordering_key
    new.__class__ = WebhookDelivery
    built: WebhookDelivery = new
    return built


def build_attempt(
    attempt_number: int,
    started_at: datetime,
    latency_ms: float,
    http_status: int | None = None,
    response_body: str | None = None,
    error: str | None = None,
) -> WebhookAttempt:
    """``WebhookAttempt(...)`` for the hot paths."""
    new: Any = _new_twin(_AttemptTwin)
    new.attempt_number = attempt_number
    new.started_at = started_at
    new.latency_ms = latency_ms
    new.http_status = http_status
    new.response_body = response_body
    new.error = error
    new.__class__ = WebhookAttempt
    built: WebhookAttempt = new
    return built


def build_outcome(
    delivery_id: str,
    worker_id: str,
    attempt: WebhookAttempt | None,
    status: DeliveryStatus,
    next_attempt_at: datetime | None,
    completed_at: datetime | None,
    error: str | None = None,
) -> AttemptOutcome:
    """``AttemptOutcome(...)`` for the hot paths."""
    new: Any = _new_twin(_OutcomeTwin)
    new.delivery_id = delivery_id
    new.worker_id = worker_id
    new.attempt = attempt
    new.status = status
    new.next_attempt_at = next_attempt_at
    new.completed_at = completed_at
    new.error = error
    new.__class__ = AttemptOutcome
    built: AttemptOutcome = new
    return built


_DELIVERY_FIELDS = frozenset(f.name for f in dataclasses.fields(WebhookDelivery))


def evolve_delivery(delivery: WebhookDelivery, **changes: Any) -> WebhookDelivery:
    """``dataclasses.replace`` for deliveries, several times as fast (claims and records call
    it for every delivery): a twin filled field by field, then the changes set on it. A test
    checks every field is here.
    """
    if not changes.keys() <= _DELIVERY_FIELDS:
        raise TypeError(f"not WebhookDelivery fields: {sorted(changes.keys() - _DELIVERY_FIELDS)}")
    new: Any = _new_twin(_DeliveryTwin)  # no __init__ nor cast(): this runs for every delivery
    new.id = delivery.id
    new.endpoint_id = delivery.endpoint_id
    new.event_id = delivery.event_id
    new.event_type = delivery.event_type
    new.url = delivery.url
    new.payload = delivery.payload
    new.status = delivery.status
    new.created_at = delivery.created_at
    new.next_attempt_at = delivery.next_attempt_at
    new.attempts = delivery.attempts
    new.attempt_count = delivery.attempt_count
    new.completed_at = delivery.completed_at
    new.last_error = delivery.last_error
    new.lease_owner = delivery.lease_owner
    new.lease_expires_at = delivery.lease_expires_at
    new.to_hash = delivery.to_hash
    new.from_hash = delivery.from_hash
    new.ordering_key = delivery.ordering_key
    for name, value in changes.items():  # a few changes: cheaper than a lookup per field
        setattr(new, name, value)
    new.__class__ = WebhookDelivery
    evolved: WebhookDelivery = new
    return evolved
