"""What the SQL backends add beyond the conformance suite: concurrent workers, lease locking,
big batches, timestamp precision, the default attempt cap, and the runtime on top of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import aiosqlite
import asyncpg
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    StoreError,
    WebhookAttempt,
    WebhookDelivery,
)
from kmsg_webhook.stores.rows import attempt_to_json, dumps
from kmsg_webhook.stores.sql.base import SqlDatabase
from kmsg_webhook.stores.sql.postgres import PostgresDatabase
from kmsg_webhook.stores.sql.sqlite import SQLiteDatabase
from support.records import T0, W1, attempt, delivery, outcome
from support.runtime import EventFactory, RuntimeFactory, WaitUntil
from support.servers import Receiver
from support.stores import postgres_database, server_dsn, temporary_postgres, temporary_sqlite

NOW = T0 + timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[SqlDatabase]:
    maker = temporary_sqlite if request.param == "sqlite" else temporary_postgres
    async with maker() as database:
        await database.init()
        yield database


def sibling(db: SqlDatabase) -> SqlDatabase:
    """Another store (its own pool or connection) on the same tables: another worker process."""
    if isinstance(db, SQLiteDatabase):
        return SQLiteDatabase(db.path)
    assert isinstance(db, PostgresDatabase)
    return postgres_database(db._url.render_as_string(hide_password=False), db.names.schema or "")


async def claim_ids(db: SqlDatabase, worker: str, limit: int) -> list[str]:
    claimed = await db.delivery_store.claim(
        worker_id=worker, now=NOW, lease_until=NOW + timedelta(minutes=5), limit=limit
    )
    return [d.id for d in claimed]


async def test_concurrent_workers_never_claim_the_same_row(db: SqlDatabase) -> None:
    await db.delivery_store.insert_many([delivery(n) for n in range(1, 301)])
    workers = [sibling(db) for _ in range(4)]

    async def drain(store: SqlDatabase, name: str) -> list[str]:
        taken: list[str] = []
        while batch := await claim_ids(store, name, 7):
            taken.extend(batch)
            await asyncio.sleep(0)
        return taken

    try:
        results = await asyncio.gather(*(drain(w, f"w{i}") for i, w in enumerate(workers)))
    finally:
        for worker in workers:
            await worker.close()
    everything = [i for r in results for i in r]
    assert len(everything) == len(set(everything)) == 300
    assert sum(1 for r in results if r) >= 2  # the work was actually shared


async def test_postgres_claim_leaves_no_row_locked() -> None:
    async with temporary_postgres() as db:
        await db.delivery_store.insert_many([delivery(1), delivery(2)])
        claimed = await claim_ids(db, W1, 10)
        conn = await asyncpg.connect(await server_dsn())
        try:
            async with conn.transaction():
                table = db.names.qualified(db.names.deliveries)
                locked = await conn.fetch(
                    f"SELECT id FROM {table} WHERE id = ANY($1) FOR UPDATE NOWAIT", claimed
                )
        finally:
            await conn.close()
        assert sorted(r["id"] for r in locked) == claimed


async def test_claim_returns_oldest_due_first_for_a_big_batch(db: SqlDatabase) -> None:
    rng = random.Random(7)
    rows = [
        delivery(n, due=T0 + timedelta(milliseconds=rng.randrange(0, 50))) for n in range(1, 401)
    ]
    await db.delivery_store.insert_many(rows)
    claimed = await db.delivery_store.claim(
        worker_id=W1, now=NOW, lease_until=NOW + timedelta(seconds=30), limit=400
    )
    keys = [(d.next_attempt_at, d.id) for d in claimed]
    assert len(keys) == 400 and keys == sorted(keys)  # type: ignore[type-var]


async def test_large_batches_keep_input_order_and_dedupe_across_statements(
    db: SqlDatabase,
) -> None:
    await db.delivery_store.insert_many([delivery(5)])
    rows = [delivery(n) for n in range(1, 2601)]
    rows[1800] = delivery(9001, event_id="evt_10")  # same key as row 10, in another statement
    inserted = await db.delivery_store.insert_many(rows)
    expected = [d.id for d in rows if d.id not in ("dlv_0005", "dlv_9001")]
    assert inserted == expected
    assert (await db.delivery_store.stats(DeliveryFilter())).total == 2599


def test_json_of_a_delivery_holds_attempts_as_the_codec_stores_them() -> None:
    # The Postgres insert sends deliveries as one JSON parameter written by orjson; an attempt
    # inside must be what attempt_to_json stores, or rows would differ by the path they took.
    made = WebhookAttempt(
        attempt_number=2,
        started_at=T0 + timedelta(microseconds=123),
        latency_ms=4.5,
        http_status=503,
        response_body="busy 안녕",
        error="HTTP 503",
    )
    row = dataclasses.replace(delivery(1), attempts=(made,), attempt_count=2)
    [written] = orjson.loads(dumps([row]))
    assert written["attempts"] == [attempt_to_json(made)]
    assert written["status"] == "pending" and written["event_type"] == "message.sent"
    assert orjson.loads(dumps([datetime(2026, 1, 2, 3, 4, 5)])) == [
        "2026-01-02T03:04:05+00:00"  # naive: UTC
    ]


async def test_timestamps_round_trip_at_the_dialects_precision(db: SqlDatabase) -> None:
    precise = T0 + timedelta(microseconds=1500)
    row = dataclasses.replace(delivery(1), created_at=precise, next_attempt_at=precise)
    await db.delivery_store.insert_many([row])
    stored = await db.delivery_store.get("dlv_0001")
    assert stored is not None
    if isinstance(db, SQLiteDatabase):  # integer epoch milliseconds: truncated
        assert stored.created_at == T0 + timedelta(milliseconds=1)
    else:
        assert stored.created_at == precise
    assert stored.created_at.utcoffset() == timedelta(0)
    # Bounds compare with the stored value exactly, whatever their own precision.
    half_ms = timedelta(microseconds=500)
    after = await db.delivery_store.list(DeliveryFilter(created_after=stored.created_at + half_ms))
    before = await db.delivery_store.list(
        DeliveryFilter(created_before=stored.created_at + half_ms)
    )
    at = await db.delivery_store.list(DeliveryFilter(created_after=stored.created_at))
    assert (len(after.items), len(before.items), len(at.items)) == (0, 1, 1)


async def test_attempts_are_capped_at_20_by_default(db: SqlDatabase) -> None:
    assert db.max_stored_attempts == 20
    await db.delivery_store.insert_many([delivery(1)])
    now = T0
    for n in range(1, 23):
        now += timedelta(seconds=1)
        (row,) = await db.delivery_store.claim(
            worker_id=W1, now=now, lease_until=now + timedelta(seconds=30), limit=1
        )
        await db.delivery_store.record(
            [outcome(row, W1, DeliveryStatus.PENDING, att=attempt(n, 500, at=now), next_at=now)]
        )
    stored = await db.delivery_store.get("dlv_0001")
    assert stored is not None
    assert stored.attempt_count == 22
    assert [a.attempt_number for a in stored.attempts] == list(range(3, 23))
    assert stored.attempts[-1].started_at == now


async def test_deliveries_round_trip_every_field(db: SqlDatabase) -> None:
    full = dataclasses.replace(
        delivery(1),
        status=DeliveryStatus.EXHAUSTED,
        attempts=(attempt(1, 500), attempt(2, None)),
        attempt_count=2,
        completed_at=T0,
        next_attempt_at=None,
        last_error="timeout",
        lease_owner=None,
    )
    leased = dataclasses.replace(
        delivery(2), lease_owner=W1, lease_expires_at=T0 + timedelta(seconds=30)
    )
    assert await db.delivery_store.insert_many([full, leased]) == ["dlv_0001", "dlv_0002"]
    assert await db.delivery_store.get("dlv_0001") == full
    assert await db.delivery_store.get("dlv_0002") == leased
    stats = await db.delivery_store.stats(DeliveryFilter())
    assert (stats.total_attempts, stats.average_latency_ms) == (2, 12.5)


async def test_sqlite_refuses_tables_left_by_the_original_library(tmp_path: Path) -> None:
    path = tmp_path / "original.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE kmsg_webhook_endpoints (id TEXT PRIMARY KEY, url TEXT NOT NULL, "
        "active INTEGER NOT NULL, events_json TEXT NOT NULL, created_at INTEGER NOT NULL, "
        "updated_at INTEGER NOT NULL, status TEXT NOT NULL)"
    )
    conn.close()
    db = SQLiteDatabase(path, retry_timeout=0)
    with pytest.raises(StoreError, match="original TypeScript library"):
        await db.init()
    await db.close()
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    finally:
        conn.close()
    assert names == ["kmsg_webhook_endpoints"]


async def test_sqlite_in_memory_database_serves_concurrent_callers() -> None:
    db = SQLiteDatabase(":memory:")
    try:
        await asyncio.gather(*(db.delivery_store.insert_many([delivery(n)]) for n in range(1, 51)))
        claimed = await asyncio.gather(*(claim_ids(db, f"w{i}", 5) for i in range(10)))
        assert sorted(i for batch in claimed for i in batch) == [
            f"dlv_{n:04d}" for n in range(1, 51)
        ]
    finally:
        await db.close()


# -- SQLite's one connection ---------------------------------------------------------------------


async def _hold_a_statement(db: SqlDatabase) -> tuple[asyncio.Task[None], asyncio.Event]:
    """Start a single-statement operation that keeps its hold on the connection until the
    returned event is set; returns once it holds it."""
    held, release = asyncio.Event(), asyncio.Event()

    async def op(conn: AsyncConnection, attempt: int) -> None:
        held.set()
        await release.wait()

    task = asyncio.create_task(db.run(op, single_statement=True))
    await held.wait()
    return task, release


async def test_sqlite_single_statements_share_the_connection_in_arrival_order() -> None:
    async with temporary_sqlite() as db:
        await db.init()
        first, release = await _hold_a_statement(db)
        # An insert is one statement: it runs beside the other instead of waiting for it.
        inserted = await asyncio.wait_for(db.delivery_store.insert_many([delivery(1)]), 5)
        assert inserted == ["dlv_0001"]
        alone = asyncio.create_task(db.endpoint_store.list())  # needs the connection alone
        later = asyncio.create_task(db.delivery_store.insert_many([delivery(2)]))
        await asyncio.sleep(0.05)
        # First come, first served: the later statement waits behind the waiting operation.
        assert not alone.done() and not later.done()
        release.set()
        await first
        assert await alone == []
        assert await later == ["dlv_0002"]


async def test_sqlite_statements_never_run_inside_another_operations_transaction() -> None:
    async with temporary_sqlite() as db:
        await db.init()
        await db.delivery_store.insert_many([delivery(1)])
        inside, release = asyncio.Event(), asyncio.Event()

        async def rolled_back(conn: AsyncConnection, attempt: int) -> None:
            await db.begin_write(conn)
            await conn.exec_driver_sql("DELETE FROM kmsg_webhook_deliveries")
            inside.set()
            await release.wait()
            raise RuntimeError("the caller gives up: roll back")

        transaction = asyncio.create_task(db.run(rolled_back))
        await inside.wait()
        insert = asyncio.create_task(db.delivery_store.insert_many([delivery(2)]))
        await asyncio.sleep(0.05)
        assert not insert.done()  # it would have joined the open transaction
        release.set()
        with pytest.raises(StoreError, match="roll back"):
            await transaction
        assert await insert == ["dlv_0002"]
        # The rollback undid only the transaction's own delete; the insert committed after it.
        assert await db.delivery_store.get("dlv_0001") is not None
        assert await db.delivery_store.get("dlv_0002") is not None


async def test_sqlite_a_cancelled_waiter_lets_the_statements_behind_it_through() -> None:
    async with temporary_sqlite() as db:
        await db.init()
        first, release = await _hold_a_statement(db)
        alone = asyncio.create_task(db.endpoint_store.list())
        later = asyncio.create_task(db.delivery_store.insert_many([delivery(2)]))
        await asyncio.sleep(0.01)
        alone.cancel()
        assert await asyncio.wait_for(later, 5) == ["dlv_0002"]  # the first still holds
        assert not first.done()
        release.set()
        await first
        assert await db.endpoint_store.list() == []  # nothing left held


async def test_sqlite_close_waits_for_statements_and_a_later_call_opens_again() -> None:
    async with temporary_sqlite() as db:
        # Closing while the first call opens the store neither deadlocks nor loses the call.
        first_call = db.delivery_store.insert_many([delivery(1)])
        assert (await asyncio.wait_for(asyncio.gather(first_call, db.close()), 5))[0] == [
            "dlv_0001"
        ]
        holding, release = await _hold_a_statement(db)
        closing = asyncio.create_task(db.close())
        await asyncio.sleep(0.05)
        assert not closing.done()  # the statement in progress finishes on the open connection
        release.set()
        await holding
        await closing
        assert await db.delivery_store.insert_many([delivery(2)]) == ["dlv_0002"]
        assert await db.delivery_store.get("dlv_0001") is not None


# -- the runtime on SQL stores ------------------------------------------------------------------


async def _delivered(db: SqlDatabase) -> list[WebhookDelivery]:
    page = await db.delivery_store.list(DeliveryFilter(statuses=(DeliveryStatus.SUCCESS,)))
    return list(page.items)


async def test_runtime_delivers_through_a_sql_store(
    db: SqlDatabase,
    make_runtime: RuntimeFactory,
    make_event: EventFactory,
    receiver: Receiver,
    wait_until: WaitUntil,
) -> None:
    runtime = await make_runtime(persistence=db.persistence())
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/hook"), events=["message.sent"]))
    await runtime.emit(make_event("evt_async"))
    sent_now = await runtime.emit_sync(make_event("evt_sync"))
    assert [d.event_id for d in sent_now] == ["evt_sync"]
    await wait_until(lambda: len(receiver.at("/hook")) == 2, what="both events delivered")
    await wait_until(lambda: _count(db, 2), what="both deliveries recorded")
    delivered = await _delivered(db)
    assert sorted(d.event_id for d in delivered) == ["evt_async", "evt_sync"]
    assert all(d.attempt_count == 1 and d.attempts[0].http_status == 200 for d in delivered)


async def _count(db: SqlDatabase, n: int) -> bool:
    return len(await _delivered(db)) == n


async def test_runtime_emit_joins_the_callers_sqlite_transaction(
    make_runtime: RuntimeFactory,
    make_event: EventFactory,
    receiver: Receiver,
    wait_until: WaitUntil,
) -> None:
    async with temporary_sqlite() as db:
        runtime = await make_runtime(persistence=db.persistence())
        await runtime.add_endpoint(
            EndpointInput(url=receiver.url("/outbox"), events=["message.sent"])
        )
        async with aiosqlite.connect(db.path) as conn:
            await runtime.emit(make_event("evt_rolled_back"), connection=conn)
            await conn.rollback()
            await runtime.emit(make_event("evt_committed"), connection=conn)
            await conn.commit()
        await wait_until(lambda: _count(db, 1), what="the committed event delivered")
        await runtime.flush()
        assert [r.body.count(b"evt_committed") for r in receiver.at("/outbox")] == [1]
        assert (await db.delivery_store.stats(DeliveryFilter())).total == 1
        await runtime.shutdown()  # before the temporary file goes away
