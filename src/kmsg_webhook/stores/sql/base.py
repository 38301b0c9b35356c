"""What the SQLite and Postgres backends share: the pool, schema setup, retries, and the stores.

A :class:`SqlDatabase` owns one SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (one
connection pool) used by both of its stores. Every statement is reviewed SQL from
``queries/*.sql``. Cold queries (endpoints, listings with fixed filter fragments, stats,
requeue, purge) run through ``sa.text()``, mostly the same text for both dialects. The three
hot paths (``insert_many``, ``claim``, ``record``) and the migrators run on the raw driver
connection taken from the same pool: one statement per batch (SQLite inserts: one per 1000
rows, in one transaction). ``docs/sql-backends.md`` has the measurements.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any, ClassVar, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ...errors import (
    ConfigError,
    DuplicateEndpointError,
    EndpointNotFoundError,
    StoreError,
    StoreUnavailableError,
    WebhookError,
)
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
    WebhookPersistence,
    decode_cursor,
    encode_cursor,
    endpoint_outcomes,
    finished_tallies,
    latency_percentiles,
    minute_counts,
    with_added_columns,
)
from ..rows import (
    SEALED_COLUMNS,
    endpoint_to_row,
    row_to_delivery,
    row_to_endpoint,
    to_datetime,
)
from ..sqlbind import Binding, Where, delivery_where
from ..sqlfiles import (
    Dialect,
    Migration,
    TableNames,
    migrations,
    queries,
    render,
    without_comments,
)
from ..sqlfiles import schema_version as known_version
from .faults import StoreRetryPolicy, describe, is_missing_database, is_transient

T = TypeVar("T")
Operation = Callable[[AsyncConnection, int], Awaitable[T]]
#: An operation on the driver's own connection (an ``asyncpg.Connection``, an
#: ``aiosqlite.Connection``): the hot paths run their named SQL on nothing else.
DriverOperation = Callable[[Any, int], Awaitable[T]]

DEFAULT_RETRY_TIMEOUT = 30.0
#: A claim that leaves endpoints alone walks the due index (claim_deliveries) while those
#: endpoints have fewer due rows than this, and goes per endpoint (claim_deliveries_around)
#: beyond. The walk passes each excluded due row (about a microsecond each in SQLite); the
#: per-endpoint claim steps through every endpoint with pending rows and reads up to the
#: claim's limit of rows from each: cheaper behind a large excluded backlog, dearer when many
#: endpoints have pending rows (benchmarks/claim_plans.py times both).
WALK_MOST = 2_000


def read_delivery(row: Mapping[Any, Any]) -> WebhookDelivery:
    """A stored delivery row (any access path) as a model, added columns included."""
    return with_added_columns(row_to_delivery(row), row)


class SqlDatabase(ABC):
    """One database holding the endpoint and delivery tables, and the two stores over it.

    ``initialize_schema`` (default true) applies pending migrations when the database is first
    used; when false the schema must already be current (``kmsg-webhook migrate``), otherwise
    :class:`StoreError`. A database whose schema is newer than this code is always refused.
    Transient failures (lost connection, busy database) are retried with exponential backoff
    for up to ``retry_timeout`` seconds per operation.
    """

    dialect: ClassVar[Dialect]
    binding: ClassVar[Binding]

    def __init__(
        self,
        *,
        display_url: str,
        names: TableNames,
        initialize_schema: bool,
        max_stored_attempts: int,
        retry_timeout: float,
    ) -> None:
        if max_stored_attempts < 1:
            raise ConfigError("max_stored_attempts must be at least 1")
        if retry_timeout < 0:
            raise ConfigError("retry_timeout must be >= 0")
        self.display_url = display_url
        self.names = names
        self.initialize_schema = initialize_schema
        self.max_stored_attempts = max_stored_attempts
        self.retry = StoreRetryPolicy(
            timeout=retry_timeout, label=f"{self.dialect} store at {display_url}"
        )
        self.sql = _rendered(queries(self.dialect), names)
        #: The migrator's statements (``queries/migrate.<dialect>.sql``).
        self.migrate_sql = _rendered(queries(self.dialect, "migrate"), names)
        self._engine: AsyncEngine | None = None
        self._ready = False
        self._init_lock = asyncio.Lock()
        #: When an operation last lost its connection (``time.monotonic()``): pooled
        #: connections idle since before then are checked before reuse (see postgres.py).
        self.disconnect_seen_at = float("-inf")
        self.endpoint_store = SqlEndpointStore(self)
        self.delivery_store = SqlDeliveryStore(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display_url!r})"

    def persistence(self) -> WebhookPersistence:
        """The two stores with this database's ``init``/``close``."""
        return WebhookPersistence(
            endpoint_store=self.endpoint_store,
            delivery_store=self.delivery_store,
            init=self.init,
            close=self.close,
            retry_timeout=self.retry.timeout,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    async def init(self) -> None:
        """Open the pool and check (or, with ``initialize_schema``, migrate) the schema.

        Idempotent; every store operation calls it first. A database that stays unreachable for
        ``retry_timeout`` seconds is a :class:`StoreError` naming the URL (password redacted).
        """
        if self._ready:
            return
        async with self._init_lock:
            if self._ready:
                return
            await self._prepare(apply=self.initialize_schema)
            self._ready = True

    async def migrate(self) -> int:
        """Apply pending migrations now (whatever ``initialize_schema`` says); the new version."""
        async with self._init_lock:
            version = await self._prepare(apply=True)
            self._ready = True
            return version

    async def close(self) -> None:
        """Close every pooled connection. A later operation opens the pool again."""
        async with self._init_lock:
            self._ready = False
            await self._hand_back_connection()
            engine, self._engine = self._engine, None
            if engine is not None:
                await engine.dispose()

    async def schema_version(self) -> int:
        """The schema version recorded in the database for these tables (0: none)."""
        return await self.run(lambda conn, _: self._current_version(conn))

    async def _prepare(self, *, apply: bool) -> int:
        if self._engine is None:
            self._engine = self._create_engine()

        async def migrate(conn: AsyncConnection, attempt: int) -> int:
            return await self._migrate(conn, apply=apply)

        started = time.monotonic()
        try:
            return await self.retry.call(partial(self._on_connection, migrate))
        except WebhookError:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise StoreUnavailableError(
                    f"cannot reach the {self.dialect} store at {self.display_url} (gave up after "
                    f"{time.monotonic() - started:.1f}s of retrying): {describe(exc)}"
                ) from exc
            if is_missing_database(exc):
                raise StoreUnavailableError(
                    f"the {self.dialect} store at {self.display_url} does not exist: "
                    f"{describe(exc)}; create the database first (CREATE DATABASE)"
                ) from exc
            raise StoreError(
                f"cannot open the {self.dialect} store at {self.display_url}: {describe(exc)}"
            ) from exc

    async def _migrate(self, conn: AsyncConnection, *, apply: bool) -> int:
        """Bring the schema to the current version (or check it is there); returns it."""
        latest = known_version(self.dialect)
        current = await self._current_version(conn)
        self._check_known(current)
        if current == latest:
            return current
        if not apply:
            raise StoreError(
                f"the {self.dialect} store at {self.display_url} has schema version {current}, "
                f"this code needs {latest}: run `kmsg-webhook migrate --store URL` "
                "or open the store with initialize_schema=True"
            )
        return await self._apply_migrations(conn, migrations(self.dialect))

    def _refuse_foreign_tables(self, existing: Sequence[str]) -> None:
        """Before the first migration: our tables must not exist yet (no version says why)."""
        if existing:
            raise StoreError(
                f"table(s) {', '.join(existing)} already exist in the {self.dialect} store at "
                f"{self.display_url}, but no schema version is recorded for the table pair "
                f"{self.names.scope!r}: something else created them (another store "
                "configuration sharing a table, or the original TypeScript library). Use other "
                "table names or another schema. Nothing was written."
            )

    def _check_known(self, current: int) -> None:
        latest = known_version(self.dialect)
        if current > latest:
            raise StoreError(
                f"the {self.dialect} store at {self.display_url} has schema version {current}, "
                f"newer than this kmsg-webhook knows ({latest}); upgrade kmsg-webhook. "
                "Nothing was written."
            )

    # -- running operations ------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(self, *, shared: bool = False) -> AsyncIterator[AsyncConnection]:
        """A pooled connection; a transient failure on it invalidates it. ``shared``: the
        operation is one autocommit statement, which a dialect with a single connection may
        run beside others (SQLite); here every operation has a connection of its own."""
        engine = self._engine
        if engine is None:
            raise self.closed_error()
        async with engine.connect() as conn:
            try:
                yield conn
            except BaseException as exc:
                if self._is_disconnect(exc):
                    self.disconnect_seen_at = time.monotonic()
                    if not conn.invalidated:
                        await conn.invalidate()
                raise

    @asynccontextmanager
    async def driver(self, *, shared: bool = False) -> AsyncIterator[Any]:
        """The driver's own connection, for operations that run nothing through SQLAlchemy
        (the hot paths); held as :meth:`connect` holds its connection."""
        async with self.connect(shared=shared) as conn:
            yield (await conn.get_raw_connection()).driver_connection

    async def run(self, operation: Operation[T], *, single_statement: bool = False) -> T:
        """Run ``operation(connection, attempt_number)``, retrying on transient failures.

        ``single_statement``: the operation's first attempt is one autocommit statement (see
        :meth:`connect`); a retry may need a transaction, so it always runs alone.
        """
        return await self._retried(
            partial(self._on_connection, operation, single_statement=single_statement)
        )

    async def run_on_driver(
        self, operation: DriverOperation[T], *, single_statement: bool = False
    ) -> T:
        """:meth:`run` for ``operation(driver_connection, attempt_number)`` (see
        :meth:`driver`)."""
        return await self._retried(
            partial(self._on_driver, operation, single_statement=single_statement)
        )

    async def _retried(self, attempt: Callable[[int], Awaitable[T]]) -> T:
        await self.init()
        try:
            return await self.retry.call(attempt)
        except WebhookError:
            raise
        except Exception as exc:
            raise StoreError(
                f"{self.dialect} store at {self.display_url} failed: {describe(exc)}"
            ) from exc

    async def _on_connection(
        self, operation: Operation[T], attempt: int, *, single_statement: bool = False
    ) -> T:
        async with self.connect(shared=single_statement and attempt == 1) as conn:
            return await operation(conn, attempt)

    async def _on_driver(
        self, operation: DriverOperation[T], attempt: int, *, single_statement: bool = False
    ) -> T:
        async with self.driver(shared=single_statement and attempt == 1) as driver:
            return await operation(driver, attempt)

    def bound(self, value: datetime) -> datetime:
        """A lower or strict upper time bound as the dialect compares it exactly (see SQLite),
        for the messaging stores' filters."""
        return value

    def query(self, name: str, where: Where | None = None) -> sa.TextClause:
        """The named query of ``queries/*.sql`` for SQLAlchemy, ``{where}`` filled in."""
        return sa.text(self.sql[name].replace("{where}", "" if where is None else where.sql))

    def _is_disconnect(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def closed_error(self) -> StoreError:
        return StoreError(f"the {self.dialect} store at {self.display_url} is closed")

    async def delete_finished(
        self, conn: AsyncConnection, status: DeliveryStatus, before: datetime, limit: int
    ) -> int:
        """Delete up to ``limit`` of the oldest rows of the final ``status`` created before
        ``before``, in one statement (``purge_finished``); returns how many went."""
        params = {"status": status.value, "before": self.binding.stamp(before), "limit": limit}
        await self.begin_write(conn)
        count = int((await conn.execute(self.query("purge_finished"), params)).rowcount)
        await conn.commit()
        return count

    async def reclaim_space(self, conn: AsyncConnection, *, started: bool) -> bool:
        """After deletes: hand one step of freed pages back to the filesystem where the
        dialect needs telling (SQLite; Postgres reuses them after its autovacuum). ``started``:
        an earlier step of the same round ran. Returns whether another step is due."""
        return False

    async def _hand_back_connection(self) -> None:
        """Return a connection the database object holds between operations (SQLite). A
        pooled dialect holds none: disposing of the engine closes its pool."""
        return None

    # -- dialect specifics -------------------------------------------------------------------

    @abstractmethod
    def _create_engine(self) -> AsyncEngine: ...

    @abstractmethod
    async def _current_version(self, conn: AsyncConnection) -> int: ...

    @abstractmethod
    async def _existing_tables(self, conn: AsyncConnection) -> list[str]:
        """Which of the endpoint and delivery tables exist."""

    @abstractmethod
    async def _apply_migrations(
        self, conn: AsyncConnection, all_migrations: Sequence[Migration]
    ) -> int: ...

    @abstractmethod
    async def begin_write(self, conn: AsyncConnection) -> None:
        """Start a write transaction on ``conn`` (SQLite takes the write lock up front)."""

    @abstractmethod
    async def insert_deliveries(
        self, driver: Any, deliveries: Sequence[WebhookDelivery], *, retried: bool
    ) -> set[str]:
        """Insert on our own (driver) connection; the ids that are new (with ``retried``: that
        exist)."""

    @abstractmethod
    async def insert_on_caller_connection(
        self, connection: object, deliveries: Sequence[WebhookDelivery]
    ) -> set[str]:
        """Insert inside the caller's transaction on their own connection (checked first)."""

    @abstractmethod
    async def claim_deliveries(
        self,
        driver: Any,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        exclude: list[str],
        retried: bool,
    ) -> list[WebhookDelivery]:
        """Lease up to ``limit`` due rows until ``lease_until``, on our own (driver)
        connection. With ``retried``, first the
        rows an earlier attempt of this claim leased (``worker_id`` until exactly
        ``lease_until``): its answer may have been lost after it committed."""

    @abstractmethod
    async def record_outcomes(self, driver: Any, outcomes: Sequence[AttemptOutcome]) -> int:
        """Apply ``outcomes`` on our own (driver) connection; how many applied."""

    async def announce_due(self, conn: AsyncConnection, at: datetime) -> None:
        """Tell other processes, when ``conn``'s transaction commits, that rows are due at
        ``at`` (PostgreSQL ``NOTIFY``); dialects without notifications rely on polling."""
        return None

    def single_statement(self, rows: int) -> bool:
        """Whether :meth:`insert_deliveries` (first attempt) or :meth:`record_outcomes` writes
        ``rows`` rows in one autocommit statement."""
        return True

    async def insert_with_sqlalchemy(
        self, conn: AsyncConnection, deliveries: Sequence[WebhookDelivery]
    ) -> set[str]:
        """Insert on a caller's :class:`AsyncConnection` (any driver) in one statement whose
        one parameter is the batch as a JSON array: ``text()`` gives no rows back from an
        executemany, and one statement is one round trip whatever the batch size."""
        if conn.dialect.name != self.dialect:
            raise StoreError(
                f"the {self.dialect} store cannot write on a {conn.dialect.name} connection"
            )
        if not deliveries:
            return set()
        return await self.insert_json_batch(conn, deliveries)

    @abstractmethod
    async def insert_json_batch(
        self, conn: AsyncConnection, deliveries: Sequence[WebhookDelivery]
    ) -> set[str]:
        """Insert ``deliveries`` through SQLAlchemy as one JSON-array parameter, skipping rows
        that exist; the ids that are new. New rows not already leased are announced (see
        :meth:`announce_due`)."""


class SqlEndpointStore:
    """Endpoints in ``<endpoint table>``; the unique index on ``url`` enforces unique URLs."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    def _values(self, endpoint: WebhookEndpoint) -> dict[str, object]:
        return {k: self._db.binding.column(v) for k, v in endpoint_to_row(endpoint).items()}

    async def add(self, endpoint: WebhookEndpoint) -> None:
        db = self._db
        values = self._values(endpoint)

        async def op(conn: AsyncConnection, attempt: int) -> None:
            await db.begin_write(conn)
            for _ in range(3):
                if (await conn.execute(db.query("endpoint_insert"), values)).first() is not None:
                    await conn.commit()
                    return
                same_id = (
                    await conn.execute(db.query("endpoint_get"), {"id": endpoint.id})
                ).first()
                if same_id is not None:
                    if attempt > 1 and row_to_endpoint(same_id._mapping) == endpoint:
                        return  # our own insert, committed before the connection was lost
                    raise DuplicateEndpointError(
                        f"Webhook endpoint id {endpoint.id} already exists",
                        field="id",
                        value=endpoint.id,
                    )
                owner = await self._url_owner(conn, endpoint)
                if owner is not None:
                    raise self._url_taken(endpoint, owner)
                # The clashing row vanished in between: try the insert again.
            raise StoreError(f"could not add endpoint {endpoint.id}: concurrent changes")

        await db.run(op)

    async def update(self, endpoint: WebhookEndpoint, *, reset_health: bool = False) -> None:
        db = self._db
        values = {**self._values(endpoint), "reset_health": reset_health}

        async def op(conn: AsyncConnection, attempt: int) -> None:
            await db.begin_write(conn)
            exists = (await conn.execute(db.query("endpoint_exists"), {"id": endpoint.id})).first()
            if exists is None:
                raise EndpointNotFoundError(endpoint.id)
            owner = await self._url_owner(conn, endpoint)
            if owner is not None:
                raise self._url_taken(endpoint, owner)
            try:
                updated = (await conn.execute(db.query("endpoint_update"), values)).first()
            except sa.exc.IntegrityError as exc:  # another writer took the URL just now
                raise self._url_taken(endpoint, "another endpoint") from exc
            if updated is None:
                raise self._url_taken(endpoint, "another endpoint")
            await conn.commit()

        await db.run(op)

    async def _url_owner(self, conn: AsyncConnection, endpoint: WebhookEndpoint) -> str | None:
        params = {"url": endpoint.url, "id": endpoint.id}
        owner = (await conn.execute(self._db.query("endpoint_url_owner"), params)).scalar()
        return None if owner is None else str(owner)

    async def remove(self, endpoint_id: str) -> bool:
        db = self._db

        async def op(conn: AsyncConnection, attempt: int) -> bool:
            await db.begin_write(conn)
            deleted = await conn.execute(db.query("endpoint_delete"), {"id": endpoint_id})
            found = deleted.first() is not None
            await conn.commit()
            return found

        return await db.run(op)

    async def get(self, endpoint_id: str) -> WebhookEndpoint | None:
        db = self._db

        async def op(conn: AsyncConnection, attempt: int) -> WebhookEndpoint | None:
            row = (await conn.execute(db.query("endpoint_get"), {"id": endpoint_id})).first()
            return None if row is None else row_to_endpoint(row._mapping)

        return await db.run(op)

    async def list(self) -> list[WebhookEndpoint]:
        db = self._db

        async def op(conn: AsyncConnection, attempt: int) -> list[WebhookEndpoint]:
            return [
                row_to_endpoint(r._mapping) for r in await conn.execute(db.query("endpoint_list"))
            ]

        return await db.run(op)

    async def record_health(
        self, endpoint_id: str, *, succeeded: bool, failures: int, at: datetime
    ) -> WebhookEndpoint | None:
        db = self._db
        params: dict[str, object] = {"id": endpoint_id, "at": db.binding.stamp(at)}
        if not succeeded:
            params["failures"] = failures
        query = db.query("endpoint_health_success" if succeeded else "endpoint_health_failure")

        async def op(conn: AsyncConnection, attempt: int) -> WebhookEndpoint | None:
            await db.begin_write(conn)
            row = (await conn.execute(query, params)).first()
            await conn.commit()
            return None if row is None else row_to_endpoint(row._mapping)

        return await db.run(op)

    async def rewrite_sealed(
        self, endpoint_id: str, *, expected: WebhookEndpoint, replacement: WebhookEndpoint
    ) -> bool:
        db = self._db
        old, new = self._values(expected), self._values(replacement)
        params: dict[str, object] = {"id": endpoint_id}
        for column in SEALED_COLUMNS:
            params[column] = new[column]
            params[f"expected_{column}"] = old[column]

        async def op(conn: AsyncConnection, attempt: int) -> bool:
            # One compare-and-set statement: the stored sealed fields must still be expected's.
            await db.begin_write(conn)
            applied = (await conn.execute(db.query("endpoint_rewrite_sealed"), params)).first()
            await conn.commit()
            return applied is not None

        return await db.run(op)

    @staticmethod
    def _url_taken(endpoint: WebhookEndpoint, owner: str) -> DuplicateEndpointError:
        return DuplicateEndpointError(
            f"Webhook endpoint URL {endpoint.url} is already used by endpoint {owner}",
            field="url",
            value=endpoint.url,
        )


class SqlDeliveryStore:
    """The delivery outbox in ``<delivery table>``; the protocol is ``store.DeliveryStore``."""

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    async def insert_many(
        self, deliveries: Sequence[WebhookDelivery], *, connection: object | None = None
    ) -> list[str]:
        if connection is not None:
            await self._db.init()
            try:
                new = await self._db.insert_on_caller_connection(connection, deliveries)
            except WebhookError:
                raise
            except Exception as exc:
                raise StoreError(
                    f"insert on the caller's connection failed: {describe(exc)}"
                ) from exc
        elif not deliveries:
            return []
        else:

            async def op(driver: Any, attempt: int) -> set[str]:
                return await self._db.insert_deliveries(driver, deliveries, retried=attempt > 1)

            new = await self._db.run_on_driver(
                op, single_statement=self._db.single_statement(len(deliveries))
            )
        ordered: list[str] = []
        for delivery in deliveries:
            if delivery.id in new:
                ordered.append(delivery.id)
                new.discard(delivery.id)
        return ordered

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
        exclude = sorted(exclude_endpoints)

        async def op(driver: Any, attempt: int) -> list[WebhookDelivery]:
            return await self._db.claim_deliveries(
                driver,
                worker_id=worker_id,
                now=now,
                lease_until=lease_until,
                limit=limit,
                exclude=exclude,
                retried=attempt > 1,
            )

        claimed = await self._db.run_on_driver(op, single_statement=True)
        # RETURNING has no order: give the rows oldest due first, as claimed.
        claimed.sort(key=lambda d: (d.next_attempt_at or now, d.id))
        return claimed

    async def record(self, outcomes: Sequence[AttemptOutcome]) -> int:
        if not outcomes:
            return 0

        async def op(driver: Any, attempt: int) -> int:
            return await self._db.record_outcomes(driver, outcomes)

        return await self._db.run_on_driver(
            op, single_statement=self._db.single_statement(len(outcomes))
        )

    async def release(self, delivery_ids: Sequence[str], *, worker_id: str) -> None:
        if not delivery_ids:
            return
        db = self._db
        params = {"worker_id": worker_id, "ids": db.binding.values(delivery_ids)}

        async def op(conn: AsyncConnection, attempt: int) -> None:
            await db.begin_write(conn)
            found = await conn.execute(db.query("release_deliveries"), params)
            due = [to_datetime(at) for at in found.scalars() if at is not None]
            if due:
                # Handed back by a stopping worker: other workers need not wait for a poll.
                await db.announce_due(conn, min(d for d in due if d is not None))
            await conn.commit()

        await db.run(op)

    async def get(self, delivery_id: str) -> WebhookDelivery | None:
        db = self._db

        async def op(conn: AsyncConnection, attempt: int) -> WebhookDelivery | None:
            row = (await conn.execute(db.query("delivery_get"), {"id": delivery_id})).first()
            return None if row is None else read_delivery(row._mapping)

        return await db.run(op)

    async def list(
        self, filter: DeliveryFilter, *, limit: int = 100, cursor: str | None = None
    ) -> DeliveryPage:
        db = self._db
        position = decode_cursor(cursor) if cursor is not None else None
        if limit <= 0:
            return DeliveryPage(items=(), next_cursor=None)
        where = delivery_where(db.sql, filter, db.binding, before=position)
        query = db.query("delivery_list", where)
        params = {**where.params, "limit": limit + 1}

        async def op(conn: AsyncConnection, attempt: int) -> list[WebhookDelivery]:
            return [read_delivery(r._mapping) for r in await conn.execute(query, params)]

        rows = await db.run(op)
        page = rows[:limit]
        more = len(rows) > limit
        return DeliveryPage(
            items=tuple(page), next_cursor=encode_cursor(page[-1]) if more and page else None
        )

    async def stats(self, filter: DeliveryFilter) -> DeliveryStats:
        db = self._db
        where = delivery_where(db.sql, filter, db.binding)
        totals = db.query("delivery_stats", where)
        by_type = db.query("delivery_stats_by_type", where)

        async def op(conn: AsyncConnection, attempt: int) -> DeliveryStats:
            row = (await conn.execute(totals, where.params)).one()._mapping
            types = {str(r[0]): int(r[1]) for r in await conn.execute(by_type, where.params)}
            average = row["average_latency_ms"]
            return DeliveryStats(
                total=int(row["total"]),
                pending=int(row["pending"]),
                success=int(row["success"]),
                failed=int(row["failed"]),
                exhausted=int(row["exhausted"]),
                total_attempts=int(row["total_attempts"]),
                average_latency_ms=0.0 if average is None else float(average),
                by_event_type=types,
            )

        return await db.run(op)

    async def queue_stats(self, *, now: datetime) -> QueueStats:
        db = self._db
        params = {"now": db.binding.stamp(now)}

        async def op(conn: AsyncConnection, attempt: int) -> QueueStats:
            row = (await conn.execute(db.query("queue_stats"), params)).one()._mapping
            return QueueStats(
                due=int(row["due"]),
                scheduled=int(row["scheduled"]),
                leased=int(row["leased"]),
                oldest_due_at=to_datetime(row["oldest_due_at"]),
                next_due_at=to_datetime(row["next_due_at"]),
            )

        return await db.run(op)

    async def activity(self, *, since: datetime, now: datetime) -> DeliveryActivity:
        db = self._db
        window = {"since": db.binding.bound(since), "now": db.binding.stamp(now)}

        async def op(conn: AsyncConnection, attempt: int) -> DeliveryActivity:
            tallies = [r._mapping for r in await conn.execute(db.query("finished_tallies"), window)]
            samples = 0
            by_position: dict[int, float] = {}
            picks = await conn.execute(
                db.query("latency_percentiles"), {**window, "sample": LATENCY_SAMPLE}
            )
            for count, position, latency in picks:
                samples = int(count)
                by_position[int(position)] = float(latency)
            return DeliveryActivity(
                since=since,
                now=now,
                per_minute=minute_counts(finished_tallies(tallies, "minute")),
                latency=latency_percentiles(samples, by_position),
                by_endpoint=endpoint_outcomes(finished_tallies(tallies, "endpoint")),
            )

        return await db.run(op)

    async def requeue(
        self, filter: DeliveryFilter, *, now: datetime, ids: Sequence[str] | None = None
    ) -> int:
        if ids is not None and not ids:
            return 0
        db = self._db
        where = delivery_where(db.sql, filter, db.binding, finished=True, ids=ids)
        query = db.query("requeue", where)
        params = {**where.params, "now": db.binding.stamp(now)}

        async def op(conn: AsyncConnection, attempt: int) -> int:
            await db.begin_write(conn)
            count = int((await conn.execute(query, params)).rowcount)
            if count:
                await db.announce_due(conn, now)
            await conn.commit()
            return count

        return await db.run(op)

    async def purge(self, *, older_than: datetime) -> int:
        params = {"before": self._db.binding.bound(older_than)}
        deleted = await self._write_count(self._db.query("purge"), params)
        if deleted:
            await self._reclaim_space()
        return deleted

    async def purge_finished(self, cutoffs: RetentionCutoffs, *, limit: int) -> int:
        db = self._db
        deleted = 0
        for status, cutoff in cutoffs.by_status():
            if deleted >= limit:
                break
            delete = partial(_delete_finished, db, status, db.bound(cutoff), limit - deleted)
            # One statement: on SQLite it shares the connection like a claim, so the hot
            # paths queue behind one small delete at most, never behind a transaction.
            deleted += await db.run(delete, single_statement=True)
        if deleted:
            await self._reclaim_space()
        return deleted

    async def _reclaim_space(self) -> None:
        steps = 0

        async def step(conn: AsyncConnection, attempt: int) -> bool:
            return await self._db.reclaim_space(conn, started=steps > 0)

        # Step by step, each a statement of its own: the hot paths run between steps.
        while await self._db.run(step, single_statement=True):
            steps += 1
            await asyncio.sleep(0)

    async def scan(
        self, *, after: str | None = None, limit: int = 500
    ) -> builtins.list[WebhookDelivery]:
        if limit <= 0:
            return []
        db = self._db
        params = {"after": after or "", "limit": limit}

        async def op(conn: AsyncConnection, attempt: int) -> builtins.list[WebhookDelivery]:
            return [read_delivery(r._mapping) for r in await conn.execute(db.query("scan"), params)]

        return await db.run(op)

    async def rewrite_payloads(self, rewrites: Sequence[PayloadRewrite]) -> int:
        if not rewrites:
            return 0
        db = self._db
        params = [
            {
                "id": r.delivery_id,
                "expected": r.expected_payload,
                "payload": r.payload,
                "to_hash": r.to_hash,
                "from_hash": r.from_hash,
            }
            for r in rewrites
        ]

        async def op(conn: AsyncConnection, attempt: int) -> int:
            await db.begin_write(conn)
            applied = 0
            for one in params:  # one statement each: the row it returns says it applied
                applied += len((await conn.execute(db.query("rewrite_payload"), one)).all())
            await conn.commit()
            return applied

        return await db.run(op)

    async def _write_count(self, statement: sa.TextClause, params: Mapping[str, object]) -> int:
        async def op(conn: AsyncConnection, attempt: int) -> int:
            await self._db.begin_write(conn)
            result = await conn.execute(statement, params)
            await conn.commit()
            return int(result.rowcount)

        return await self._db.run(op)


def _rendered(named: Mapping[str, str], names: TableNames) -> dict[str, str]:
    """Named queries without their comments, for the configured table names."""
    return {name: render(without_comments(text), names) for name, text in named.items()}


async def _delete_finished(
    db: SqlDatabase,
    status: DeliveryStatus,
    before: datetime,
    limit: int,
    conn: AsyncConnection,
    attempt: int,
) -> int:
    return await db.delete_finished(conn, status, before, limit)
