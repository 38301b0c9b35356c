"""The store protocol on Cloudflare D1, over the REST API (or our Worker speaking it).

Every multi-statement operation is one batch: atomic, and one round trip. D1 has no
``BEGIN`` and no ``SKIP LOCKED``; claiming is one conditional ``UPDATE … RETURNING`` guarded by
lease expiry, so two workers never lease the same row.

Retries after a timeout or 5xx may replay a batch D1 already applied, so every write is safe
to replay: intake is insert-or-ignore on (endpoint_id, event_id) and reconciles which rows are
its own; recording needs the lease, which the first application cleared; a replayed claim finds
its rows leased (they come back when the lease expires, never to two workers at once).
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any

from ...errors import DuplicateEndpointError, EndpointNotFoundError, StoreError
from ...models import (
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
)
from ..protocol import (
    DEFAULT_MAX_STORED_ATTEMPTS,
    Tally,
    WebhookPersistence,
    decode_cursor,
    encode_cursor,
    endpoint_outcomes,
    latency_percentiles,
    minute_counts,
    with_added_columns,
)
from ..rows import attempt_to_json, ceil_millis, dumps, from_millis, to_millis
from . import queries as q
from .client import D1Client, D1Statement, D1Value
from .rows import (
    ENDPOINT_WRITE_COLUMNS,
    delivery_from_row,
    delivery_params,
    endpoint_from_row,
    endpoint_params,
    endpoint_update_params,
    opt_ms,
)
from .schema import (
    DEFAULT_DELIVERY_TABLE,
    DEFAULT_ENDPOINT_TABLE,
    D1Tables,
    initialize_webhook_schema,
)

__all__ = [
    "DEFAULT_MAX_STORED_ATTEMPTS",
    "D1DeliveryStore",
    "D1EndpointStore",
    "SchemaGate",
    "create_d1_persistence",
]


class SchemaGate:
    """Runs the schema initialisation once, on first use (again after a failure)."""

    def __init__(self, initialize: Callable[[], Awaitable[None]] | None) -> None:
        self._initialize = initialize
        self._done = initialize is None
        self._lock = asyncio.Lock()

    async def ready(self) -> None:
        if self._done:
            return
        async with self._lock:
            if self._done:
                return
            assert self._initialize is not None
            await self._initialize()
            self._done = True


def _fmt(sql: str, t: D1Tables, where: str = "") -> str:
    return sql.format(e=t.endpoints, d=t.deliveries, where=where)


def _params(values: Sequence[object]) -> tuple[D1Value, ...]:
    out: list[D1Value] = []
    for v in values:
        if v is not None and not isinstance(v, str | int | float):
            raise TypeError(f"cannot bind {type(v).__name__}")
        out.append(v)
    return tuple(out)


def _delivery(row: dict[str, Any]) -> WebhookDelivery:
    """A stored delivery row as a model, added columns included."""
    return with_added_columns(delivery_from_row(row), row)


def _delivery_params(delivery: WebhookDelivery) -> tuple[D1Value, ...]:
    """Insert parameters in :data:`queries.DELIVERY_WRITE_COLUMNS` order."""
    return (*delivery_params(delivery), delivery.to_hash, delivery.from_hash, delivery.ordering_key)


def _json_list(values: Collection[str]) -> str:
    return dumps(sorted(values))


class D1EndpointStore:
    """Endpoints in a D1 table; the URL is unique (a second endpoint with it is an error)."""

    def __init__(self, client: D1Client, tables: D1Tables, gate: SchemaGate) -> None:
        self._client = client
        self._t = tables
        self._gate = gate

    @property
    def client(self) -> D1Client:
        """The D1 client (its ``round_trips`` counts requests, for benchmarks)."""
        return self._client

    async def add(self, endpoint: WebhookEndpoint) -> None:
        await self._gate.ready()
        response = await self._client.execute(
            [
                D1Statement(_fmt(q.ENDPOINT_CLASHES, self._t), (endpoint.id, endpoint.url)),
                D1Statement(_fmt(q.ENDPOINT_INSERT, self._t), endpoint_params(endpoint)),
            ]
        )
        clashes, inserted = response.results
        if inserted.rows:
            return
        for row in clashes.rows:
            if row["id"] == endpoint.id:
                # A replayed request finds the row its first attempt wrote: that is success.
                if response.maybe_applied_earlier and endpoint_from_row(row) == endpoint:
                    return
                raise DuplicateEndpointError(
                    f"Webhook endpoint id {endpoint.id} already exists",
                    field="id",
                    value=endpoint.id,
                )
        for row in clashes.rows:
            if row["url"] == endpoint.url:
                raise DuplicateEndpointError(
                    f"Webhook endpoint URL {endpoint.url} is already used by endpoint {row['id']}",
                    field="url",
                    value=endpoint.url,
                )
        raise StoreError(f"endpoint {endpoint.id} was neither added nor found clashing")

    async def update(self, endpoint: WebhookEndpoint, *, reset_health: bool = False) -> None:
        await self._gate.ready()
        query = q.ENDPOINT_UPDATE_RESETTING_HEALTH if reset_health else q.ENDPOINT_UPDATE
        exists, owner, updated = await self._client.batch(
            [
                D1Statement(_fmt(q.ENDPOINT_EXISTS, self._t), (endpoint.id,)),
                D1Statement(_fmt(q.ENDPOINT_URL_OWNER, self._t), (endpoint.url, endpoint.id)),
                D1Statement(_fmt(query, self._t), endpoint_update_params(endpoint)),
            ]
        )
        if updated.rows:
            return
        if not exists.rows:
            raise EndpointNotFoundError(endpoint.id)
        other = owner.rows[0]["id"] if owner.rows else "another endpoint"
        raise DuplicateEndpointError(
            f"Webhook endpoint URL {endpoint.url} is already used by endpoint {other}",
            field="url",
            value=endpoint.url,
        )

    async def remove(self, endpoint_id: str) -> bool:
        await self._gate.ready()
        result = await self._client.query(_fmt(q.ENDPOINT_DELETE, self._t), (endpoint_id,))
        return bool(result.rows)

    async def get(self, endpoint_id: str) -> WebhookEndpoint | None:
        await self._gate.ready()
        result = await self._client.query(_fmt(q.ENDPOINT_GET, self._t), (endpoint_id,))
        return endpoint_from_row(result.rows[0]) if result.rows else None

    async def list(self) -> list[WebhookEndpoint]:
        await self._gate.ready()
        result = await self._client.query(_fmt(q.ENDPOINT_LIST, self._t))
        return [endpoint_from_row(row) for row in result.rows]

    async def record_health(
        self, endpoint_id: str, *, succeeded: bool, failures: int, at: datetime
    ) -> WebhookEndpoint | None:
        await self._gate.ready()
        params: tuple[D1Value, ...]
        if succeeded:
            sql, params = q.ENDPOINT_HEALTH_SUCCESS, (endpoint_id, to_millis(at))
        else:
            sql, params = q.ENDPOINT_HEALTH_FAILURE, (endpoint_id, failures, to_millis(at))
        result = await self._client.query(_fmt(sql, self._t), params)
        return endpoint_from_row(result.rows[0]) if result.rows else None

    async def rewrite_sealed(
        self, endpoint_id: str, *, expected: WebhookEndpoint, replacement: WebhookEndpoint
    ) -> bool:
        await self._gate.ready()
        result = await self._client.query(
            _fmt(q.ENDPOINT_REWRITE_SEALED, self._t),
            (endpoint_id, *_sealed_params(replacement), *_sealed_params(expected)),
        )
        return bool(result.rows)


class D1DeliveryStore:
    """The delivery outbox in a D1 table."""

    def __init__(
        self,
        client: D1Client,
        tables: D1Tables,
        gate: SchemaGate,
        *,
        max_stored_attempts: int = DEFAULT_MAX_STORED_ATTEMPTS,
    ) -> None:
        if max_stored_attempts < 1:
            raise ValueError("max_stored_attempts must be >= 1")
        self._client = client
        self._t = tables
        self._gate = gate
        self._max_attempts = max_stored_attempts

    @property
    def client(self) -> D1Client:
        """The D1 client (its ``round_trips`` counts requests, for benchmarks)."""
        return self._client

    # -- intake -------------------------------------------------------------------------------

    async def insert_many(
        self, deliveries: Sequence[WebhookDelivery], *, connection: object | None = None
    ) -> list[str]:
        if connection is not None:
            raise StoreError(
                "the D1 store cannot join a caller's transaction (D1 over HTTP has none)"
            )
        if not deliveries:
            return []
        await self._gate.ready()
        statements = self._insert_statements(deliveries)
        ids = [d.id for d in deliveries]
        # Last in the batch, so it sees the rows as the batch left them.
        statements.append(D1Statement(_fmt(q.DELIVERY_IDS_PRESENT, self._t), (_json_list(ids),)))
        response = await self._client.execute(statements)
        if response.maybe_applied_earlier:
            # An earlier attempt may have written our rows; this attempt then inserted none of
            # them. Our ids are unique to this call, so every one present is ours.
            new = {str(r["id"]) for r in response.results[-1].rows}
        else:
            new = {str(r["id"]) for result in response.results[:-1] for r in result.rows}
        return [i for i in ids if i in new]

    def _insert_statements(self, deliveries: Sequence[WebhookDelivery]) -> list[D1Statement]:
        """Multi-row INSERTs, each within D1's bound-parameter and statement-length limits."""
        limits = self._client.limits
        per_row = len(q.DELIVERY_WRITE_COLUMNS)
        head = _fmt(q.DELIVERY_INSERT_HEAD, self._t)
        tail = q.DELIVERY_INSERT_TAIL
        rows_per_statement = max(1, limits.max_params // per_row)
        row_sql_bytes = len(q.DELIVERY_INSERT_ROW) + 2
        rows_per_statement = min(
            rows_per_statement,
            max(1, (limits.max_statement_bytes - len(head) - len(tail)) // row_sql_bytes),
        )
        out: list[D1Statement] = []
        for start in range(0, len(deliveries), rows_per_statement):
            chunk = deliveries[start : start + rows_per_statement]
            sql = head + ", ".join(q.DELIVERY_INSERT_ROW for _ in chunk) + tail
            params = tuple(p for d in chunk for p in _delivery_params(d))
            out.append(D1Statement(sql, params))
        return out

    # -- claim, record, release ---------------------------------------------------------------

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        exclude_endpoints: Collection[str] = (),
    ) -> list[WebhookDelivery]:
        if limit <= 0:
            return []
        await self._gate.ready()
        (result,) = await self._client.batch(
            [
                D1Statement(
                    _fmt(q.DELIVERY_CLAIM, self._t),
                    (
                        worker_id,
                        to_millis(lease_until),
                        to_millis(now),
                        _json_list(exclude_endpoints),
                        limit,
                    ),
                )
            ]
        )
        claimed = [_delivery(row) for row in result.rows]
        # RETURNING has no defined order; hand rows out oldest due first, like the query.
        claimed.sort(key=lambda d: (d.next_attempt_at or d.created_at, d.id))
        return claimed

    async def record(self, outcomes: Sequence[AttemptOutcome]) -> int:
        if not outcomes:
            return 0
        await self._gate.ready()
        sql = _fmt(q.DELIVERY_RECORD, self._t)
        statements = [
            D1Statement(
                sql,
                (
                    o.delivery_id,
                    o.worker_id,
                    dumps(attempt_to_json(o.attempt)) if o.attempt is not None else None,
                    self._max_attempts,
                    o.status.value,
                    opt_ms(o.next_attempt_at) if o.status is DeliveryStatus.PENDING else None,
                    opt_ms(o.completed_at),
                    o.last_error,
                ),
            )
            for o in outcomes
        ]
        results = await self._client.batch(statements)
        return sum(len(r.rows) for r in results)

    async def release(self, delivery_ids: Sequence[str], *, worker_id: str) -> None:
        if not delivery_ids:
            return
        await self._gate.ready()
        await self._client.batch(
            [D1Statement(_fmt(q.DELIVERY_RELEASE, self._t), (worker_id, _json_list(delivery_ids)))]
        )

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, delivery_id: str) -> WebhookDelivery | None:
        await self._gate.ready()
        result = await self._client.query(_fmt(q.DELIVERY_GET, self._t), (delivery_id,))
        return _delivery(result.rows[0]) if result.rows else None

    async def list(
        self, filter: DeliveryFilter, *, limit: int = 100, cursor: str | None = None
    ) -> DeliveryPage:
        clauses = _filter_clauses(filter)
        if cursor is not None:
            created, last_id = decode_cursor(cursor)
            stamp = to_millis(created)
            clauses.append(
                ("(created_at < ? OR (created_at = ? AND id < ?))", (stamp, stamp, last_id))
            )
        if limit <= 0:
            return DeliveryPage(items=(), next_cursor=None)
        await self._gate.ready()
        where = q.Where.of(clauses)
        result = await self._client.query(
            _fmt(q.DELIVERY_LIST, self._t, where.sql), _params((*where.params, limit + 1))
        )
        rows = [_delivery(row) for row in result.rows]
        page = rows[:limit]
        more = len(rows) > limit
        return DeliveryPage(
            items=tuple(page), next_cursor=encode_cursor(page[-1]) if more and page else None
        )

    async def stats(self, filter: DeliveryFilter) -> DeliveryStats:
        await self._gate.ready()
        where = q.Where.of(_filter_clauses(filter))
        params = _params(where.params)
        totals, by_type = await self._client.batch(
            [
                D1Statement(_fmt(q.DELIVERY_STATS, self._t, where.sql), params),
                D1Statement(_fmt(q.DELIVERY_STATS_BY_TYPE, self._t, where.sql), params),
            ]
        )
        row: dict[str, Any] = totals.rows[0] if totals.rows else {}
        average = row.get("average_latency_ms")
        return DeliveryStats(
            total=int(row.get("total") or 0),
            pending=int(row.get("pending") or 0),
            success=int(row.get("success") or 0),
            failed=int(row.get("failed") or 0),
            exhausted=int(row.get("exhausted") or 0),
            total_attempts=int(row.get("total_attempts") or 0),
            average_latency_ms=float(average) if average is not None else 0.0,
            by_event_type={str(r["event_type"]): int(r["n"]) for r in by_type.rows},
        )

    async def queue_stats(self, *, now: datetime) -> QueueStats:
        await self._gate.ready()
        (result,) = await self._client.batch(
            [D1Statement(_fmt(q.DELIVERY_QUEUE_STATS, self._t), (to_millis(now),))]
        )
        row: dict[str, Any] = result.rows[0] if result.rows else {}
        oldest, upcoming = row.get("oldest_due_at"), row.get("next_due_at")
        return QueueStats(
            due=int(row.get("due") or 0),
            scheduled=int(row.get("scheduled") or 0),
            leased=int(row.get("leased") or 0),
            oldest_due_at=None if oldest is None else from_millis(int(oldest)),
            next_due_at=None if upcoming is None else from_millis(int(upcoming)),
        )

    async def activity(self, *, since: datetime, now: datetime) -> DeliveryActivity:
        await self._gate.ready()
        window = (ceil_millis(since), to_millis(now))
        minutes, endpoints, picks = await self._client.batch(
            [
                D1Statement(_fmt(q.DELIVERY_FINISHED_PER_MINUTE, self._t), window),
                D1Statement(_fmt(q.DELIVERY_FINISHED_PER_ENDPOINT, self._t), window),
                D1Statement(
                    _fmt(q.DELIVERY_LATENCY_PERCENTILES, self._t), (*window, LATENCY_SAMPLE)
                ),
            ]
        )
        samples = max((int(r["samples"]) for r in picks.rows), default=0)
        return DeliveryActivity(
            since=since,
            now=now,
            per_minute=minute_counts(_tallies(minutes.rows, "minute")),
            latency=latency_percentiles(
                samples, {int(r["position"]): float(r["latency"]) for r in picks.rows}
            ),
            by_endpoint=endpoint_outcomes(_tallies(endpoints.rows, "endpoint")),
        )

    # -- maintenance ----------------------------------------------------------------------------

    async def requeue(
        self, filter: DeliveryFilter, *, now: datetime, ids: Sequence[str] | None = None
    ) -> int:
        if ids is not None and not ids:
            return 0
        await self._gate.ready()
        clauses: list[tuple[str, Sequence[object]]] = [("status <> 'pending'", ())]
        clauses += _filter_clauses(filter)
        if ids is not None:
            clauses.append(("id IN (SELECT value FROM json_each(?))", (_json_list(ids),)))
        where = q.Where.of(clauses)
        result = await self._client.query(
            _fmt(q.DELIVERY_REQUEUE, self._t, where.sql), _params((to_millis(now), *where.params))
        )
        return result.changes

    async def purge(self, *, older_than: datetime) -> int:
        await self._gate.ready()
        result = await self._client.query(_fmt(q.DELIVERY_PURGE, self._t), (to_millis(older_than),))
        return result.changes

    async def purge_finished(self, cutoffs: RetentionCutoffs, *, limit: int) -> int:
        await self._gate.ready()
        deleted = 0
        sql = _fmt(q.DELIVERY_PURGE_FINISHED, self._t)
        for status, cutoff in cutoffs.by_status():
            if deleted >= limit:
                break
            params = (status.value, ceil_millis(cutoff), limit - deleted)
            deleted += (await self._client.query(sql, params)).changes
        return deleted

    async def scan(
        self, *, after: str | None = None, limit: int = 500
    ) -> builtins.list[WebhookDelivery]:
        if limit <= 0:
            return []
        await self._gate.ready()
        result = await self._client.query(_fmt(q.DELIVERY_SCAN, self._t), (after or "", limit))
        return [_delivery(row) for row in result.rows]

    async def rewrite_payloads(self, rewrites: Sequence[PayloadRewrite]) -> int:
        if not rewrites:
            return 0
        await self._gate.ready()
        sql = _fmt(q.DELIVERY_REWRITE_PAYLOAD, self._t)
        results = await self._client.batch(
            [
                D1Statement(
                    sql, (r.delivery_id, r.expected_payload, r.payload, r.to_hash, r.from_hash)
                )
                for r in rewrites
            ]
        )
        return sum(len(r.rows) for r in results)


def _sealed_params(endpoint: WebhookEndpoint) -> tuple[D1Value, ...]:
    """An endpoint's sealed fields as stored: ``secret``, the two JSON columns, ``client_key``."""
    params = dict(zip(ENDPOINT_WRITE_COLUMNS, endpoint_params(endpoint), strict=True))
    return tuple(
        params[c] for c in ("secret", "previous_secrets_json", "headers_json", "client_key")
    )


def _tallies(rows: Sequence[dict[str, Any]], key: str) -> list[Tally]:
    """Activity aggregates: the key column and the counts of the finished statuses."""
    return [
        (row[key], int(row["success"] or 0), int(row["failed"] or 0), int(row["exhausted"] or 0))
        for row in rows
    ]


def _filter_clauses(f: DeliveryFilter) -> list[tuple[str, Sequence[object]]]:
    clauses: list[tuple[str, Sequence[object]]] = []
    if f.endpoint_id is not None:
        clauses.append(("endpoint_id = ?", (f.endpoint_id,)))
    if f.event_type is not None:
        clauses.append(("event_type = ?", (f.event_type.value,)))
    if f.event_id is not None:
        clauses.append(("event_id = ?", (f.event_id,)))
    if f.statuses:
        statuses = [s.value for s in f.statuses]
        clauses.append(("status IN (SELECT value FROM json_each(?))", (_json_list(statuses),)))
    if f.created_after is not None:
        clauses.append(("created_at >= ?", (ceil_millis(f.created_after),)))
    if f.created_before is not None:
        clauses.append(("created_at < ?", (ceil_millis(f.created_before),)))
    if f.to_hash is not None:
        clauses.append(("to_hash = ?", (f.to_hash,)))
    if f.from_hash is not None:
        clauses.append(("from_hash = ?", (f.from_hash,)))
    return clauses


def create_d1_persistence(
    client: D1Client,
    *,
    endpoint_table_name: str = DEFAULT_ENDPOINT_TABLE,
    delivery_table_name: str = DEFAULT_DELIVERY_TABLE,
    initialize_schema: bool = True,
    upgrade_original: bool = False,
    max_stored_attempts: int = DEFAULT_MAX_STORED_ATTEMPTS,
    close_client: bool = False,
) -> WebhookPersistence:
    """Endpoint and delivery stores on one D1 database.

    With ``initialize_schema`` (the default, as in the original) the tables are created on
    first use; ``init`` does it eagerly. ``close`` closes ``client`` when ``close_client``.
    """
    tables = D1Tables(endpoint_table_name, delivery_table_name)

    async def initialize() -> None:
        await initialize_webhook_schema(
            client,
            endpoint_table_name=tables.endpoint_table,
            delivery_table_name=tables.delivery_table,
            upgrade_original=upgrade_original,
        )

    gate = SchemaGate(initialize if initialize_schema else None)

    async def close() -> None:
        await client.close()

    return WebhookPersistence(
        endpoint_store=D1EndpointStore(client, tables, gate),
        delivery_store=D1DeliveryStore(
            client, tables, gate, max_stored_attempts=max_stored_attempts
        ),
        init=gate.ready,
        close=close if close_client else None,
    )
