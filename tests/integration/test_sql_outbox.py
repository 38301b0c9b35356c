"""The transactional outbox: ``insert_many(..., connection=caller_connection)``.

Deliveries written on the caller's own connection commit or roll back with the caller's
business rows. Every connection kind each backend accepts is exercised: asyncpg and SQLAlchemy
for PostgreSQL, aiosqlite and SQLAlchemy for SQLite.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta

import aiosqlite
import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    StoreError,
    WebhookDelivery,
    create_in_memory_persistence,
)
from kmsg_webhook.stores.sql.base import SqlDatabase
from kmsg_webhook.stores.sql.listen import PostgresWatch
from kmsg_webhook.stores.sql.postgres import PostgresDatabase
from kmsg_webhook.stores.sql.sqlite import SQLiteDatabase
from support.records import T0, W1, attempt, delivery, outcome
from support.stores import server_dsn, temporary_postgres, temporary_sqlite

NOW = T0 + timedelta(seconds=5)

# A caller's transaction: run(write) executes `write(connection)` after inserting a business
# row, then commits or rolls back; orders() counts the business rows afterwards.
Transaction = Callable[[Callable[[object], Awaitable[None]], bool], Awaitable[None]]


async def _claimable(db: SqlDatabase) -> list[str]:
    claimed = await db.delivery_store.claim(
        worker_id=W1, now=NOW, lease_until=NOW + timedelta(seconds=30), limit=10
    )
    return [d.id for d in claimed]


async def _check_outbox(
    db: SqlDatabase, transaction: Transaction, count_orders: Callable[[], Awaitable[int]]
) -> None:
    rows = [delivery(1), delivery(2), delivery(3, event_id="evt_1")]  # the third is a duplicate

    async def write(connection: object) -> None:
        assert await db.delivery_store.insert_many(rows, connection=connection) == [
            "dlv_0001",
            "dlv_0002",
        ]
        # Not visible outside the caller's transaction yet.
        assert await db.delivery_store.get("dlv_0001") is None

    await transaction(write, False)
    assert await db.delivery_store.get("dlv_0001") is None
    assert await _claimable(db) == []
    assert await count_orders() == 0

    await transaction(write, True)
    assert await db.delivery_store.get("dlv_0002") == rows[1]
    assert await _claimable(db) == ["dlv_0001", "dlv_0002"]
    assert await count_orders() == 1


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
async def pg() -> AsyncIterator[PostgresDatabase]:
    async with temporary_postgres() as db:
        await db.init()
        async with db.connect() as conn:
            await conn.exec_driver_sql(
                f"CREATE TABLE {db.names.qualified('orders')} (id text PRIMARY KEY)"
            )
            await conn.commit()
        yield db


async def _pg_orders(db: PostgresDatabase) -> int:
    async with db.connect() as conn:
        return int(
            (
                await conn.exec_driver_sql(f"SELECT count(*) FROM {db.names.qualified('orders')}")
            ).scalar_one()
        )


async def test_postgres_outbox_on_an_asyncpg_connection(pg: PostgresDatabase) -> None:
    dsn = await server_dsn()
    conn = await asyncpg.connect(dsn)
    orders = pg.names.qualified("orders")

    async def transaction(write: Callable[[object], Awaitable[None]], commit: bool) -> None:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"INSERT INTO {orders} VALUES ('order-1')")
        await write(conn)
        await (tx.commit() if commit else tx.rollback())

    try:
        await _check_outbox(pg, transaction, lambda: _pg_orders(pg))
    finally:
        await conn.close()


async def test_postgres_outbox_on_an_asyncpg_pool_connection(pg: PostgresDatabase) -> None:
    pool = await asyncpg.create_pool(await server_dsn(), min_size=1, max_size=1)
    assert pool is not None
    try:
        async with pool.acquire() as conn, conn.transaction():
            assert await pg.delivery_store.insert_many([delivery(7)], connection=conn) == [
                "dlv_0007"
            ]
        assert await _claimable(pg) == ["dlv_0007"]
    finally:
        await pool.close()


async def test_postgres_outbox_on_a_sqlalchemy_connection(pg: PostgresDatabase) -> None:
    dsn = await server_dsn()
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    orders = pg.names.qualified("orders")

    async def transaction(write: Callable[[object], Awaitable[None]], commit: bool) -> None:
        async with engine.connect() as conn:
            await conn.execute(sa.text(f"INSERT INTO {orders} VALUES ('order-1')"))
            await write(conn)
            await (conn.commit() if commit else conn.rollback())

    try:
        await _check_outbox(pg, transaction, lambda: _pg_orders(pg))
    finally:
        await engine.dispose()


async def test_postgres_notifies_listeners_of_committed_pending_rows_only(
    pg: PostgresDatabase,
) -> None:
    heard: asyncio.Queue[datetime | None] = asyncio.Queue()
    watch = await pg.watch(heard.put_nowait)
    # Listening: look now, for rows committed before the LISTEN (nobody heard their NOTIFY).
    assert heard.get_nowait() is None

    async def next_notice() -> datetime | None:
        return await asyncio.wait_for(heard.get(), 10)

    conn = await asyncpg.connect(await server_dsn())
    engine = create_async_engine(
        (await server_dsn()).replace("postgresql://", "postgresql+asyncpg://", 1)
    )
    try:
        async with conn.transaction():
            await pg.delivery_store.insert_many([delivery(1)], connection=conn)
            await asyncio.sleep(0.2)
            assert heard.empty(), "notified before the commit"
        assert await next_notice() == delivery(1).next_attempt_at

        tx = conn.transaction()
        await tx.start()
        await pg.delivery_store.insert_many([delivery(2)], connection=conn)
        await tx.rollback()
        async with engine.connect() as sa_conn:  # the SQLAlchemy path, committed
            await pg.delivery_store.insert_many([delivery(3)], connection=sa_conn)
            await sa_conn.commit()
        assert await next_notice() == delivery(3).next_attempt_at  # nothing for the rollback

        # A recorded retry announces when it falls due; a success announces nothing.
        first, second = await pg.delivery_store.claim(
            worker_id=W1, now=NOW, lease_until=NOW + timedelta(seconds=30), limit=2
        )
        later = NOW + timedelta(minutes=5)
        await pg.delivery_store.record(
            [
                outcome(first, W1, DeliveryStatus.PENDING, next_at=later),
                outcome(second, W1, DeliveryStatus.SUCCESS),
            ]
        )
        assert await next_notice() == later
        # A re-queue (replay) announces its rows as due now.
        assert await pg.delivery_store.requeue(DeliveryFilter(), now=NOW) == 1
        assert await next_notice() == NOW
        await asyncio.sleep(0.2)
        assert heard.empty()
    finally:
        await watch.close()
        await conn.close()
        await engine.dispose()


async def test_postgres_release_notifies_listeners_of_the_rows_handed_back(
    pg: PostgresDatabase,
) -> None:
    await pg.delivery_store.insert_many([delivery(1), delivery(2)])
    claimed = await pg.delivery_store.claim(
        worker_id=W1, now=NOW, lease_until=NOW + timedelta(seconds=30), limit=2
    )
    heard: asyncio.Queue[datetime | None] = asyncio.Queue()
    watch = await pg.watch(heard.put_nowait)
    try:
        assert heard.get_nowait() is None  # listening: look now
        await pg.delivery_store.release([d.id for d in claimed], worker_id=W1)
        assert await asyncio.wait_for(heard.get(), 10) == min(
            d.next_attempt_at for d in claimed if d.next_attempt_at
        )
    finally:
        await watch.close()


async def test_postgres_sqlalchemy_inserts_announce_only_rows_not_already_leased(
    pg: PostgresDatabase,
) -> None:
    heard: asyncio.Queue[datetime | None] = asyncio.Queue()
    watch = await pg.watch(heard.put_nowait)
    engine = create_async_engine(
        (await server_dsn()).replace("postgresql://", "postgresql+asyncpg://", 1)
    )
    leased = dataclasses.replace(
        delivery(1), lease_owner=W1, lease_expires_at=NOW + timedelta(seconds=30)
    )
    try:
        assert heard.get_nowait() is None  # listening: look now
        async with engine.connect() as conn:
            await pg.delivery_store.insert_many([leased], connection=conn)
            await conn.commit()
        await asyncio.sleep(0.3)
        assert heard.empty(), "a row leased to its writer woke other workers"
        async with engine.connect() as conn:
            await pg.delivery_store.insert_many([delivery(2)], connection=conn)
            await conn.commit()
        assert await asyncio.wait_for(heard.get(), 10) == delivery(2).next_attempt_at
    finally:
        await watch.close()
        await engine.dispose()


async def test_a_listener_that_cannot_connect_keeps_trying_and_then_hears(
    pg: PostgresDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    tries = 0

    async def connect() -> asyncpg.Connection:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise ConnectionRefusedError("the database is restarting")
        return await asyncpg.connect(await server_dsn())

    heard: asyncio.Queue[datetime | None] = asyncio.Queue()
    watch = PostgresWatch(connect, pg.channel, heard.put_nowait, where="the test database")
    await watch.start()  # does not raise: polling covers the gap
    try:
        assert await asyncio.wait_for(heard.get(), 10) is None  # back: look now
        await pg.delivery_store.insert_many([delivery(1)])
        assert await asyncio.wait_for(heard.get(), 10) == delivery(1).next_attempt_at
    finally:
        await watch.close()
    assert "LISTEN on the test database failed (the database is restarting)" in caplog.text


async def test_postgres_ordered_rows_on_a_sqlalchemy_connection_keep_their_order(
    pg: PostgresDatabase,
) -> None:
    """Ordered rows written in a caller's SQLAlchemy transaction take their place in the store
    order (the asyncpg driver underneath draws it) and commit or roll back with it."""
    dsn = await server_dsn()
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    keyed = [delivery(1, key="K"), delivery(2, key="K"), delivery(3)]
    try:
        async with engine.connect() as conn:
            await pg.delivery_store.insert_many(keyed[:1], connection=conn)
            await conn.rollback()
        async with engine.connect() as conn:
            inserted = await pg.delivery_store.insert_many(keyed, connection=conn)
            assert inserted == ["dlv_0001", "dlv_0002", "dlv_0003"]
            await conn.commit()
    finally:
        await engine.dispose()
    assert await _claimable(pg) == ["dlv_0001", "dlv_0003"]  # 2 waits for 1
    assert await pg.delivery_store.get("dlv_0002") == keyed[1]


async def test_postgres_asyncpg_connection_outside_a_transaction_is_refused(
    pg: PostgresDatabase,
) -> None:
    conn = await asyncpg.connect(await server_dsn())
    try:
        with pytest.raises(StoreError, match="not inside a transaction"):
            await pg.delivery_store.insert_many([delivery(1)], connection=conn)
    finally:
        await conn.close()
    assert await pg.delivery_store.get("dlv_0001") is None


# -- SQLite ----------------------------------------------------------------------------------------


@pytest.fixture
async def lite() -> AsyncIterator[SQLiteDatabase]:
    async with temporary_sqlite() as db:
        await db.init()
        async with db.connect() as conn:
            await conn.exec_driver_sql("CREATE TABLE orders (id TEXT PRIMARY KEY)")
            await conn.commit()
        yield db


async def _lite_orders(db: SQLiteDatabase) -> int:
    async with db.connect() as conn:
        return int((await conn.exec_driver_sql("SELECT count(*) FROM orders")).scalar_one())


async def test_sqlite_outbox_on_an_aiosqlite_connection(lite: SQLiteDatabase) -> None:
    async with aiosqlite.connect(lite.path) as conn:

        async def transaction(write: Callable[[object], Awaitable[None]], commit: bool) -> None:
            await conn.execute("INSERT INTO orders VALUES ('order-1')")  # implicit BEGIN
            await write(conn)
            await (conn.commit() if commit else conn.rollback())

        await _check_outbox(lite, transaction, lambda: _lite_orders(lite))


async def test_sqlite_outbox_on_an_autocommit_aiosqlite_connection_with_begin(
    lite: SQLiteDatabase,
) -> None:
    async with aiosqlite.connect(lite.path, isolation_level=None) as conn:
        with pytest.raises(StoreError, match="autocommit"):
            await lite.delivery_store.insert_many([delivery(1)], connection=conn)
        await conn.execute("BEGIN")
        await lite.delivery_store.insert_many([delivery(1)], connection=conn)
        await conn.execute("ROLLBACK")
    assert await lite.delivery_store.get("dlv_0001") is None


async def test_sqlite_outbox_on_a_sqlalchemy_connection(lite: SQLiteDatabase) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{lite.path}")

    async def transaction(write: Callable[[object], Awaitable[None]], commit: bool) -> None:
        async with engine.connect() as conn:
            await conn.execute(sa.text("INSERT INTO orders VALUES ('order-1')"))
            await write(conn)
            await (conn.commit() if commit else conn.rollback())

    try:
        await _check_outbox(lite, transaction, lambda: _lite_orders(lite))
    finally:
        await engine.dispose()


async def test_sqlite_outbox_keeps_a_large_batch_in_the_callers_transaction(
    lite: SQLiteDatabase,
) -> None:
    rows = [delivery(n) for n in range(1, 2501)]  # more than one INSERT statement
    async with aiosqlite.connect(lite.path) as conn:
        assert len(await lite.delivery_store.insert_many(rows, connection=conn)) == 2500
        await conn.rollback()
    assert (await lite.delivery_store.stats(DeliveryFilter())).total == 0


# -- wrong connections -----------------------------------------------------------------------------


async def test_each_backend_refuses_a_connection_it_cannot_join(
    pg: PostgresDatabase, lite: SQLiteDatabase
) -> None:
    dsn = await server_dsn()
    pg_conn = await asyncpg.connect(dsn)
    lite_engine = create_async_engine(f"sqlite+aiosqlite:///{lite.path}")
    try:
        async with aiosqlite.connect(lite.path) as lite_conn:
            with pytest.raises(StoreError, match="asyncpg Connection or a SQLAlchemy"):
                await pg.delivery_store.insert_many([delivery(1)], connection=lite_conn)
        with pytest.raises(StoreError, match=r"aiosqlite\.Connection or a SQLAlchemy"):
            await lite.delivery_store.insert_many([delivery(1)], connection=pg_conn)
        for store in (pg.delivery_store, lite.delivery_store):
            with pytest.raises(StoreError, match=r"builtins\.object"):
                await store.insert_many([], connection=object())
        async with lite_engine.connect() as sa_conn:
            with pytest.raises(StoreError, match="cannot write on a sqlite connection"):
                await pg.delivery_store.insert_many([delivery(1)], connection=sa_conn)
    finally:
        await pg_conn.close()
        await lite_engine.dispose()
    assert await pg.delivery_store.get("dlv_0001") is None
    assert await lite.delivery_store.get("dlv_0001") is None


async def test_memory_store_still_refuses_a_connection() -> None:
    with pytest.raises(StoreError):
        await create_in_memory_persistence().delivery_store.insert_many(
            [delivery(1)], connection=object()
        )


# -- the batch on a caller's SQLAlchemy connection -------------------------------------------------


def _every_column(n: int) -> WebhookDelivery:
    """A delivery with every column set: failed after two attempts, lookup hashes, a key."""
    return dataclasses.replace(
        delivery(n, key="K"),
        status=DeliveryStatus.FAILED,
        attempts=(attempt(1, 503), attempt(2, None, at=T0 + timedelta(seconds=1))),
        attempt_count=2,
        completed_at=T0 + timedelta(seconds=2),
        next_attempt_at=None,
        last_error="timeout",
        to_hash="hash-to",
        from_hash="hash-from",
    )


def _leased(n: int) -> WebhookDelivery:
    return dataclasses.replace(
        delivery(n), lease_owner=W1, lease_expires_at=NOW + timedelta(seconds=30)
    )


@pytest.fixture(params=["postgresql", "sqlite"])
async def caller(request: pytest.FixtureRequest) -> AsyncIterator[tuple[SqlDatabase, AsyncEngine]]:
    """A store, and an engine of the caller's own on the same database."""
    postgres = request.param == "postgresql"
    async with temporary_postgres() if postgres else temporary_sqlite() as db:
        await db.init()
        if isinstance(db, PostgresDatabase):
            url = (await server_dsn()).replace("postgresql://", "postgresql+asyncpg://", 1)
        else:
            url = f"sqlite+aiosqlite:///{db.path}"
        engine = create_async_engine(url)
        try:
            yield db, engine
        finally:
            await engine.dispose()


async def _stored_columns(db: SqlDatabase, ids: list[str]) -> list[dict[str, object]]:
    """The stored rows of ``ids`` (in that order) as the database holds them, but for the
    columns that name a row (id, event id) or place it (Postgres' ordering sequence)."""
    table = db.names.qualified(db.names.deliveries)
    async with db.connect() as conn:
        rows = {
            r["id"]: dict(r)
            for r in (await conn.exec_driver_sql(f"SELECT * FROM {table}")).mappings()
        }
    naming = {"id", "event_id", "ordering_seq"}
    return [{k: v for k, v in rows[i].items() if k not in naming} for i in ids]


async def test_a_callers_batch_returns_only_new_ids_and_stores_rows_as_the_store_does(
    caller: tuple[SqlDatabase, AsyncEngine],
) -> None:
    db, engine = caller
    own = [_every_column(1), _leased(2), delivery(3)]
    assert await db.delivery_store.insert_many(own) == ["dlv_0001", "dlv_0002", "dlv_0003"]
    theirs = [
        dataclasses.replace(d, id=f"dlv_{n:04d}", event_id=f"evt_{n}")
        for n, d in zip((11, 12, 13), own, strict=True)
    ]
    batch = [
        own[0],  # stored already: the same id
        *theirs,
        dataclasses.replace(delivery(14), event_id="evt_13"),  # the same event as theirs[2]
    ]
    async with engine.connect() as conn:
        inserted = await db.delivery_store.insert_many(batch, connection=conn)
        assert inserted == ["dlv_0011", "dlv_0012", "dlv_0013"]
        await conn.commit()
    for written in [*own, *theirs]:
        assert await db.delivery_store.get(written.id) == written
    assert await db.delivery_store.get("dlv_0014") is None
    assert await _stored_columns(db, [d.id for d in theirs]) == await _stored_columns(
        db, [d.id for d in own]
    )


async def test_a_failed_batch_on_a_callers_connection_writes_none_of_its_rows(
    caller: tuple[SqlDatabase, AsyncEngine],
) -> None:
    db, engine = caller
    # The second row breaks a NOT NULL constraint: the batch is one statement, so it fails
    # whole, the first row with it.
    broken = dataclasses.replace(delivery(2), endpoint_id=None)
    async with engine.connect() as conn:
        with pytest.raises(StoreError, match="insert on the caller's connection failed"):
            await db.delivery_store.insert_many([delivery(1), broken], connection=conn)
        if db.dialect == "sqlite":
            await conn.commit()  # SQLite undid the statement; the transaction goes on
        else:
            await conn.rollback()  # Postgres refuses the rest of the transaction
    assert (await db.delivery_store.stats(DeliveryFilter())).total == 0


async def test_a_cancelled_batch_on_a_callers_connection_is_cancelled_and_writes_nothing(
    pg: PostgresDatabase,
) -> None:
    dsn = await server_dsn()
    blocker = await asyncpg.connect(dsn)
    engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        held = blocker.transaction()
        await held.start()
        # An uncommitted row with the same id: the batch's insert waits for its outcome.
        await pg.delivery_store.insert_many([delivery(1)], connection=blocker)
        async with engine.connect() as conn:
            batch = [delivery(1), delivery(2)]
            task = asyncio.create_task(pg.delivery_store.insert_many(batch, connection=conn))
            await asyncio.sleep(0.3)
            assert not task.done(), "the insert did not wait for the conflicting row"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await conn.invalidate()
        await held.rollback()
    finally:
        await blocker.close()
        await engine.dispose()
    assert await pg.delivery_store.get("dlv_0001") is None
    assert await pg.delivery_store.get("dlv_0002") is None
