"""SQLite persistence on aiosqlite: one file (WAL mode), or ``:memory:`` for throwaway use.

The store keeps a single connection (SQLite has one writer anyway). Operations that are one
autocommit statement (inserting, claiming and recording deliveries) share it: aiosqlite runs
them in order on its thread, each its own transaction. Anything else has the connection alone.
Writes take the write lock up front (``BEGIN IMMEDIATE``), so ``busy_timeout`` covers
contention with other processes; a still-busy database is retried, never surfaced until
``retry_timeout`` runs out. Timestamps are stored as integer epoch milliseconds, so
sub-millisecond digits are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import aiosqlite
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from ...errors import ConfigError, StoreError, WebhookError
from ...models import AttemptOutcome, DeliveryStatus, WebhookDelivery
from ..protocol import DEFAULT_MAX_STORED_ATTEMPTS
from ..rows import (
    DELIVERY_ROW_COLUMNS,
    ceil_millis,
    delivery_values,
    dumps,
    from_millis,
    to_millis,
    values_to_delivery,
)
from ..sqlbind import SQLITE
from ..sqlfiles import (
    DEFAULT_DELIVERY_TABLE,
    DEFAULT_ENDPOINT_TABLE,
    VERSION_TABLE,
    Migration,
    TableNames,
    render,
    split_statements,
)
from .base import DEFAULT_RETRY_TIMEOUT, WALK_MOST, SqlDatabase

MIN_SQLITE_VERSION = (3, 35, 0)  # RETURNING (3.35) and UPDATE ... FROM (3.33)
MEMORY = ":memory:"
# Rows (inserts) or outcomes (records) per statement: 18 or 8 parameters each stays far below
# SQLite's 32766-variable limit.
STATEMENT_ROWS = 1000
# Pages handed back to the filesystem per statement (1 MiB at the default page size): one
# step holds the connection for a few milliseconds.
VACUUM_STEP = 256
_INCREMENTAL = 2  # PRAGMA auto_vacuum
# One group per row: the insert binds DELIVERY_ROW_COLUMNS in order (queries/sqlite.sql).
_ROW_PLACEHOLDERS = "(" + ", ".join(["?"] * len(DELIVERY_ROW_COLUMNS)) + ")"
# One group per outcome: the record binds these in the order queries/sqlite.sql names.
_OUTCOME_PLACEHOLDERS = "(?, ?, ?, ?, ?, ?, ?, ?)"


class _HideStatementParameters(logging.Filter):
    """aiosqlite logs every call it runs at DEBUG, the statement's parameters included (an
    endpoint's secret and headers among them). Keep its records, without the parameters."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(map(_without_parameters, record.args))
        return True


def _without_parameters(arg: object) -> object:
    if not isinstance(arg, functools.partial):
        return arg
    name = getattr(arg.func, "__name__", type(arg.func).__name__)
    statement = arg.args[0] if arg.args and isinstance(arg.args[0], str) else None
    shown = "" if statement is None else f"{statement!r}, "
    return f"{name}({shown}<parameters hidden>)"


_AIOSQLITE_FILTER = _HideStatementParameters()


class SQLiteDatabase(SqlDatabase):
    """Endpoints and deliveries in one SQLite database file.

    ``path`` is a file path (created if missing) or ``":memory:"`` (one connection, lost on
    close). ``busy_timeout`` is how long SQLite itself waits for another process's write lock.
    """

    dialect = "sqlite"
    binding = SQLITE

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        initialize_schema: bool = True,
        endpoint_table: str | None = None,
        delivery_table: str | None = None,
        max_stored_attempts: int = DEFAULT_MAX_STORED_ATTEMPTS,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = os.fspath(path)
        if not self.path:
            raise ConfigError("the SQLite store needs a file path or ':memory:'")
        if busy_timeout < 0:
            raise ConfigError("busy_timeout must be >= 0")
        self.busy_timeout = busy_timeout
        names = TableNames(
            DEFAULT_ENDPOINT_TABLE if endpoint_table is None else endpoint_table,
            DEFAULT_DELIVERY_TABLE if delivery_table is None else delivery_table,
        )
        super().__init__(
            display_url=f"sqlite:///{self.path}",
            names=names,
            initialize_schema=initialize_schema,
            max_stored_attempts=max_stored_attempts,
            retry_timeout=retry_timeout,
        )
        self._gate = _Gate()
        self._conn: AsyncConnection | None = None  # the one connection, open until close()
        self._opening = asyncio.Lock()

    # -- engine ---------------------------------------------------------------------------------

    def _create_engine(self) -> AsyncEngine:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old: the store needs "
                f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or newer"
            )
        logging.getLogger("aiosqlite").addFilter(_AIOSQLITE_FILTER)  # added once
        engine = create_async_engine(
            sa.engine.URL.create("sqlite+aiosqlite", database=self.path),
            poolclass=StaticPool,
            hide_parameters=True,
            # The default rolls back on every return to the pool: a round trip to aiosqlite's
            # thread even when nothing is open (the hot paths run in autocommit).
            pool_reset_on_return=None,
        )
        file_backed = self.path != MEMORY
        sql = self.sql
        set_busy_timeout = sql["set_busy_timeout"].replace(
            "{ms}", str(int(self.busy_timeout * 1000))
        )

        @event.listens_for(engine.sync_engine, "connect")
        def configure(dbapi_connection: Any, record: Any) -> None:
            # Autocommit at the driver: the store issues BEGIN IMMEDIATE / COMMIT itself.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(set_busy_timeout)
            cursor.execute(sql["page_count"])
            if cursor.fetchone()[0] == 0:  # a new, empty file
                cursor.execute(sql["use_incremental_vacuum"])
            if file_backed:
                cursor.execute(sql["use_wal"])
            cursor.close()

        @event.listens_for(engine.sync_engine, "reset")
        def roll_back_if_open(dbapi_connection: Any, record: Any, state: Any) -> None:
            if dbapi_connection.driver_connection.in_transaction:
                dbapi_connection.rollback()

        return engine

    @asynccontextmanager
    async def connect(self, *, shared: bool = False) -> AsyncIterator[AsyncConnection]:
        """The store's one connection. ``shared`` (one autocommit statement): others may run
        beside it. Otherwise the operation has it alone and leaves no transaction open."""
        conn: AsyncConnection | None = None
        try:
            async with self._gate.hold(shared=shared):
                conn = await self._connection()
                if shared:
                    yield conn
                    return
                try:
                    yield conn
                finally:
                    try:
                        await _end_transaction(conn)
                    except Exception:
                        # Never lend out a connection that may still hold a transaction.
                        await self._drop(conn)
                        raise
        except WebhookError:
            raise
        except Exception:
            if conn is not None:
                await self._recover(conn)
            raise

    async def _recover(self, conn: AsyncConnection) -> None:
        """After a failed statement: roll back whatever it left open and hand out the
        connection again only once it answers; otherwise a fresh one is opened next time.

        A statement that failed (a full disk, an I/O error) may stay unfinished while its
        error is alive, holding its transaction and the write lock, and SQLAlchemy marks a
        connection whose transaction failed as needing a rollback: either way every later
        statement on the shared connection would fail too.
        """
        async with self._gate.hold(shared=False):  # after the statements sharing it
            if self._conn is not conn:
                return  # already replaced
            try:
                if conn.invalidated:
                    raise StoreError("the connection was invalidated")
                await _end_transaction(conn)
                driver = await _driver(conn)
                with contextlib.suppress(sqlite3.Error):
                    # A WAL grown while the disk filled up gives its space back once the
                    # database file can take the pages (fails harmlessly while still full).
                    await driver.execute_fetchall(self.sql["checkpoint_truncate"])
                await driver.execute_fetchall("SELECT 1")
            except Exception:
                await self._drop(conn)

    async def _drop(self, conn: AsyncConnection) -> None:
        """Forget ``conn`` (the next operation opens a new connection) and close it."""
        if self._conn is conn:
            self._conn = None
        with contextlib.suppress(Exception):
            await conn.invalidate()
        with contextlib.suppress(Exception):
            await conn.close()

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            async with self._opening:
                if self._conn is None:
                    if self._engine is None:
                        raise self.closed_error()
                    self._conn = await self._engine.connect()
        return self._conn

    async def _hand_back_connection(self) -> None:
        async with self._gate.hold(shared=False):  # after the operations holding it
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    def single_statement(self, rows: int) -> bool:
        return rows <= STATEMENT_ROWS

    def _is_disconnect(self, exc: BaseException) -> bool:
        return False  # a busy or failed SQLite statement leaves the connection usable

    async def delete_finished(
        self, conn: AsyncConnection, status: DeliveryStatus, before: datetime, limit: int
    ) -> int:
        driver = await _driver(conn)
        params = {"status": status.value, "before": to_millis(before), "limit": limit}
        cursor = await driver.execute(self.sql["delete_finished"], params)
        return cursor.rowcount

    async def reclaim_space(self, conn: AsyncConnection, *, started: bool) -> bool:
        driver = await _driver(conn)
        [(mode, free, pages)] = await driver.execute_fetchall(self.sql["free_pages"])
        # Pages freed by steady deletes are reused by the next inserts: moving pages to shrink
        # the file pays only once a quarter of it is free, and then all of it goes back.
        # (Without auto_vacuum = INCREMENTAL the pragma does nothing; new rows reuse pages.)
        if mode != _INCREMENTAL or not free or (not started and free * 4 < pages):
            return False
        await driver.executescript(
            self.sql["incremental_vacuum"].replace("{pages}", str(VACUUM_STEP))
        )
        return bool(free > VACUUM_STEP)

    def bound(self, value: datetime) -> datetime:
        # Rows hold whole milliseconds: `ms >= ceil(t)` is exactly `row >= t` (and `<` alike).
        return from_millis(ceil_millis(value))

    async def begin_write(self, conn: AsyncConnection) -> None:
        await conn.exec_driver_sql("BEGIN IMMEDIATE")

    # -- schema ---------------------------------------------------------------------------------

    async def _current_version(self, conn: AsyncConnection) -> int:
        driver = await _driver(conn)
        if not await self._table_exists(driver, VERSION_TABLE):
            return 0
        found = await driver.execute_fetchall(
            self.migrate_sql["schema_version"], {"scope": self.names.scope}
        )
        return int(next(iter(found))[0])

    async def _existing_tables(self, conn: AsyncConnection) -> list[str]:
        driver = await _driver(conn)
        tables = (self.names.endpoints, self.names.deliveries)
        return [table for table in tables if await self._table_exists(driver, table)]

    async def _table_exists(self, driver: aiosqlite.Connection, table: str) -> bool:
        found = await driver.execute_fetchall(self.migrate_sql["table_exists"], {"name": table})
        return bool(found)

    async def _apply_migrations(
        self, conn: AsyncConnection, all_migrations: Sequence[Migration]
    ) -> int:
        driver = await _driver(conn)
        await driver.execute("BEGIN IMMEDIATE")
        try:
            current = await self._current_version(conn)  # again, now under the write lock
            self._check_known(current)
            if current == 0:
                self._refuse_foreign_tables(await self._existing_tables(conn))
            for migration in all_migrations[current:]:
                for statement in split_statements(render(migration.sql, self.names)):
                    await driver.execute(statement)
                await driver.execute(
                    self.migrate_sql["record_version"],
                    {
                        "scope": self.names.scope,
                        "version": migration.version,
                        "description": migration.description,
                    },
                )
            await driver.commit()
        except BaseException:
            await driver.rollback()
            raise
        return all_migrations[-1].version

    # -- hot paths (raw aiosqlite) -------------------------------------------------------------
    # Each hot statement is a single UPDATE/INSERT ... RETURNING run in autocommit mode: SQLite
    # makes it a transaction of its own, taking the write lock when it starts (as BEGIN
    # IMMEDIATE would), and execute_fetchall runs it in one hop to aiosqlite's thread instead
    # of four (BEGIN, execute, fetch, COMMIT).

    async def insert_deliveries(
        self, driver: aiosqlite.Connection, deliveries: Sequence[WebhookDelivery], *, retried: bool
    ) -> set[str]:
        if len(deliveries) <= STATEMENT_ROWS and not retried:
            return await self._insert_raw(driver, deliveries)
        async with _write_transaction(driver):
            new = await self._insert_raw(driver, deliveries)
            if retried:
                ids = {"ids": dumps([d.id for d in deliveries])}
                found = await driver.execute_fetchall(self.sql["existing_delivery_ids"], ids)
                new |= {r[0] for r in found}
        return new

    async def insert_on_caller_connection(
        self, connection: object, deliveries: Sequence[WebhookDelivery]
    ) -> set[str]:
        if isinstance(connection, AsyncConnection):
            return await self.insert_with_sqlalchemy(connection, deliveries)
        if isinstance(connection, aiosqlite.Connection):
            if connection.isolation_level is None and not connection.in_transaction:
                raise StoreError(
                    "the aiosqlite connection is in autocommit mode outside a transaction: "
                    "BEGIN first so the deliveries commit or roll back with your writes"
                )
            return await self._insert_raw(connection, deliveries) if deliveries else set()
        raise StoreError(
            "the SQLite store joins a caller's transaction on an aiosqlite.Connection or a "
            f"SQLAlchemy AsyncConnection, not {type(connection).__module__}."
            f"{type(connection).__qualname__}"
        )

    async def _insert_raw(
        self, driver: aiosqlite.Connection, deliveries: Sequence[WebhookDelivery]
    ) -> set[str]:
        new: set[str] = set()
        for start in range(0, len(deliveries), STATEMENT_ROWS):
            chunk = deliveries[start : start + STATEMENT_ROWS]
            values = [value for delivery in chunk for value in delivery_values(delivery, _millis)]
            query = self._multi_row("insert_deliveries", _ROW_PLACEHOLDERS, len(chunk))
            cursor = await driver.execute(query, values)
            count, last = cursor.rowcount, cursor.lastrowid
            if count == len(chunk):
                new.update(d.id for d in chunk)
            elif count > 0 and last is not None:
                params = {"last": last, "count": count}
                found = await driver.execute_fetchall(self.sql["inserted_delivery_ids"], params)
                new.update(r[0] for r in found)
        return new

    async def insert_json_batch(
        self, conn: AsyncConnection, deliveries: Sequence[WebhookDelivery]
    ) -> set[str]:
        rows = [
            dict(zip(DELIVERY_ROW_COLUMNS, delivery_values(d, _millis), strict=True))
            for d in deliveries
        ]
        found = await conn.execute(self.query("insert_deliveries_json"), {"rows": dumps(rows)})
        return set(found.scalars())

    async def claim_deliveries(
        self,
        driver: aiosqlite.Connection,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        exclude: list[str],
        retried: bool,
    ) -> list[WebhookDelivery]:
        params = {
            "worker_id": worker_id,
            "lease_until": to_millis(lease_until),
            "now": to_millis(now),
            "exclude": dumps(exclude),
            "limit": limit,
        }
        rows = []
        if retried:
            rows = list(await driver.execute_fetchall(self.sql["leased_deliveries"], params))
        if len(rows) < limit:
            params["limit"] = limit - len(rows)
            query = "claim_deliveries"
            if exclude:
                due = {"now": params["now"], "exclude": params["exclude"], "most": WALK_MOST}
                [(count,)] = await driver.execute_fetchall(self.sql["count_excluded_due"], due)
                if count >= WALK_MOST:
                    query = "claim_deliveries_around"
            rows += await driver.execute_fetchall(self.sql[query], params)
        return [values_to_delivery(row) for row in rows]

    async def record_outcomes(
        self, driver: aiosqlite.Connection, outcomes: Sequence[AttemptOutcome]
    ) -> int:
        if len(outcomes) <= STATEMENT_ROWS:
            return await self._record_raw(driver, outcomes)
        async with _write_transaction(driver):
            return await self._record_raw(driver, outcomes)

    def _multi_row(self, name: str, group: str, count: int) -> str:
        """The named query with its ``{rows}`` standing for ``count`` parameter groups."""
        return self.sql[name].replace("{rows}", ", ".join([group] * count))

    async def _record_raw(
        self, driver: aiosqlite.Connection, outcomes: Sequence[AttemptOutcome]
    ) -> int:
        applied = 0
        for start in range(0, len(outcomes), STATEMENT_ROWS):
            chunk = outcomes[start : start + STATEMENT_ROWS]
            # ?1 is the cap; the groups follow in the order queries/sqlite.sql binds them.
            values: list[object] = [self.max_stored_attempts]
            for o in chunk:
                attempt = o.attempt
                values += (
                    o.delivery_id,
                    o.worker_id,
                    None if attempt is None else dumps(attempt),
                    o.status.value,
                    _millis(o.next_attempt_at) if o.status is DeliveryStatus.PENDING else None,
                    _millis(o.completed_at),
                    o.last_error,
                    None if attempt is None else attempt.latency_ms,
                )
            query = self._multi_row("record_outcomes", _OUTCOME_PLACEHOLDERS, len(chunk))
            cursor = await driver.execute(query, values)
            applied += cursor.rowcount
        return applied


@asynccontextmanager
async def _write_transaction(driver: aiosqlite.Connection) -> AsyncIterator[None]:
    await driver.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        await driver.rollback()
        raise
    await driver.commit()


class _Gate:
    """Who may use the store's one connection: any number of single autocommit statements at
    once, or one operation alone (statements of others must not land inside its transaction).
    First come, first served, so neither kind waits forever behind the other."""

    def __init__(self) -> None:
        self._shared = 0
        self._alone = False
        self._waiting: deque[tuple[bool, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def hold(self, *, shared: bool) -> AsyncIterator[None]:
        if self._waiting or not self._fits(shared):
            entry = (shared, asyncio.get_running_loop().create_future())
            self._waiting.append(entry)
            try:
                await entry[1]
            except asyncio.CancelledError:
                if entry[1].cancelled():
                    if entry in self._waiting:
                        self._waiting.remove(entry)
                    self._admit()  # whoever waited behind it may fit now
                else:
                    self._release(shared)  # admitted as the cancellation came
                raise
        else:
            self._take(shared)
        try:
            yield
        finally:
            self._release(shared)

    def _fits(self, shared: bool) -> bool:
        return not self._alone and (shared or not self._shared)

    def _take(self, shared: bool) -> None:
        if shared:
            self._shared += 1
        else:
            self._alone = True

    def _release(self, shared: bool) -> None:
        if shared:
            self._shared -= 1
        else:
            self._alone = False
        self._admit()

    def _admit(self) -> None:
        waiting = self._waiting
        while waiting and (waiting[0][1].done() or self._fits(waiting[0][0])):
            shared, future = waiting.popleft()
            if not future.done():  # a cancelled waiter takes nothing
                self._take(shared)
                future.set_result(None)


async def _end_transaction(conn: AsyncConnection) -> None:
    """Roll back what an operation left open, as returning a pooled connection would
    (SQLAlchemy's transaction too when a failed commit left it inactive)."""
    if conn.get_transaction() is not None:
        await conn.rollback()
    driver = await _driver(conn)
    if driver.in_transaction:
        await driver.rollback()


async def _driver(conn: AsyncConnection) -> aiosqlite.Connection:
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, aiosqlite.Connection)
    return driver


def _millis(value: datetime | None) -> int | None:
    return None if value is None else to_millis(value)


__all__ = ["SQLiteDatabase"]
