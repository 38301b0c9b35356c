"""Faults, for real: a database that is down, connections killed mid-flight, a server restart,
a busy SQLite file. Operations retry transient failures and never record a result twice.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import sqlite3
import time
import warnings
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncConnection

from kmsg_webhook import DeliveryFilter, DeliveryStatus, StoreError, StoreUnavailableError
from kmsg_webhook.stores.sql.base import SqlDatabase
from kmsg_webhook.stores.sql.faults import StoreRetryPolicy, is_transient
from kmsg_webhook.stores.sql.postgres import PostgresDatabase
from kmsg_webhook.stores.sql.sqlite import SQLiteDatabase
from kmsg_webhook.stores.url import persistence_from_url
from support.records import T0, W1, attempt, delivery, endpoint, outcome
from support.stores import (
    ThrowawayCluster,
    drop_schema,
    free_port,
    new_schema,
    postgres_database,
    relayed_postgres_database,
    server_dsn,
    temporary_postgres,
    temporary_sqlite,
    terminate_backends,
    unavailable,
)

NOW = T0 + timedelta(seconds=5)
R = TypeVar("R")


async def _claim(db: SqlDatabase, limit: int = 100) -> list[str]:
    claimed = await db.delivery_store.claim(
        worker_id=W1, now=NOW, lease_until=NOW + timedelta(seconds=30), limit=limit
    )
    return [d.id for d in claimed]


# -- classification and redaction ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("database table is locked"), True),
        (sqlite3.OperationalError("no such table: x"), False),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), False),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (FileNotFoundError("no dir"), False),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), True),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), True),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation"), True),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), False),
        (asyncpg.exceptions.UndefinedTableError("no such relation"), False),
        (asyncpg.exceptions.InterfaceError("connection is closed"), True),
        (asyncpg.exceptions.InterfaceError("another operation is in progress"), False),
        # What asyncpg raises when a kill lands while it introspects a statement's types.
        (
            asyncpg.exceptions.InternalClientError(
                "cannot switch to state 11; another operation (2) is in progress"
            ),
            True,
        ),
        (asyncpg.exceptions.InternalClientError("could not resolve query result"), False),
        # SQLAlchemy's own words for a connection a kill invalidated mid-operation.
        (sqlalchemy.exc.InvalidRequestError("This connection is closed"), True),
        (sqlalchemy.exc.InvalidRequestError("A value is required for bind parameter 'x'"), False),
        (ValueError("bad"), False),
    ],
)
def test_only_transient_errors_are_retried(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", None, error)
    assert is_transient(wrapped) is transient


async def test_retry_policy_retries_transient_failures_with_growing_waits() -> None:
    policy = StoreRetryPolicy(timeout=5.0, initial=0.01, maximum=0.04)
    calls: list[tuple[int, float]] = []

    async def flaky(attempt: int) -> str:
        calls.append((attempt, time.monotonic()))
        if attempt < 4:
            raise ConnectionRefusedError(111, "refused")
        return "ok"

    assert await policy.call(flaky) == "ok"
    assert [n for n, _ in calls] == [1, 2, 3, 4]
    waits = [b - a for (_, a), (_, b) in itertools.pairwise(calls)]
    # at least 0.01, 0.02, 0.04 (capped); jitter and a busy machine only add to them
    for wait, floor in zip(waits, (0.01, 0.02, 0.04), strict=True):
        assert floor <= wait < floor + 1.0


async def test_retry_policy_raises_other_errors_at_once_and_gives_up_at_the_timeout() -> None:
    attempts: list[int] = []

    async def broken(attempt: int) -> None:
        attempts.append(attempt)
        raise ValueError("bad query")

    with pytest.raises(ValueError):
        await StoreRetryPolicy(timeout=5.0, initial=0.01).call(broken)
    assert attempts == [1]

    async def down(attempt: int) -> None:
        attempts.append(attempt)
        raise ConnectionRefusedError(111, "refused")

    attempts.clear()
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await StoreRetryPolicy(timeout=0.2, initial=0.02, maximum=0.05).call(down)
    assert len(attempts) >= 2
    assert time.monotonic() - started < 0.2 + 1.0  # gave up instead of retrying on


async def test_a_call_that_succeeds_leaves_no_cyclic_garbage() -> None:
    async def fine(attempt: int) -> int:
        return attempt

    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            assert await StoreRetryPolicy().call(fine) == 1
        assert gc.collect() == 0
    finally:
        gc.enable()


# -- PostgreSQL ------------------------------------------------------------------------------------


async def test_postgres_down_at_start_is_a_store_error_naming_the_redacted_url() -> None:
    url = f"postgresql://kmsg:s3cret-pw@127.0.0.1:{free_port()}/app"
    started = time.monotonic()
    db = PostgresDatabase(url, retry_timeout=0.5)
    with pytest.raises(StoreError) as caught:
        await db.init()
    assert time.monotonic() - started < 5  # retried, within a bounded time
    message = str(caught.value)
    assert "kmsg:***@127.0.0.1" in message and "s3cret-pw" not in message
    assert "ConnectionRefusedError" in message
    # The same through a URL, on the first operation (lazy init).
    persistence = persistence_from_url(url, retry_timeout=0.2)
    with pytest.raises(StoreError, match=r"kmsg:\*\*\*@") as again:
        await persistence.endpoint_store.list()
    assert "s3cret-pw" not in str(again.value)
    await db.close()


async def test_postgres_recovers_when_its_connections_are_terminated() -> None:
    async with temporary_postgres() as db:
        dsn = await server_dsn()
        await db.endpoint_store.add(endpoint(1))
        await db.delivery_store.insert_many([delivery(1), delivery(2)])
        assert await terminate_backends(dsn, db.application_name) >= 1
        # Every kind of operation finds its pooled connection dead and carries on.
        await db.endpoint_store.add(endpoint(2))
        assert await terminate_backends(dsn, db.application_name) >= 1
        assert await db.delivery_store.insert_many([delivery(3)]) == ["dlv_0003"]
        assert await terminate_backends(dsn, db.application_name) >= 1
        claimed = await _claim(db)
        assert claimed == ["dlv_0001", "dlv_0002", "dlv_0003"]
        assert await terminate_backends(dsn, db.application_name) >= 1
        done = [outcome(i, W1, DeliveryStatus.SUCCESS) for i in claimed]
        assert await db.delivery_store.record(done) == 3
        assert await terminate_backends(dsn, db.application_name) >= 1
        stats = await db.delivery_store.stats(DeliveryFilter())
        assert (stats.success, stats.total_attempts) == (3, 3)
        assert [e.id for e in await db.endpoint_store.list()] == ["ep_2", "ep_1"]


async def test_postgres_replaces_every_dead_pooled_connection_after_one_failure() -> None:
    async with temporary_postgres() as db:
        dsn = await server_dsn()
        # Four connections in the pool, all recently used, then all killed.
        await asyncio.gather(*(db.delivery_store.stats(DeliveryFilter()) for _ in range(4)))
        assert await terminate_backends(dsn, db.application_name) >= 4
        attempts: list[int] = []

        async def select_one(conn: AsyncConnection, attempt: int) -> int:
            attempts.append(attempt)
            raw = await conn.get_raw_connection()
            return int(await raw.driver_connection.fetchval("SELECT 1"))  # the raw hot path

        assert await db.run(select_one) == 1
        # The first attempt met a dead connection; the retry's checkout found the rest stale
        # and recycled them all instead of trying them one by one.
        assert attempts == [1, 2]


@pytest.fixture
async def locked_pg() -> AsyncIterator[tuple[PostgresDatabase, str]]:
    async with temporary_postgres() as db:
        await db.init()
        yield db, await server_dsn()


@asynccontextmanager
async def _table_locked(
    db: PostgresDatabase, dsn: str
) -> AsyncIterator[asyncpg.transaction.Transaction]:
    """Another session holding the delivery table locked (ACCESS EXCLUSIVE) until its
    transaction, yielded, is rolled back (at the latest when the block ends)."""
    blocker = await asyncpg.connect(dsn)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            f"LOCK TABLE {db.names.qualified(db.names.deliveries)} IN ACCESS EXCLUSIVE MODE"
        )
        yield tx
    finally:
        await blocker.close()


async def _waiting_on_the_lock(db: PostgresDatabase, dsn: str, what: str, *, cancel: bool) -> None:
    """Wait until a statement of the store's waits on a lock (with ``cancel``: and cancel it)."""
    counted = "count(pg_cancel_backend(pid))" if cancel else "count(*)"
    observer = await asyncpg.connect(dsn)
    try:
        for _ in range(200):
            found = await observer.fetchval(
                f"SELECT {counted} FROM pg_stat_activity WHERE application_name = $1 "
                "AND wait_event_type = 'Lock'",
                db.application_name,
            )
            if found:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{what} never waited on the lock")
    finally:
        await observer.close()


async def _kill_while_waiting_on_a_lock(
    db: PostgresDatabase, dsn: str, operation: Awaitable[R]
) -> R:
    """Run ``operation`` while another session holds the delivery table locked; terminate the
    store's backend while the operation waits, then release the lock. Returns its result."""
    async with _table_locked(db, dsn) as lock:
        task = asyncio.ensure_future(operation)
        await _waiting_on_the_lock(db, dsn, "the operation", cancel=False)
        assert await terminate_backends(dsn, db.application_name) >= 1
        await asyncio.sleep(0.1)
        await lock.rollback()
        return await asyncio.wait_for(task, 20)


async def test_postgres_statement_cancelled_inside_a_transaction_leaves_every_connection_usable(
    locked_pg: tuple[PostgresDatabase, str],
) -> None:
    """A statement that fails inside an operation's transaction (cancelled here, as a lock or
    statement timeout would) is reported, and the connection goes back to the pool rolled
    back: every later operation, on every pooled connection, works."""
    db, dsn = locked_pg
    await db.delivery_store.insert_many([delivery(1), delivery(2)])
    await db.delivery_store.claim(
        worker_id=W1, now=NOW, lease_until=NOW + timedelta(seconds=30), limit=10
    )
    async with _table_locked(db, dsn) as lock:
        # release() is BEGIN; UPDATE; COMMIT on a pooled connection: it waits on the lock.
        task = asyncio.ensure_future(db.delivery_store.release(["dlv_0001"], worker_id=W1))
        await _waiting_on_the_lock(db, dsn, "the release", cancel=True)
        with pytest.raises(StoreError, match="canceling statement due to user request"):
            await asyncio.wait_for(task, 20)
        await lock.rollback()
    # Twice the pool's size at once: every pooled connection is used, none is stuck.
    found = await asyncio.gather(*(db.delivery_store.get("dlv_0001") for _ in range(8)))
    assert all(d is not None and d.lease_owner == W1 for d in found)  # nothing half-applied
    await db.delivery_store.release(["dlv_0001", "dlv_0002"], worker_id=W1)
    again = await db.delivery_store.get("dlv_0001")
    assert again is not None and again.lease_owner is None


async def test_postgres_insert_cancelled_mid_flight_gives_its_connection_back(
    locked_pg: tuple[PostgresDatabase, str],
) -> None:
    """An insert (a hot path: the driver's connection checked out of the pool on its own)
    whose caller is cancelled while the statement waits on a lock returns its connection to
    the pool, usable: afterwards twice the pool's size of writes at once all go through."""
    db, dsn = locked_pg
    async with _table_locked(db, dsn) as lock:
        task = asyncio.ensure_future(db.delivery_store.insert_many([delivery(1)]))
        await _waiting_on_the_lock(db, dsn, "the insert", cancel=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            gc.collect()
        # Not left for the collector to terminate ("non-checked-in connection").
        assert not [w for w in caught if issubclass(w.category, sqlalchemy.exc.SAWarning)]
        await lock.rollback()
    rows = [delivery(n) for n in range(2, 10)]
    inserted = await asyncio.gather(*(db.delivery_store.insert_many([row]) for row in rows))
    assert inserted == [[row.id] for row in rows]
    # The cancelled insert may still have committed: the server ends it on its own.
    claimed = await _claim(db)
    assert set(claimed) >= {row.id for row in rows}
    outcomes = [outcome(row.id, W1, DeliveryStatus.SUCCESS, att=attempt(1, 200)) for row in rows]
    applied = await asyncio.gather(*(db.delivery_store.record([o]) for o in outcomes))
    assert applied == [1] * len(rows)


async def test_postgres_insert_killed_mid_flight_is_retried(
    locked_pg: tuple[PostgresDatabase, str],
) -> None:
    db, dsn = locked_pg
    rows = [delivery(1), delivery(2)]
    result = await _kill_while_waiting_on_a_lock(db, dsn, db.delivery_store.insert_many(rows))
    assert result == ["dlv_0001", "dlv_0002"]
    assert (await db.delivery_store.stats(DeliveryFilter())).total == 2


async def test_postgres_claim_and_record_killed_mid_flight_are_retried_once(
    locked_pg: tuple[PostgresDatabase, str],
) -> None:
    db, dsn = locked_pg
    await db.delivery_store.insert_many([delivery(1), delivery(2)])
    claimed = await _kill_while_waiting_on_a_lock(
        db,
        dsn,
        db.delivery_store.claim(
            worker_id=W1, now=NOW, lease_until=NOW + timedelta(seconds=30), limit=10
        ),
    )
    assert [d.id for d in claimed] == ["dlv_0001", "dlv_0002"]
    outcomes = [
        outcome("dlv_0001", W1, DeliveryStatus.SUCCESS, att=attempt(1, 200)),
        outcome("dlv_0002", W1, DeliveryStatus.FAILED, att=attempt(1, 400)),
    ]
    applied = await _kill_while_waiting_on_a_lock(db, dsn, db.delivery_store.record(outcomes))
    assert applied == 2
    first = await db.delivery_store.get("dlv_0001")
    assert first is not None
    assert (first.status, first.attempt_count, len(first.attempts)) == (
        DeliveryStatus.SUCCESS,
        1,
        1,
    )
    # A replayed batch (what a retry after a lost acknowledgement sends) changes nothing.
    assert await db.delivery_store.record(outcomes) == 0
    again = await db.delivery_store.get("dlv_0001")
    assert again is not None and again.attempt_count == 1


async def test_postgres_claim_whose_answer_is_lost_gets_its_rows_when_retried() -> None:
    """The claim commits but its answer never arrives (the connection drops on the way back):
    the retry returns the rows the lost attempt leased, rather than leaving them leased to a
    worker that does not know it holds them until the lease expires."""
    async with relayed_postgres_database(retry_timeout=10) as (relay, db):
        await db.delivery_store.insert_many([delivery(1), delivery(2), delivery(3)])
        lease_until = NOW + timedelta(seconds=30)
        relay.lose_answer = b"UPDATE 2\x00"  # the claim's CommandComplete
        claimed = await db.delivery_store.claim(
            worker_id=W1, now=NOW, lease_until=lease_until, limit=2
        )
        assert relay.lose_answer is None, "the claim's answer was not dropped"
        # The retry took back the two rows the first attempt leased, and claimed no others.
        assert [d.id for d in claimed] == ["dlv_0001", "dlv_0002"]
        assert all(d.lease_owner == W1 and d.lease_expires_at == lease_until for d in claimed)
        third = await db.delivery_store.get("dlv_0003")
        assert third is not None and third.lease_owner is None
        # Another claim of the same worker (its own lease) leaves them alone.
        later = await db.delivery_store.claim(
            worker_id=W1, now=NOW, lease_until=lease_until + timedelta(milliseconds=1), limit=5
        )
        assert [d.id for d in later] == ["dlv_0003"]


async def test_postgres_server_restart_during_operations() -> None:
    try:
        cluster = await asyncio.to_thread(ThrowawayCluster)
        await asyncio.to_thread(cluster.start)
    except Exception as exc:
        unavailable(f"cannot start a throwaway PostgreSQL cluster: {exc}")
        raise AssertionError("unreachable") from exc
    schema = new_schema()
    db = postgres_database(cluster.dsn, schema, retry_timeout=30)
    try:
        await db.delivery_store.insert_many([delivery(1), delivery(2)])
        claimed = await _claim(db)
        await asyncio.to_thread(cluster.stop)
        # The server is gone: these wait and retry until it is back.
        recording = asyncio.ensure_future(
            db.delivery_store.record([outcome(i, W1, DeliveryStatus.SUCCESS) for i in claimed])
        )
        inserting = asyncio.ensure_future(db.delivery_store.insert_many([delivery(3)]))
        await asyncio.sleep(1.0)
        assert not recording.done() and not inserting.done()
        await asyncio.to_thread(cluster.start)
        assert await asyncio.wait_for(recording, 30) == 2
        assert await asyncio.wait_for(inserting, 30) == ["dlv_0003"]
        stats = await db.delivery_store.stats(DeliveryFilter())
        assert (stats.success, stats.pending, stats.total_attempts) == (2, 1, 2)
    finally:
        await db.close()
        await asyncio.to_thread(cluster.remove)


async def test_postgres_gives_up_after_the_retry_timeout() -> None:
    async with temporary_postgres(retry_timeout=0.5) as db:
        await db.init()
        db._url = db._url.set(port=free_port())  # the server "moves away"
        await db.close()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"cannot reach .* \(gave up after"):
            await db.delivery_store.get("x")
        assert time.monotonic() - started < 5


# -- SQLite ----------------------------------------------------------------------------------------


async def test_sqlite_file_uses_wal(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "wal.db")
    await db.init()
    await db.close()
    conn = sqlite3.connect(tmp_path / "wal.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


async def test_sqlite_busy_database_is_retried_not_surfaced(tmp_path: Path) -> None:
    # busy_timeout=0: SQLite gives up at once, so the store's own retries do the waiting.
    db = SQLiteDatabase(tmp_path / "busy.db", busy_timeout=0, retry_timeout=20)
    await db.delivery_store.insert_many([delivery(1)])
    blocker = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        writes = [
            asyncio.ensure_future(db.delivery_store.insert_many([delivery(2)])),
            asyncio.ensure_future(_claim(db)),
        ]
        await asyncio.sleep(0.5)
        assert not any(w.done() for w in writes)
        blocker.execute("COMMIT")
        inserted, claimed = await asyncio.wait_for(asyncio.gather(*writes), 20)
    finally:
        blocker.close()
        await db.close()
    assert inserted == ["dlv_0002"]
    assert set(claimed) <= {"dlv_0001", "dlv_0002"} and "dlv_0001" in claimed


async def test_sqlite_readers_are_not_blocked_by_a_writer(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "read.db", busy_timeout=0, retry_timeout=1)
    await db.delivery_store.insert_many([delivery(1)])
    blocker = sqlite3.connect(tmp_path / "read.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        blocker.execute("DELETE FROM kmsg_webhook_deliveries")
        assert await db.delivery_store.get("dlv_0001") == delivery(1)  # WAL: the old snapshot
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
        await db.close()


async def test_sqlite_connection_back_in_the_pool_has_no_open_transaction(
    tmp_path: Path,
) -> None:
    # The pool does not roll back on every return (that is a hop to aiosqlite's thread per
    # operation); it rolls back only a transaction left open, here one begun on the driver
    # connection (as the hot paths do), which SQLAlchemy never saw.
    db = SQLiteDatabase(tmp_path / "reset.db", busy_timeout=0, retry_timeout=1)
    await db.delivery_store.insert_many([delivery(1)])
    with pytest.raises(RuntimeError):
        async with db.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.execute("BEGIN IMMEDIATE")
            await driver.execute("DELETE FROM kmsg_webhook_deliveries")
            raise RuntimeError("the operation failed mid-transaction")
    other = sqlite3.connect(tmp_path / "reset.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the write lock was released
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert await db.delivery_store.get("dlv_0001") == delivery(1)
    assert await db.delivery_store.insert_many([delivery(2)]) == ["dlv_0002"]
    await db.close()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_an_insert_retried_after_a_lost_commit_reports_its_rows(dialect: str) -> None:
    rows = [delivery(1), delivery(2)]
    maker = temporary_sqlite if dialect == "sqlite" else temporary_postgres
    async with maker() as db:
        await db.delivery_store.insert_many(rows[:1])  # the "lost" attempt wrote this one
        async with db.driver() as driver:
            new = await db.insert_deliveries(driver, rows, retried=True)
        assert new == {"dlv_0001", "dlv_0002"}
        first_try_only = await db.delivery_store.insert_many([delivery(9, event_id="evt_1")])
        assert first_try_only == []  # a genuine duplicate is still skipped


async def test_postgres_schema_is_dropped_by_the_helpers() -> None:
    dsn = await server_dsn()
    schema = new_schema()
    db = postgres_database(dsn, schema)
    await db.init()
    await db.close()
    await drop_schema(dsn, schema)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema) is None
    finally:
        await conn.close()
