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
    WebhookPersistence,
    decode_cursor,
    encode_cursor,
    endpoint_outcomes,
    finished_tallies,
    latency_percentiles,
    minute_counts,
    with_added_columns,
)
from ..rows import SEALED_COLUMNS, attempt_to_json, ceil_millis, dumps, from_millis, to_millis
from ..sqlbind import SQLITE, delivery_where
from ..sqlfiles import TableNames
from .client import D1Client, D1Result, D1Statement, D1Value
from .queries import D1Query, load_queries
from .rows import (
    delivery_from_row,
    delivery_params,
    endpoint_from_row,
    endpoint_values,
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


def _queries(t: D1Tables) -> dict[str, D1Query]:
    return load_queries(TableNames(t.endpoint_table, t.delivery_table))


async def _run(client: D1Client, statement: D1Statement) -> D1Result:
    return await client.query(statement.sql, statement.params)


def _delivery(row: dict[str, Any]) -> WebhookDelivery:
    """A stored delivery row as a model, added columns included."""
    return with_added_columns(delivery_from_row(row), row)


def _delivery_params(delivery: WebhookDelivery) -> tuple[D1Value, ...]:
    """Insert parameters in the order ``insert_deliveries`` names the columns."""
    return (*delivery_params(delivery), delivery.to_hash, delivery.from_hash, delivery.ordering_key)


def _json_list(values: Collection[str]) -> str:
    return dumps(sorted(values))


class D1EndpointStore:
    """Endpoints in a D1 table; the URL is unique (a second endpoint with it is an error)."""

    def __init__(self, client: D1Client, tables: D1Tables, gate: SchemaGate) -> None:
        self._client = client
        self._q = _queries(tables)
        self._gate = gate

    @property
    def client(self) -> D1Client:
        """The D1 client (its ``round_trips`` counts requests, for benchmarks)."""
        return self._client

    async def add(self, endpoint: WebhookEndpoint) -> None:
        await self._gate.ready()
        response = await self._client.execute(
            [
                self._q["endpoint_clashes"].bind(id=endpoint.id, url=endpoint.url),
                self._q["endpoint_insert"].bind(endpoint_values(endpoint)),
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
        # The health columns are not in the update: only record_health writes them.
        values = endpoint_values(endpoint)
        exists, owner, updated = await self._client.batch(
            [
                self._q["endpoint_exists"].bind(id=endpoint.id),
                self._q["endpoint_url_owner"].bind(url=endpoint.url, id=endpoint.id),
                self._q["endpoint_update"].bind(values, reset_health=reset_health),
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
        result = await _run(self._client, self._q["endpoint_delete"].bind(id=endpoint_id))
        return bool(result.rows)

    async def get(self, endpoint_id: str) -> WebhookEndpoint | None:
        await self._gate.ready()
        result = await _run(self._client, self._q["endpoint_get"].bind(id=endpoint_id))
        return endpoint_from_row(result.rows[0]) if result.rows else None

    async def list(self) -> list[WebhookEndpoint]:
        await self._gate.ready()
        result = await _run(self._client, self._q["endpoint_list"].bind())
        return [endpoint_from_row(row) for row in result.rows]

    async def record_health(
        self, endpoint_id: str, *, succeeded: bool, failures: int, at: datetime
    ) -> WebhookEndpoint | None:
        await self._gate.ready()
        if succeeded:
            statement = self._q["endpoint_health_success"].bind(id=endpoint_id, at=to_millis(at))
        else:
            statement = self._q["endpoint_health_failure"].bind(
                id=endpoint_id, failures=failures, at=to_millis(at)
            )
        result = await _run(self._client, statement)
        return endpoint_from_row(result.rows[0]) if result.rows else None

    async def rewrite_sealed(
        self, endpoint_id: str, *, expected: WebhookEndpoint, replacement: WebhookEndpoint
    ) -> bool:
        await self._gate.ready()
        values = _sealed_values(replacement)
        values.update({f"expected_{k}": v for k, v in _sealed_values(expected).items()})
        result = await _run(
            self._client, self._q["endpoint_rewrite_sealed"].bind(values, id=endpoint_id)
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
        self._q = _queries(tables)
        self._fragments = {
            name: q.named for name, q in self._q.items() if name.startswith("where_")
        }
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
        statements.append(self._q["existing_delivery_ids"].bind(ids=_json_list(ids)))
        response = await self._client.execute(statements)
        if response.maybe_applied_earlier:
            # An earlier attempt may have written our rows; this attempt then inserted none of
            # them. Our ids are unique to this call, so every one present is ours.
            new = {str(r["id"]) for r in response.results[-1].rows}
        else:
            new = {str(r["id"]) for result in response.results[:-1] for r in result.rows}
        return [i for i in ids if i in new]

    def _insert_statements(self, deliveries: Sequence[WebhookDelivery]) -> list[D1Statement]:
        """The shared multi-row INSERT, returning the ids it wrote (D1 reports no rowids to
        find them by), each within D1's bound-parameter and statement-length limits."""
        params = [_delivery_params(d) for d in deliveries]
        return self._multi_row(self._q["insert_deliveries"], (), params, tail=" RETURNING id")

    def _multi_row(
        self,
        query: D1Query,
        head: tuple[D1Value, ...],
        groups: Sequence[tuple[D1Value, ...]],
        *,
        tail: str = "",
    ) -> list[D1Statement]:
        """``query`` with its ``{rows}`` standing for as many ``(?, ...)`` groups as D1's limits
        let one statement bind, ``head`` bound first in each."""
        limits = self._client.limits
        group = "(" + ", ".join("?" for _ in groups[0]) + ")"
        fixed = len(query.sql) + len(tail)
        per_statement = max(
            1,
            min(
                (limits.max_params - len(head)) // len(groups[0]),
                (limits.max_statement_bytes - fixed) // (len(group) + 2),
            ),
        )
        out: list[D1Statement] = []
        for start in range(0, len(groups), per_statement):
            chunk = groups[start : start + per_statement]
            sql = query.sql.replace("{rows}", ", ".join(group for _ in chunk)) + tail
            out.append(D1Statement(sql, (*head, *(p for g in chunk for p in g))))
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
                # Leaving endpoints alone, the claim goes per endpoint (see the query).
                self._q[
                    "claim_deliveries_around" if exclude_endpoints else "claim_deliveries"
                ].bind(
                    worker_id=worker_id,
                    lease_until=to_millis(lease_until),
                    now=to_millis(now),
                    exclude=_json_list(exclude_endpoints),
                    limit=limit,
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
        # The cap binds first; then one group per outcome, in the order the query names them.
        groups = [
            (
                o.delivery_id,
                o.worker_id,
                None if o.attempt is None else dumps(attempt_to_json(o.attempt)),
                o.status.value,
                opt_ms(o.next_attempt_at) if o.status is DeliveryStatus.PENDING else None,
                opt_ms(o.completed_at),
                o.last_error,
                None if o.attempt is None else o.attempt.latency_ms,
            )
            for o in outcomes
        ]
        statements = self._multi_row(self._q["record_outcomes"], (self._max_attempts,), groups)
        results = await self._client.batch(statements)
        return sum(r.changes for r in results)

    async def release(self, delivery_ids: Sequence[str], *, worker_id: str) -> None:
        if not delivery_ids:
            return
        await self._gate.ready()
        await self._client.batch(
            [self._q["release_deliveries"].bind(worker_id=worker_id, ids=_json_list(delivery_ids))]
        )

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, delivery_id: str) -> WebhookDelivery | None:
        await self._gate.ready()
        result = await _run(self._client, self._q["delivery_get"].bind(id=delivery_id))
        return _delivery(result.rows[0]) if result.rows else None

    async def list(
        self, filter: DeliveryFilter, *, limit: int = 100, cursor: str | None = None
    ) -> DeliveryPage:
        before = decode_cursor(cursor) if cursor is not None else None
        if limit <= 0:
            return DeliveryPage(items=(), next_cursor=None)
        await self._gate.ready()
        where = delivery_where(self._fragments, filter, SQLITE, before=before)
        result = await _run(
            self._client, self._q["delivery_list"].filtered(where, {"limit": limit + 1})
        )
        rows = [_delivery(row) for row in result.rows]
        page = rows[:limit]
        more = len(rows) > limit
        return DeliveryPage(
            items=tuple(page), next_cursor=encode_cursor(page[-1]) if more and page else None
        )

    async def stats(self, filter: DeliveryFilter) -> DeliveryStats:
        await self._gate.ready()
        where = delivery_where(self._fragments, filter, SQLITE)
        totals, by_type = await self._client.batch(
            [
                self._q["delivery_stats"].filtered(where),
                self._q["delivery_stats_by_type"].filtered(where),
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
        (result,) = await self._client.batch([self._q["queue_stats"].bind(now=to_millis(now))])
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
        window: dict[str, D1Value] = {"since": ceil_millis(since), "now": to_millis(now)}
        tallies, picks = await self._client.batch(
            [
                self._q["finished_tallies"].bind(window),
                self._q["latency_percentiles"].bind(window, sample=LATENCY_SAMPLE),
            ]
        )
        samples = max((int(r["samples"]) for r in picks.rows), default=0)
        return DeliveryActivity(
            since=since,
            now=now,
            per_minute=minute_counts(finished_tallies(tallies.rows, "minute")),
            latency=latency_percentiles(
                samples, {int(r["position"]): float(r["latency"]) for r in picks.rows}
            ),
            by_endpoint=endpoint_outcomes(finished_tallies(tallies.rows, "endpoint")),
        )

    # -- maintenance ----------------------------------------------------------------------------

    async def requeue(
        self, filter: DeliveryFilter, *, now: datetime, ids: Sequence[str] | None = None
    ) -> int:
        if ids is not None and not ids:
            return 0
        await self._gate.ready()
        where = delivery_where(self._fragments, filter, SQLITE, finished=True, ids=ids)
        result = await _run(
            self._client, self._q["requeue"].filtered(where, {"now": to_millis(now)})
        )
        return result.changes

    async def purge(self, *, older_than: datetime) -> int:
        await self._gate.ready()
        result = await _run(self._client, self._q["purge"].bind(before=to_millis(older_than)))
        return result.changes

    async def purge_finished(self, cutoffs: RetentionCutoffs, *, limit: int) -> int:
        await self._gate.ready()
        deleted = 0
        query = self._q["purge_finished"]
        for status, cutoff in cutoffs.by_status():
            if deleted >= limit:
                break
            statement = query.bind(
                status=status.value, before=ceil_millis(cutoff), limit=limit - deleted
            )
            deleted += (await _run(self._client, statement)).changes
        return deleted

    async def scan(
        self, *, after: str | None = None, limit: int = 500
    ) -> builtins.list[WebhookDelivery]:
        if limit <= 0:
            return []
        await self._gate.ready()
        result = await _run(self._client, self._q["scan"].bind(after=after or "", limit=limit))
        return [_delivery(row) for row in result.rows]

    async def rewrite_payloads(self, rewrites: Sequence[PayloadRewrite]) -> int:
        if not rewrites:
            return 0
        await self._gate.ready()
        query = self._q["rewrite_payload"]
        results = await self._client.batch(
            [
                query.bind(
                    id=r.delivery_id,
                    expected=r.expected_payload,
                    payload=r.payload,
                    to_hash=r.to_hash,
                    from_hash=r.from_hash,
                )
                for r in rewrites
            ]
        )
        return sum(len(r.rows) for r in results)


def _sealed_values(endpoint: WebhookEndpoint) -> dict[str, D1Value]:
    """An endpoint's sealed fields as stored: ``secret``, the two JSON columns, ``client_key``."""
    values = endpoint_values(endpoint)
    return {c: values[c] for c in SEALED_COLUMNS}


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
