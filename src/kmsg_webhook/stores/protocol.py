"""The persistence protocol every backend implements, and small helpers backends share.

A backend provides an :class:`EndpointStore` and a :class:`DeliveryStore`, bundled in a
:class:`WebhookPersistence` with optional ``init``/``close``. The delivery store is a durable
outbox: rows are inserted (``pending``) before any send, workers *claim* due rows under a lease,
and *record* attempt results in bulk. Every backend passes
``tests/conformance/test_store_conformance.py``.

Two maintenance operations serve field crypto's ``rekey`` (and any tool that rewrites stored
values): ``EndpointStore.rewrite_sealed`` and ``DeliveryStore.scan``/``rewrite_payloads``. They
work on values *as stored* and are compare-and-set, so they never undo a concurrent change.
"""

from __future__ import annotations

import base64
import binascii
import builtins
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ..errors import IncompleteStoreError, StoreError
from ..events import parse_timestamp
from ..models import (
    FINISHED_STATUSES,
    LATENCY_PERCENTILES,
    AttemptOutcome,
    DeliveryActivity,
    DeliveryFilter,
    DeliveryPage,
    DeliveryStats,
    DeliveryStatus,
    EndpointOutcomes,
    LatencyPercentiles,
    MinuteCount,
    PayloadRewrite,
    QueueStats,
    RetentionCutoffs,
    RetiredSecret,
    WebhookDelivery,
    WebhookEndpoint,
    build_delivery,
)


class EndpointStore(Protocol):
    """Endpoints by id. URLs are unique: a second endpoint with the same URL is an error."""

    async def add(self, endpoint: WebhookEndpoint) -> None:
        """Insert; raise :class:`~kmsg_webhook.errors.DuplicateEndpointError` on id or URL clash."""

    async def update(self, endpoint: WebhookEndpoint, *, reset_health: bool = False) -> None:
        """Replace the endpoint with ``endpoint.id``, except its health fields
        (``consecutive_failures``, ``failing_since``, ``last_success_at``,
        ``last_triggered_at``), which only :meth:`record_health` writes; with ``reset_health``
        the failure counters are cleared too (``consecutive_failures`` 0, ``failing_since``
        ``None``).

        Raises :class:`~kmsg_webhook.errors.EndpointNotFoundError` when absent and
        :class:`~kmsg_webhook.errors.DuplicateEndpointError` when the URL clashes with another.
        """

    async def remove(self, endpoint_id: str) -> bool:
        """Delete; return whether it existed."""

    async def get(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint, or ``None``."""

    async def list(self) -> list[WebhookEndpoint]:
        """All endpoints, most recently updated first."""

    async def record_health(
        self, endpoint_id: str, *, succeeded: bool, failures: int, at: datetime
    ) -> WebhookEndpoint | None:
        """Atomically fold delivery results into the endpoint's health counters.

        ``succeeded``: reset ``consecutive_failures`` to 0, clear ``failing_since`` and set
        ``last_success_at = at``. Otherwise add ``failures`` to ``consecutive_failures`` and set
        ``failing_since = at`` when it is unset. Returns the updated endpoint (``None`` if gone).
        """

    async def rewrite_sealed(
        self, endpoint_id: str, *, expected: WebhookEndpoint, replacement: WebhookEndpoint
    ) -> bool:
        """Compare-and-set of the endpoint's sealed fields: ``secret``, ``previous_secrets``,
        ``headers`` and ``client_key``, as stored.

        Sets them to ``replacement``'s only while the stored ones still equal ``expected``'s
        (see :func:`sealed_fields`); nothing else of the row changes. Returns whether it did.
        """


class DeliveryStore(Protocol):
    """The outbox of deliveries."""

    async def insert_many(
        self, deliveries: Sequence[WebhookDelivery], *, connection: object | None = None
    ) -> list[str]:
        """Insert in one operation; a row whose (endpoint_id, event_id) exists is skipped.

        Returns the ids of the rows that were new, so re-emitting an event is idempotent.
        A row may arrive already leased (``emit_sync`` sends it at once); it is then not
        claimable until that lease expires.

        ``connection`` is the caller's own open database connection (transactional outbox):
        the rows are written inside the caller's current transaction and become visible, and
        sendable, only if it commits. Backends that cannot join a caller's transaction raise
        :class:`~kmsg_webhook.errors.StoreError` when it is given.
        """

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        exclude_endpoints: Collection[str] = (),
    ) -> list[WebhookDelivery]:
        """Lease up to ``limit`` pending rows due at ``now`` (oldest due first).

        A row is claimable when pending, ``next_attempt_at <= now`` and not leased or its lease
        expired. Claimed rows carry ``lease_owner = worker_id`` and ``lease_expires_at``.
        Rows of ``exclude_endpoints`` are left alone (their endpoints are saturated).
        """

    async def record(self, outcomes: Sequence[AttemptOutcome]) -> int:
        """Apply attempt results in one operation; returns how many were applied.

        An outcome applies only while its worker still holds the row's lease; the lease is
        cleared, the attempt appended (keeping the newest ``max_stored_attempts``),
        ``attempt_count`` incremented when there is an attempt, and status, ``next_attempt_at``,
        ``completed_at`` and ``last_error`` set.
        """

    async def release(self, delivery_ids: Sequence[str], *, worker_id: str) -> None:
        """Give back leases held by ``worker_id`` without recording an attempt."""

    async def get(self, delivery_id: str) -> WebhookDelivery | None:
        """The delivery, or ``None``."""

    async def list(
        self, filter: DeliveryFilter, *, limit: int = 100, cursor: str | None = None
    ) -> DeliveryPage:
        """Newest first (``created_at`` then ``id``, descending), keyset-paginated by cursor."""

    async def stats(self, filter: DeliveryFilter) -> DeliveryStats:
        """Counts by status and event type, attempts and mean last-attempt latency."""

    async def queue_stats(self, *, now: datetime) -> QueueStats:
        """How many pending rows are due, scheduled for later and leased at ``now``, with the
        oldest due time and the next scheduled one (one aggregate query; for monitoring)."""

    async def activity(self, *, since: datetime, now: datetime) -> DeliveryActivity:
        """Deliveries finished from ``since`` to ``now``: per minute and per endpoint by
        outcome, and last-attempt latency percentiles (see
        :class:`~kmsg_webhook.models.DeliveryActivity`), aggregated by the store. The
        backlog is :meth:`queue_stats`.

        A delivery counts in the minute of its ``completed_at``; latency percentiles are
        nearest-rank (:func:`percentile_ranks`) over the newest ``LATENCY_SAMPLE`` of the same
        finished deliveries.
        """

    async def requeue(
        self, filter: DeliveryFilter, *, now: datetime, ids: Sequence[str] | None = None
    ) -> int:
        """Put terminal deliveries back to ``pending`` due at ``now``; returns how many.

        Only terminal rows are touched (a pending row is already queued). ``ids`` narrows the
        selection to those ids. Attempt history is kept.
        """

    async def purge(self, *, older_than: datetime) -> int:
        """Delete terminal deliveries created before ``older_than``; pending rows are kept."""

    async def purge_finished(self, cutoffs: RetentionCutoffs, *, limit: int) -> int:
        """Delete up to ``limit`` finished deliveries that ``cutoffs`` let go; returns how many.

        Oldest first within each status (by ``created_at`` in the SQL and D1 stores, in
        insertion order in memory). Retention calls it in small batches until it returns less
        than ``limit``.
        """

    async def scan(
        self, *, after: str | None = None, limit: int = 500
    ) -> builtins.list[WebhookDelivery]:
        """Up to ``limit`` deliveries with ``id > after`` in ascending id order, as stored.

        For maintenance walks that must visit every row once and resume where they stopped.
        """

    async def rewrite_payloads(self, rewrites: Sequence[PayloadRewrite]) -> int:
        """Apply each rewrite whose row still stores ``expected_payload``; returns how many."""


#: Called with the earliest due time of rows another process made pending (``None``: unknown,
#: look now).
DueCallback = Callable[[datetime | None], None]


class Watch(Protocol):
    """A running subscription to another process's new and re-scheduled rows."""

    async def close(self) -> None:
        """Stop listening."""


@dataclass(slots=True)
class WebhookPersistence:
    """An endpoint store and a delivery store with optional ``init``/``close`` hooks.

    ``watch``, when a backend can push changes (PostgreSQL ``LISTEN/NOTIFY``), starts a
    subscription that calls back whenever rows become pending in another process; without it
    workers find such rows by polling.
    """

    endpoint_store: EndpointStore
    delivery_store: DeliveryStore
    init: Callable[[], Awaitable[None]] | None = None
    close: Callable[[], Awaitable[None]] | None = None
    watch: Callable[[DueCallback], Awaitable[Watch]] | None = None
    #: How long one store operation retries a transient failure, in seconds (``None``: not
    #: said); the runtime's default ``emit`` bound is this plus a little.
    retry_timeout: float | None = None


def _methods(protocol: type) -> tuple[str, ...]:
    return tuple(
        name for name, value in vars(protocol).items() if callable(value) and name[0] != "_"
    )


_REQUIRED = {"endpoint_store": _methods(EndpointStore), "delivery_store": _methods(DeliveryStore)}


def require_complete(persistence: WebhookPersistence) -> None:
    """Refuse stores that lack protocol methods, naming them (:class:`IncompleteStoreError`).

    A store written for a smaller interface would otherwise be accepted and fail later, in the
    background, on the first call it cannot answer.
    """
    for role, names in _REQUIRED.items():
        store = getattr(persistence, role)
        missing = tuple(name for name in names if not callable(getattr(store, name, None)))
        if missing:
            raise IncompleteStoreError(role, store, missing)


SealedFields = tuple[str | None, tuple[RetiredSecret, ...], tuple[tuple[str, str], ...], str | None]


def sealed_fields(endpoint: WebhookEndpoint) -> SealedFields:
    """The fields field crypto seals, in a form that compares by value."""
    return (
        endpoint.secret,
        endpoint.previous_secrets,
        tuple(endpoint.headers.items()),
        endpoint.client_key,
    )


#: How many attempts a delivery row keeps in its history, newest last, on every backend.
DEFAULT_MAX_STORED_ATTEMPTS = 20

#: Delivery columns added after schema version 1, in table order: the keyed lookup hashes
#: (version 2) and the ordering key (version 4).
ADDED_DELIVERY_COLUMNS = ("to_hash", "from_hash", "ordering_key")


def with_added_columns(delivery: WebhookDelivery, row: Mapping[Any, Any]) -> WebhookDelivery:
    """Set, on a delivery *just decoded* from ``row``, the added columns the row carries.

    ``delivery`` must be a fresh object no one else holds (it is completed in place, as
    ``__post_init__`` would): this runs for every row a claim or a listing reads.
    """
    to_hash, from_hash = row.get("to_hash"), row.get("from_hash")
    if to_hash is not None:
        object.__setattr__(delivery, "to_hash", to_hash)
    if from_hash is not None:
        object.__setattr__(delivery, "from_hash", from_hash)
    ordering_key = row.get("ordering_key")
    if ordering_key is not None:
        object.__setattr__(delivery, "ordering_key", ordering_key)
    return delivery


def apply_outcome(
    delivery: WebhookDelivery, outcome: AttemptOutcome, *, max_stored_attempts: int
) -> WebhookDelivery:
    """The delivery as it is after ``outcome`` is recorded (the rule every backend follows)."""
    attempts = delivery.attempts
    count = delivery.attempt_count
    if outcome.attempt is not None:
        attempts = (*attempts, outcome.attempt)[-max_stored_attempts:]
        count += 1
    status = outcome.status
    # Built whole rather than through evolve_delivery: eight of the eighteen fields change,
    # and this runs for every recorded attempt.
    return build_delivery(
        id=delivery.id,
        endpoint_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        url=delivery.url,
        payload=delivery.payload,
        status=status,
        created_at=delivery.created_at,
        next_attempt_at=outcome.next_attempt_at if status is DeliveryStatus.PENDING else None,
        attempts=attempts,
        attempt_count=count,
        completed_at=outcome.completed_at,
        last_error=outcome.last_error,
        lease_owner=None,
        lease_expires_at=None,
        to_hash=delivery.to_hash,
        from_hash=delivery.from_hash,
        ordering_key=delivery.ordering_key,
    )


def encode_cursor(delivery: WebhookDelivery) -> str:
    """Opaque keyset cursor: the (created_at, id) of the last row of a page."""
    raw = f"{delivery.created_at.isoformat()}|{delivery.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`; a tampered cursor is a :class:`StoreError`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, delivery_id = raw.partition("|")
        if not delivery_id:
            raise ValueError("no id")
        return parse_timestamp(stamp), delivery_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise StoreError(f"invalid delivery cursor: {cursor!r}") from exc


def is_after_cursor(position: tuple[datetime, str], cursor: tuple[datetime, str]) -> bool:
    """True when a row at ``position`` (its created_at and id) sorts after the cursor in
    newest-first order."""
    return position < cursor


def epoch_minute(moment: datetime) -> int:
    """Whole minutes since the Unix epoch: the bucket :meth:`DeliveryStore.activity` counts in."""
    return int(moment.timestamp() // 60)


#: Activity aggregates as backends return them: a key (an epoch minute, an endpoint id) and
#: the counts of :data:`~kmsg_webhook.models.FINISHED_STATUSES`, in that order.
Tally = tuple[Any, int, int, int]


def finished_tallies(rows: Iterable[Mapping[Any, Any]], kind: str) -> list[Tally]:
    """The rows of one ``kind`` of the ``finished_tallies`` query (``'minute'`` or
    ``'endpoint'``) as tallies: the key and the counts of the finished statuses."""
    return [
        (row["key"], int(row["success"] or 0), int(row["failed"] or 0), int(row["exhausted"] or 0))
        for row in rows
        if row["kind"] == kind
    ]


def minute_counts(rows: Iterable[Tally]) -> tuple[MinuteCount, ...]:
    """``(epoch minute, success, failed, exhausted)`` rows as :class:`MinuteCount` (none for a
    zero count), oldest first."""
    counts = [
        MinuteCount(
            minute=datetime.fromtimestamp(int(minute) * 60, UTC), status=status, count=int(n)
        )
        for minute, *tally in rows
        for status, n in zip(FINISHED_STATUSES, tally, strict=True)
        if n
    ]
    counts.sort(key=lambda c: (c.minute, c.status.value))
    return tuple(counts)


def endpoint_outcomes(rows: Iterable[Tally]) -> tuple[EndpointOutcomes, ...]:
    """``(endpoint id, success, failed, exhausted)`` rows as :class:`EndpointOutcomes`, by id."""
    return tuple(
        sorted(
            (
                EndpointOutcomes(str(endpoint_id), int(success), int(failed), int(exhausted))
                for endpoint_id, success, failed, exhausted in rows
            ),
            key=lambda o: o.endpoint_id,
        )
    )


def percentile_ranks(samples: int) -> dict[int, int]:
    """The 1-based nearest-rank position of each of ``LATENCY_PERCENTILES`` among ``samples``
    sorted values: ``ceil(p * samples / 100)``, in integer arithmetic every SQL dialect shares."""
    return {p: (p * samples + 99) // 100 for p in LATENCY_PERCENTILES}


def latency_percentiles(samples: int, by_position: Mapping[int, float]) -> LatencyPercentiles:
    """Percentiles from the values at the :func:`percentile_ranks` positions."""
    if samples <= 0:
        return LatencyPercentiles()
    ranks = percentile_ranks(samples)
    p50, p95, p99 = (float(by_position[ranks[p]]) for p in LATENCY_PERCENTILES)
    return LatencyPercentiles(samples=samples, p50_ms=p50, p95_ms=p95, p99_ms=p99)
