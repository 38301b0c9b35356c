"""What a claim costs next to a blocked backlog, per store, and the SQL claim's query plan.

    python benchmarks/claim_plans.py [--blocked 1000,10000,100000] [--stores memory,sqlite,postgres]

Twenty endpoints hold a backlog of due rows (oldest due first) that every claim must leave
alone (``exclude_endpoints``, as the dispatcher excludes saturated endpoints); 200 other rows
are due after them. Each measurement claims 100 of the other rows and gives them back, and is
reported as the median time per claim and as the ratio to the smallest backlog. For SQLite and
Postgres it also times, in the same run, ``claim_deliveries`` (one walk of the due index that
filters the excluded rows out, rolled back each time) next to the store's claim (which walks
too while fewer than ``WALK_MOST`` rows are due, and beyond goes per endpoint with
``claim_deliveries_around``, reading none of the excluded rows); then both plans at the
largest backlog (EXPLAIN QUERY PLAN; EXPLAIN ANALYZE, whose buffer counts show how many rows
each touched).

Then the other side of that choice: 1,000 endpoints with 10 due rows each (interleaved in due
order), 100 of them left alone, and the two statements timed against each other for claims of
10 and 100 rows. The per-endpoint claim steps through every endpoint with pending rows and
reads up to the claim's limit from each, so here it costs more than the walk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from kmsg_webhook import (
    DeliveryStatus,
    WebhookDelivery,
    WebhookEventType,
    create_in_memory_persistence,
)
from kmsg_webhook.stores.protocol import DeliveryStore
from kmsg_webhook.stores.rows import to_millis
from kmsg_webhook.stores.sql.postgres import PostgresDatabase
from kmsg_webhook.stores.sql.sqlite import SQLiteDatabase

PG_DSN = os.environ.get("KMSG_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BLOCKED = [f"ep_blocked_{n}" for n in range(20)]
SPREAD_ENDPOINTS = 1_000
SPREAD_ROWS = 10


def _row(n: int, endpoint_id: str, due: datetime) -> WebhookDelivery:
    return WebhookDelivery(
        id=f"dlv_{uuid.uuid4().hex}",
        endpoint_id=endpoint_id,
        event_id=f"evt_{n}",
        event_type=WebhookEventType.MESSAGE_SENT,
        url="https://example.com/hook",
        payload="{}",
        status=DeliveryStatus.PENDING,
        created_at=due,
        next_attempt_at=due,
    )


async def _fill(store: DeliveryStore, have: int, want: int) -> None:
    """Add blocked rows up to ``want`` (due before every other row)."""
    rows = [
        _row(n, BLOCKED[n % len(BLOCKED)], T0 + timedelta(microseconds=n))
        for n in range(have, want)
    ]
    for start in range(0, len(rows), 1000):
        await store.insert_many(rows[start : start + 1000])


async def _claim_cost(store: DeliveryStore, rounds: int = 15) -> float:
    now = T0 + timedelta(days=1)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        claimed = await store.claim(
            worker_id="w",
            now=now,
            lease_until=now + timedelta(minutes=1),
            limit=100,
            exclude_endpoints=BLOCKED,
        )
        times.append(time.perf_counter() - t)
        assert len(claimed) == 100 and not any(d.endpoint_id in BLOCKED for d in claimed)
        await store.release([d.id for d in claimed], worker_id="w")
    return statistics.median(times)


async def _others(store: DeliveryStore) -> None:
    later = T0 + timedelta(hours=1)
    await store.insert_many([_row(10**7 + n, f"ep_ok_{n % 50}", later) for n in range(200)])


def _sqlite_walk_cost(
    path: Path, sql: str, exclude: list[str] = BLOCKED, limit: int = 100, rounds: int = 15
) -> float:
    """Median time of one claim statement (rolled back each time)."""
    now = T0 + timedelta(days=1)
    params = {
        "worker_id": "w",
        "lease_until": to_millis(now + timedelta(minutes=1)),
        "now": to_millis(now),
        "exclude": json.dumps(exclude),
        "limit": limit,
    }
    times = []
    with sqlite3.connect(path, isolation_level=None) as conn:
        for _ in range(rounds):
            conn.execute("BEGIN IMMEDIATE")
            t = time.perf_counter()
            assert len(conn.execute(sql, params).fetchall()) == limit
            times.append(time.perf_counter() - t)
            conn.execute("ROLLBACK")
    return statistics.median(times)


async def _postgres_walk_cost(
    dsn: str,
    schema: str,
    sql: str,
    exclude: list[str] = BLOCKED,
    limit: int = 100,
    rounds: int = 15,
) -> float:
    """Median time of one claim statement (rolled back each time)."""
    now = T0 + timedelta(days=1)
    conn = await asyncpg.connect(dsn)
    times = []
    try:
        await conn.execute(f'SET search_path TO "{schema}"')
        for _ in range(rounds):
            tx = conn.transaction()
            await tx.start()
            t = time.perf_counter()
            rows = await conn.fetch(sql, "w", now + timedelta(minutes=1), now, exclude, limit)
            times.append(time.perf_counter() - t)
            await tx.rollback()
            assert len(rows) == limit
    finally:
        await conn.close()
    return statistics.median(times)


def _sqlite_plan(path: Path, sql: str) -> list[str]:
    text = sql.replace(":worker_id", "'w'").replace(":lease_until", "0").replace(":now", "1e15")
    text = text.replace(":exclude", "'[\"ep_blocked_0\"]'").replace(":limit", "100")
    with sqlite3.connect(path) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {text}")]


async def _postgres_plan(dsn: str, schema: str, sql: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(f'ANALYZE "{schema}".kmsg_webhook_deliveries')
        async with conn.transaction():
            rows = await conn.fetch(
                f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}",
                "w",
                T0 + timedelta(days=1, minutes=1),
                T0 + timedelta(days=1),
                BLOCKED,
                100,
            )
            raise _Rollback  # EXPLAIN ANALYZE ran the claim: undo it
    except _Rollback:
        return [r[0] for r in rows]
    finally:
        await conn.close()


class _Rollback(Exception):
    pass


async def run(store_name: str, sizes: list[int], tmp: Path) -> None:
    print(f"{store_name}:")
    db: SQLiteDatabase | PostgresDatabase | None = None
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    if store_name == "memory":
        store: DeliveryStore = create_in_memory_persistence().delivery_store
    elif store_name == "sqlite":
        db = SQLiteDatabase(str(tmp / "claims.db"))
        await db.init()
        store = db.delivery_store
    else:
        db = PostgresDatabase(PG_DSN, schema=schema)
        await db.init()
        store = db.delivery_store
    try:
        await _others(store)
        have, base, walk_base = 0, 0.0, 0.0
        for size in sizes:
            await _fill(store, have, size)
            have = size
            cost = await _claim_cost(store)
            base = base or cost
            line = f"  blocked {size:>7}: claim {cost * 1000:8.2f} ms ({cost / base:5.2f}x)"
            walk = None
            if isinstance(db, SQLiteDatabase):
                walk = _sqlite_walk_cost(tmp / "claims.db", db.sql["claim_deliveries"])
            elif isinstance(db, PostgresDatabase):
                walk = await _postgres_walk_cost(PG_DSN, schema, db.sql["claim_deliveries"])
            if walk is not None:
                walk_base = walk_base or walk
                line += (
                    f"   due-index walk {walk * 1000:8.2f} ms ({walk / walk_base:5.2f}x)"
                    f"   walk/claim {walk / cost:5.1f}x"
                )
            print(line)
        for name in ("claim_deliveries", "claim_deliveries_around"):
            if isinstance(db, SQLiteDatabase):
                plan = _sqlite_plan(tmp / "claims.db", db.sql[name])
            elif isinstance(db, PostgresDatabase):
                plan = await _postgres_plan(PG_DSN, schema, db.sql[name])
            else:
                break
            print(f"  plan of {name}:", *plan, sep="\n    ")
    finally:
        if db is not None:
            await db.close()
        if store_name == "postgres":
            conn = await asyncpg.connect(PG_DSN)
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await conn.close()


async def run_spread(store_name: str, tmp: Path) -> None:
    """Many endpoints with a few due rows each, a tenth of them left alone: the two plans of a
    claim that leaves endpoints alone, statement against statement."""
    endpoints = [f"ep_spread_{n:04d}" for n in range(SPREAD_ENDPOINTS)]
    left_alone = endpoints[::10]
    rows = [
        _row(n, endpoints[n % SPREAD_ENDPOINTS], T0 + timedelta(microseconds=n))
        for n in range(SPREAD_ENDPOINTS * SPREAD_ROWS)
    ]
    print(
        f"{store_name}, {SPREAD_ENDPOINTS} endpoints with {SPREAD_ROWS} due rows each, "
        f"{len(left_alone)} of them left alone:"
    )
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    db: SQLiteDatabase | PostgresDatabase
    if store_name == "sqlite":
        db = SQLiteDatabase(str(tmp / "spread.db"))
    else:
        db = PostgresDatabase(PG_DSN, schema=schema)
    await db.init()
    try:
        for start in range(0, len(rows), 1000):
            await db.delivery_store.insert_many(rows[start : start + 1000])
        if store_name == "postgres":
            # Statistics, as autovacuum gathers them: without, the walk sorts every due row.
            conn = await asyncpg.connect(PG_DSN)
            await conn.execute(f'ANALYZE "{schema}".kmsg_webhook_deliveries')
            await conn.close()
        for limit in (10, 100):
            costs = []
            for name in ("claim_deliveries", "claim_deliveries_around"):
                if isinstance(db, SQLiteDatabase):
                    cost = _sqlite_walk_cost(tmp / "spread.db", db.sql[name], left_alone, limit)
                else:
                    cost = await _postgres_walk_cost(
                        PG_DSN, schema, db.sql[name], left_alone, limit
                    )
                costs.append(cost)
            walk, around = costs
            print(
                f"  claim {limit:>3}: due-index walk {walk * 1000:7.2f} ms   per endpoint "
                f"{around * 1000:7.2f} ms   per endpoint/walk {around / walk:6.1f}x"
            )
    finally:
        await db.close()
        if store_name == "postgres":
            conn = await asyncpg.connect(PG_DSN)
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocked", default="1000,10000,100000")
    parser.add_argument("--stores", default="memory,sqlite,postgres")
    args = parser.parse_args()
    sizes = [int(s) for s in args.blocked.split(",")]
    with tempfile.TemporaryDirectory(prefix="kmsg-claims-") as tmp:
        for name in args.stores.split(","):
            await run(name, sizes, Path(tmp))
        for name in args.stores.split(","):
            if name != "memory":
                await run_spread(name, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
