"""In-memory persistence: the complete store protocol without durability.

For tests, demos and single-process services that accept losing pending deliveries on restart.
It follows the same rules as the durable backends (the conformance suite runs against it).
Returned objects are immutable, so callers can never mutate stored state by accident.
"""

from __future__ import annotations

import bisect
import builtins
import dataclasses
import heapq
from collections import Counter
from collections.abc import Collection, Sequence
from datetime import datetime

from ..errors import DuplicateEndpointError, EndpointNotFoundError, StoreError
from ..models import (
    FINISHED_STATUSES,
    LATENCY_SAMPLE,
    AttemptOutcome,
    DeliveryActivity,
    DeliveryFilter,
    DeliveryPage,
    DeliveryStats,
    DeliveryStatus,
    PayloadRewrite,
    QueueStats,
    RetentionCutoffs,
    WebhookDelivery,
    WebhookEndpoint,
    evolve_delivery,
)
from . import finished_rows
from .due_index import DueIndex
from .finished_rows import FinishedRow
from .protocol import (
    DEFAULT_MAX_STORED_ATTEMPTS,
    WebhookPersistence,
    apply_outcome,
    decode_cursor,
    encode_cursor,
    endpoint_outcomes,
    epoch_minute,
    is_after_cursor,
    latency_percentiles,
    minute_counts,
    percentile_ranks,
    sealed_fields,
)


class InMemoryEndpointStore:
    """Endpoints in a dict, with a URL index enforcing uniqueness."""

    def __init__(self) -> None:
        self._rows: dict[str, WebhookEndpoint] = {}
        self._by_url: dict[str, str] = {}

    async def add(self, endpoint: WebhookEndpoint) -> None:
        if endpoint.id in self._rows:
            raise DuplicateEndpointError(
                f"Webhook endpoint id {endpoint.id} already exists", field="id", value=endpoint.id
            )
        self._check_url(endpoint)
        self._rows[endpoint.id] = endpoint
        self._by_url[endpoint.url] = endpoint.id

    async def update(self, endpoint: WebhookEndpoint, *, reset_health: bool = False) -> None:
        current = self._rows.get(endpoint.id)
        if current is None:
            raise EndpointNotFoundError(endpoint.id)
        self._check_url(endpoint)
        endpoint = dataclasses.replace(
            endpoint,
            consecutive_failures=0 if reset_health else current.consecutive_failures,
            failing_since=None if reset_health else current.failing_since,
            last_success_at=current.last_success_at,
            last_triggered_at=current.last_triggered_at,
        )
        del self._by_url[current.url]
        self._rows[endpoint.id] = endpoint
        self._by_url[endpoint.url] = endpoint.id

    async def remove(self, endpoint_id: str) -> bool:
        endpoint = self._rows.pop(endpoint_id, None)
        if endpoint is None:
            return False
        del self._by_url[endpoint.url]
        return True

    async def get(self, endpoint_id: str) -> WebhookEndpoint | None:
        return self._rows.get(endpoint_id)

    async def list(self) -> list[WebhookEndpoint]:
        return sorted(self._rows.values(), key=lambda e: (e.updated_at, e.id), reverse=True)

    async def record_health(
        self, endpoint_id: str, *, succeeded: bool, failures: int, at: datetime
    ) -> WebhookEndpoint | None:
        endpoint = self._rows.get(endpoint_id)
        if endpoint is None:
            return None
        if succeeded:
            endpoint = dataclasses.replace(
                endpoint, consecutive_failures=0, failing_since=None, last_success_at=at
            )
        else:
            endpoint = dataclasses.replace(
                endpoint,
                consecutive_failures=endpoint.consecutive_failures + failures,
                failing_since=endpoint.failing_since or at,
            )
        self._rows[endpoint_id] = endpoint
        return endpoint

    async def rewrite_sealed(
        self, endpoint_id: str, *, expected: WebhookEndpoint, replacement: WebhookEndpoint
    ) -> bool:
        current = self._rows.get(endpoint_id)
        if current is None or sealed_fields(current) != sealed_fields(expected):
            return False
        self._rows[endpoint_id] = dataclasses.replace(
            current,
            secret=replacement.secret,
            previous_secrets=replacement.previous_secrets,
            headers=dict(replacement.headers),
            client_key=replacement.client_key,
        )
        return True

    def _check_url(self, endpoint: WebhookEndpoint) -> None:
        owner = self._by_url.get(endpoint.url)
        if owner is not None and owner != endpoint.id:
            raise DuplicateEndpointError(
                f"Webhook endpoint URL {endpoint.url} is already used by endpoint {owner}",
                field="url",
                value=endpoint.url,
            )


class InMemoryDeliveryStore:
    """Deliveries in a dict plus a due-time index per endpoint, so claiming stays cheap with a
    deep backlog, and costs nothing per row of the endpoints a claim excludes.

    A pending delivery is kept as its record, which claims and records read and replace; a
    finished one as a :mod:`.finished_rows` tuple, which the garbage collector does not walk
    (most rows are finished ones). The dict keeps insertion order, which is creation order for
    rows the runtime writes: retention walks it oldest first.
    """

    def __init__(self, *, max_stored_attempts: int = DEFAULT_MAX_STORED_ATTEMPTS) -> None:
        self._max_attempts = max_stored_attempts
        self._rows: dict[str, WebhookDelivery | FinishedRow] = {}
        self._keys: set[str] = set()  # endpoint id + event id (a str: the GC skips it)
        self._due = DueIndex()
        self._leased: dict[str, datetime] = {}
        # (lease expiry, id) for every lease given; stale once the row is recorded or released.
        self._expiries: list[tuple[datetime, str]] = []
        self._keyed = _KeyedQueues()

    async def insert_many(
        self, deliveries: Sequence[WebhookDelivery], *, connection: object | None = None
    ) -> list[str]:
        if connection is not None:
            raise StoreError("the in-memory store cannot join a database transaction")
        inserted: list[str] = []
        for delivery in deliveries:
            key = _key(delivery.endpoint_id, delivery.event_id)
            if key in self._keys or delivery.id in self._rows:
                continue
            self._keys.add(key)
            inserted.append(delivery.id)
            if delivery.status.terminal:
                self._rows[delivery.id] = finished_rows.encode(delivery)
                if delivery.ordering_key is not None:
                    self._keyed.add(delivery, pending=False)
                continue
            self._rows[delivery.id] = delivery
            if delivery.ordering_key is not None:
                self._keyed.add(delivery, pending=True)
            if delivery.lease_expires_at is not None:
                self._lease(delivery.id, delivery.lease_expires_at)
            else:
                self._push(delivery)
        return inserted

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        exclude_endpoints: Collection[str] = (),
    ) -> list[WebhookDelivery]:
        self._reclaim_expired(now)
        claimed: list[WebhookDelivery] = []
        rows = self._rows
        lease = self._lease
        keyed = self._keyed

        def take(delivery_id: str, due_ts: float) -> bool:
            row = rows.get(delivery_id)
            if not _claimable(row, due_ts):
                return False
            assert isinstance(row, WebhookDelivery)
            if row.ordering_key is not None and not keyed.is_next(row):
                return False  # pushed again when the deliveries before it have ended
            leased = evolve_delivery(row, lease_owner=worker_id, lease_expires_at=lease_until)
            rows[delivery_id] = leased
            lease(delivery_id, lease_until)
            claimed.append(leased)
            return True

        self._due.take_due(now.timestamp(), limit, exclude_endpoints, take)
        return claimed

    async def record(self, outcomes: Sequence[AttemptOutcome]) -> int:
        applied = 0
        for outcome in outcomes:
            row = self._rows.get(outcome.delivery_id)
            if not isinstance(row, WebhookDelivery) or row.lease_owner != outcome.worker_id:
                continue
            updated = apply_outcome(row, outcome, max_stored_attempts=self._max_attempts)
            self._leased.pop(row.id, None)
            if updated.status is DeliveryStatus.PENDING:
                self._rows[row.id] = updated
                self._push(updated)
            else:
                self._rows[row.id] = finished_rows.encode(updated)
                if updated.ordering_key is not None:
                    following = self._rows.get(self._keyed.finish(updated) or "")
                    if isinstance(following, WebhookDelivery) and following.lease_owner is None:
                        self._push(following)  # its turn
            applied += 1
        return applied

    async def release(self, delivery_ids: Sequence[str], *, worker_id: str) -> None:
        for delivery_id in delivery_ids:
            row = self._rows.get(delivery_id)
            if not isinstance(row, WebhookDelivery) or row.lease_owner != worker_id:
                continue
            released = dataclasses.replace(row, lease_owner=None, lease_expires_at=None)
            self._rows[delivery_id] = released
            self._leased.pop(delivery_id, None)
            self._push(released)

    async def get(self, delivery_id: str) -> WebhookDelivery | None:
        row = self._rows.get(delivery_id)
        return None if row is None else _record(row)

    async def list(
        self, filter: DeliveryFilter, *, limit: int = 100, cursor: str | None = None
    ) -> DeliveryPage:
        after = None if cursor is None else decode_cursor(cursor)
        listed: builtins.list[tuple[datetime, str, WebhookDelivery | FinishedRow]] = []
        for row in self._rows.values():
            entry: tuple[datetime, str, WebhookDelivery | FinishedRow]
            if isinstance(row, WebhookDelivery):
                if not filter.matches(row):
                    continue
                entry = (row.created_at, row.id, row)
            elif finished_rows.matches(filter, row):
                entry = (row[finished_rows.CREATED_AT], row[finished_rows.ID], row)
            else:
                continue
            if after is None or is_after_cursor(entry[:2], after):
                listed.append(entry)
        # Newest first by (created_at, id), which is unique. Rows sit in about that order
        # already (oldest first), which the sort finds and reverses in one pass.
        listed.sort(reverse=True)
        page = [_record(row) for _, _, row in listed[: max(0, limit)]]
        more = len(listed) > len(page)
        return DeliveryPage(
            items=tuple(page), next_cursor=encode_cursor(page[-1]) if more and page else None
        )

    async def stats(self, filter: DeliveryFilter) -> DeliveryStats:
        statuses: Counter[DeliveryStatus] = Counter()
        by_type: Counter[str] = Counter()
        attempts = 0
        latency_sum = 0.0
        latency_n = 0
        for row in self._rows.values():
            latency: float | None
            if isinstance(row, WebhookDelivery):
                if not filter.matches(row):
                    continue
                statuses[row.status] += 1
                by_type[row.event_type.value] += 1
                attempts += row.attempt_count
                last = row.last_attempt
                latency = None if last is None else last.latency_ms
            else:
                if not finished_rows.matches(filter, row):
                    continue
                statuses[finished_rows.status(row)] += 1
                by_type[row[finished_rows.EVENT_TYPE]] += 1
                attempts += row[finished_rows.ATTEMPT_COUNT]
                latency = row[finished_rows.LAST_LATENCY_MS]
            if latency is not None:
                latency_sum += latency
                latency_n += 1
        return DeliveryStats(
            total=sum(statuses.values()),
            pending=statuses[DeliveryStatus.PENDING],
            success=statuses[DeliveryStatus.SUCCESS],
            failed=statuses[DeliveryStatus.FAILED],
            exhausted=statuses[DeliveryStatus.EXHAUSTED],
            total_attempts=attempts,
            average_latency_ms=latency_sum / latency_n if latency_n else 0.0,
            by_event_type=dict(by_type),
        )

    async def queue_stats(self, *, now: datetime) -> QueueStats:
        due = scheduled = leased = 0
        oldest: datetime | None = None
        upcoming: datetime | None = None
        for row in self._rows.values():
            if not isinstance(row, WebhookDelivery) or row.next_attempt_at is None:
                continue  # finished
            at = row.next_attempt_at
            if row.lease_expires_at is not None and row.lease_expires_at > now:
                leased += 1
            elif at <= now:
                due += 1
                oldest = at if oldest is None else min(oldest, at)
            else:
                scheduled += 1
                upcoming = at if upcoming is None else min(upcoming, at)
        return QueueStats(due, scheduled, leased, oldest, upcoming)

    async def activity(self, *, since: datetime, now: datetime) -> DeliveryActivity:
        column = {status.value: i for i, status in enumerate(FINISHED_STATUSES)}
        minutes: dict[int, builtins.list[int]] = {}
        endpoints: dict[str, builtins.list[int]] = {}
        timed: builtins.list[tuple[datetime, float]] = []
        completed_at = finished_rows.COMPLETED_AT
        for row in self._rows.values():
            if isinstance(row, WebhookDelivery):
                continue  # pending
            done = row[completed_at]
            if done is not None and since <= done <= now:
                status = column[row[finished_rows.STATUS]]
                minutes.setdefault(epoch_minute(done), [0, 0, 0])[status] += 1
                endpoints.setdefault(row[finished_rows.ENDPOINT_ID], [0, 0, 0])[status] += 1
                latency = row[finished_rows.LAST_LATENCY_MS]
                if latency is not None:
                    timed.append((done, latency))
        newest = heapq.nlargest(LATENCY_SAMPLE, timed, key=lambda pair: pair[0])
        latencies = sorted(latency for _, latency in newest)
        picks = {r: latencies[r - 1] for r in percentile_ranks(len(latencies)).values() if r}
        return DeliveryActivity(
            since=since,
            now=now,
            per_minute=minute_counts((m, c[0], c[1], c[2]) for m, c in minutes.items()),
            latency=latency_percentiles(len(latencies), picks),
            by_endpoint=endpoint_outcomes((e, c[0], c[1], c[2]) for e, c in endpoints.items()),
        )

    async def requeue(
        self, filter: DeliveryFilter, *, now: datetime, ids: Sequence[str] | None = None
    ) -> int:
        wanted = set(ids) if ids is not None else None
        count = 0
        for delivery_id, row in list(self._rows.items()):
            if isinstance(row, WebhookDelivery) or not finished_rows.matches(filter, row):
                continue  # pending, or not asked for
            if wanted is not None and delivery_id not in wanted:
                continue
            queued = dataclasses.replace(
                finished_rows.decode(row),
                status=DeliveryStatus.PENDING,
                next_attempt_at=now,
                completed_at=None,
                lease_owner=None,
                lease_expires_at=None,
            )
            self._rows[delivery_id] = queued
            if queued.ordering_key is not None:
                self._keyed.add(queued, pending=True)
            self._push(queued)
            count += 1
        return count

    async def purge(self, *, older_than: datetime) -> int:
        created_at = finished_rows.CREATED_AT
        doomed = [
            row
            for row in self._rows.values()
            if not isinstance(row, WebhookDelivery) and row[created_at] < older_than
        ]
        for row in doomed:
            self._forget(row)
        return len(doomed)

    async def purge_finished(self, cutoffs: RetentionCutoffs, *, limit: int) -> int:
        wanted = dict(cutoffs.by_status())
        if not wanted or limit <= 0:
            return 0
        newest = max(wanted.values())
        doomed: list[FinishedRow] = []
        # Rows sit in insertion order, which is creation order for rows the runtime writes:
        # the walk stops at the first row too young for any cutoff instead of visiting all.
        for row in self._rows.values():
            created_at = _created_at(row)
            if created_at >= newest:
                break
            if isinstance(row, WebhookDelivery):
                continue  # pending
            cutoff = wanted.get(finished_rows.status(row))
            if cutoff is not None and created_at < cutoff:
                doomed.append(row)
                if len(doomed) >= limit:
                    break
        for row in doomed:
            self._forget(row)
        return len(doomed)

    async def trim(self, max_rows: int, *, limit: int) -> int:
        """Delete the oldest finished deliveries while more than ``max_rows`` are kept, up to
        ``limit`` of them; pending ones are never deleted. Returns how many went."""
        excess = min(len(self._rows) - max_rows, limit)
        if excess <= 0:
            return 0
        doomed: list[FinishedRow] = []
        for row in self._rows.values():
            if not isinstance(row, WebhookDelivery):
                doomed.append(row)
                if len(doomed) >= excess:
                    break
        for row in doomed:
            self._forget(row)
        return len(doomed)

    async def scan(
        self, *, after: str | None = None, limit: int = 500
    ) -> builtins.list[WebhookDelivery]:
        ids = sorted(i for i in self._rows if after is None or i > after)
        return [_record(self._rows[i]) for i in ids[: max(0, limit)]]

    async def rewrite_payloads(self, rewrites: Sequence[PayloadRewrite]) -> int:
        applied = 0
        for rewrite in rewrites:
            row = self._rows.get(rewrite.delivery_id)
            if row is None:
                continue
            delivery = _record(row)
            if delivery.payload != rewrite.expected_payload:
                continue
            rewritten = dataclasses.replace(
                delivery,
                payload=rewrite.payload,
                to_hash=rewrite.to_hash,
                from_hash=rewrite.from_hash,
            )
            self._rows[delivery.id] = (
                rewritten if isinstance(row, WebhookDelivery) else finished_rows.encode(rewritten)
            )
            applied += 1
        return applied

    def _forget(self, row: FinishedRow) -> None:
        """Delete a finished row (its (endpoint, event) pair may be written again)."""
        delivery_id = row[finished_rows.ID]
        del self._rows[delivery_id]
        self._keys.discard(_key(row[finished_rows.ENDPOINT_ID], row[finished_rows.EVENT_ID]))
        self._keyed.forget(delivery_id)

    def _push(self, delivery: WebhookDelivery) -> None:
        assert delivery.next_attempt_at is not None
        self._due.push(delivery.endpoint_id, delivery.next_attempt_at.timestamp(), delivery.id)

    def _lease(self, delivery_id: str, until: datetime) -> None:
        self._leased[delivery_id] = until
        heapq.heappush(self._expiries, (until, delivery_id))

    def _reclaim_expired(self, now: datetime) -> None:
        """Make rows whose lease ran out claimable again (looking only at the expired ones)."""
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            until, delivery_id = heapq.heappop(expiries)
            if self._leased.get(delivery_id) != until:
                continue  # recorded, released or leased again since
            del self._leased[delivery_id]
            row = self._rows[delivery_id]
            assert isinstance(row, WebhookDelivery)  # leased, so pending
            released = dataclasses.replace(row, lease_owner=None, lease_expires_at=None)
            self._rows[delivery_id] = released
            self._push(released)


def _claimable(row: WebhookDelivery | FinishedRow | None, due_ts: float) -> bool:
    """Whether an index entry still stands for a claimable row (rows change, entries stay)."""
    return (
        isinstance(row, WebhookDelivery)
        and row.lease_owner is None
        and row.next_attempt_at is not None
        and row.next_attempt_at.timestamp() == due_ts
    )


def _record(row: WebhookDelivery | FinishedRow) -> WebhookDelivery:
    return row if isinstance(row, WebhookDelivery) else finished_rows.decode(row)


def _created_at(row: WebhookDelivery | FinishedRow) -> datetime:
    if isinstance(row, WebhookDelivery):
        return row.created_at
    created_at: datetime = row[finished_rows.CREATED_AT]
    return created_at


def _key(endpoint_id: str, event_id: str) -> str:
    return f"{endpoint_id}\x00{event_id}"


class _KeyedQueues:
    """Ordered delivery: the unfinished deliveries of each (endpoint, ordering key), in insert
    order. Only the first of a key is claimable; the others stay out of the due index until it
    ends. Rows without an ordering key never come here."""

    __slots__ = ("_inserted", "_position", "_queues")

    def __init__(self) -> None:
        self._inserted = 0
        self._position: dict[str, int] = {}  # delivery id -> insert order, kept while stored
        self._queues: dict[str, list[tuple[int, str]]] = {}

    def add(self, delivery: WebhookDelivery, *, pending: bool) -> None:
        """Note an inserted (or re-queued) delivery; ``pending`` ones join their key's queue."""
        position = self._position.get(delivery.id)
        if position is None:
            self._inserted += 1
            position = self._position[delivery.id] = self._inserted
        if pending:
            queue = self._queues.setdefault(_queue_key(delivery), [])
            bisect.insort(queue, (position, delivery.id))

    def is_next(self, delivery: WebhookDelivery) -> bool:
        queue = self._queues.get(_queue_key(delivery))
        return queue is not None and queue[0][1] == delivery.id  # queues are never empty

    def finish(self, delivery: WebhookDelivery) -> str | None:
        """Drop an ended delivery from its key's queue; the id of the key's next, if any."""
        key = _queue_key(delivery)
        queue = self._queues.get(key)
        entry = (self._position.get(delivery.id, 0), delivery.id)
        if not queue or entry not in queue:
            return None
        queue.remove(entry)
        if not queue:
            del self._queues[key]
            return None
        return queue[0][1]

    def forget(self, delivery_id: str) -> None:
        self._position.pop(delivery_id, None)


def _queue_key(delivery: WebhookDelivery) -> str:
    return f"{delivery.endpoint_id}\x00{delivery.ordering_key}"


def create_in_memory_persistence(
    *, max_stored_attempts: int = DEFAULT_MAX_STORED_ATTEMPTS
) -> WebhookPersistence:
    """A fresh in-memory endpoint store and delivery store."""
    return WebhookPersistence(
        endpoint_store=InMemoryEndpointStore(),
        delivery_store=InMemoryDeliveryStore(max_stored_attempts=max_stored_attempts),
    )
