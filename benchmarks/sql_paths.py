"""SQLAlchemy Core against the raw driver for the three hot paths of the SQL stores.

    python benchmarks/sql_paths.py [POSTGRES_DSN] [--rounds 20] [--sqlite-only]

The DSN defaults to ``$KMSG_TEST_POSTGRES_DSN``, else ``postgresql://postgres@127.0.0.1:5432/test``;
the tables go into a throwaway schema that is dropped afterwards. SQLite runs on a file (WAL) in
a temporary directory. Each round times, on the same pool:

* insert 1000 delivery rows;
* claim 100 of 1000 due rows;
* record 100 outcomes (a retry scheduled: attempt appended, status, due time, lease cleared).

Variants: "Core" is SQLAlchemy Core the natural way (a multi-row ``insert()``, the claim
``UPDATE`` built from Core constructs, and for ``record`` read, apply in Python, executemany),
over table definitions of this script's own (the stores have none); "Core, same SQL" sends the
raw path's claim statement through SQLAlchemy (``exec_driver_sql``); "text, JSON" is the insert
on a caller's SQLAlchemy connection (one statement, the batch as one JSON array); "raw" is the
stores' own code on the driver connection taken from the pool (decoding claimed rows into
``WebhookDelivery`` objects included). Printed: the median over the rounds, in ms.
``docs/sql-backends.md`` discusses the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from kmsg_webhook import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEventType
from kmsg_webhook.models import AttemptOutcome
from kmsg_webhook.stores.rows import (
    attempt_to_json,
    delivery_to_row,
    dumps,
    from_millis,
    loads,
    to_millis,
)
from kmsg_webhook.stores.sql.base import SqlDatabase
from kmsg_webhook.stores.sql.postgres import PostgresDatabase
from kmsg_webhook.stores.sql.sqlite import SQLiteDatabase

P = ParamSpec("P")
Row = dict[str, Any]

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)  # every inserted row is due
LEASE = timedelta(seconds=30)
WORKER = "w"
INSERT_ROWS = 1000
BATCH = 100


def new_deliveries(count: int) -> list[WebhookDelivery]:
    """``count`` pending deliveries due at T0 + i ms, spread over ten endpoints."""
    tag = uuid.uuid4().hex[:8]
    return [
        WebhookDelivery(
            id=f"dlv_{tag}_{i}",
            endpoint_id=f"ep_{i % 10}",
            event_id=f"evt_{tag}_{i}",
            event_type=WebhookEventType.MESSAGE_SENT,
            url="https://example.com/hook",
            payload='{"id":"evt","data":{"text":"hello"}}' * 4,
            status=DeliveryStatus.PENDING,
            created_at=T0 + timedelta(milliseconds=i),
            next_attempt_at=T0 + timedelta(milliseconds=i),
        )
        for i in range(count)
    ]


def retry_outcomes(ids: list[str]) -> list[AttemptOutcome]:
    """A failed attempt (503) with a retry scheduled, for each leased id."""
    attempt = WebhookAttempt(
        attempt_number=1,
        started_at=T0,
        latency_ms=12.5,
        http_status=503,
        response_body="busy",
        error="HTTP 503",
    )
    return [
        AttemptOutcome(
            delivery_id=delivery_id,
            worker_id=WORKER,
            attempt=attempt,
            status=DeliveryStatus.PENDING,
            next_attempt_at=T0 + timedelta(minutes=1),
            completed_at=None,
        )
        for delivery_id in ids
    ]


async def timed(
    operation: Callable[P, Awaitable[object]], *args: P.args, **kwargs: P.kwargs
) -> float:
    """Milliseconds ``await operation(*args, **kwargs)`` takes."""
    start = time.perf_counter()
    await operation(*args, **kwargs)
    return (time.perf_counter() - start) * 1000


# -- SQLAlchemy Core, the natural way --------------------------------------------------------------


class Timestamp(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes: ``timestamptz`` in Postgres, integer epoch milliseconds in SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        return to_millis(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return from_millis(value) if isinstance(value, int) else value


class Json(sa.types.TypeDecorator[Any]):
    """A JSON document: ``jsonb`` in Postgres, JSON text in SQLite."""

    impl = sa.Text()
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return dumps(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else loads(value)


def core_table(db: SqlDatabase) -> sa.Table:
    """The delivery table as SQLAlchemy Core sees it, under the store's names."""
    return sa.Table(
        db.names.deliveries,
        sa.MetaData(schema=db.names.schema),
        sa.Column("id", sa.Text, primary_key=True),
        *(sa.Column(name, sa.Text) for name in ("endpoint_id", "event_id", "event_type", "url")),
        sa.Column("payload", sa.Text),
        sa.Column("status", sa.Text),
        sa.Column("attempts_json", Json),
        sa.Column("attempt_count", sa.Integer),
        sa.Column("last_latency_ms", sa.Float),
        sa.Column("last_error", sa.Text),
        *(sa.Column(name, Timestamp) for name in ("created_at", "next_attempt_at", "completed_at")),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires_at", Timestamp),
        *(sa.Column(name, sa.Text) for name in ("to_hash", "from_hash", "ordering_key")),
    )


def core_row(delivery: WebhookDelivery) -> Row:
    row = delivery_to_row(delivery)
    row.update(
        to_hash=delivery.to_hash, from_hash=delivery.from_hash, ordering_key=delivery.ordering_key
    )
    return row


async def core_insert(db: SqlDatabase, deliveries: list[WebhookDelivery]) -> None:
    rows = [core_row(d) for d in deliveries]
    table = core_table(db)
    insert = pg_insert if db.dialect == "postgresql" else sqlite_insert
    statement = insert(table).on_conflict_do_nothing().returning(table.c.id)
    async with db.connect() as conn:
        await db.begin_write(conn)
        (await conn.execute(statement, rows)).scalars().all()
        await conn.commit()


def core_claim_statement(db: SqlDatabase, now: datetime, limit: int) -> sa.Update:
    table = core_table(db)
    due = (
        sa.select(table.c.id)
        .where(
            table.c.status == DeliveryStatus.PENDING.value,
            table.c.next_attempt_at <= now,
            sa.or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at <= now),
        )
        .order_by(table.c.next_attempt_at, table.c.id)
        .limit(limit)
    )
    if db.dialect == "postgresql":
        due = due.with_for_update(skip_locked=True)
    return (
        sa.update(table)
        .where(table.c.id.in_(due.scalar_subquery()))
        .values(lease_owner=WORKER, lease_expires_at=now + LEASE)
        .returning(table)
    )


async def core_claim(db: SqlDatabase, now: datetime) -> int:
    async with db.connect() as conn:
        await db.begin_write(conn)
        claimed = len((await conn.execute(core_claim_statement(db, now, BATCH))).all())
        await conn.commit()
        return claimed


async def core_record(db: SqlDatabase, outcomes: list[AttemptOutcome]) -> None:
    """Read the leased rows, apply the outcomes in Python, executemany the updates."""
    table = core_table(db)
    update = (
        sa.update(table)
        .where(table.c.id == sa.bindparam("b_id"))
        .values(
            attempts_json=sa.bindparam("attempts_json", type_=table.c.attempts_json.type),
            attempt_count=table.c.attempt_count + sa.bindparam("inc", type_=sa.Integer),
            status=sa.bindparam("status"),
            next_attempt_at=sa.bindparam("next_attempt_at", type_=Timestamp()),
            completed_at=sa.bindparam("completed_at", type_=Timestamp()),
            last_error=sa.bindparam("last_error"),
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    query = sa.select(table.c.id, table.c.lease_owner, table.c.attempts_json).where(
        table.c.id.in_([o.delivery_id for o in outcomes])
    )
    if db.dialect == "postgresql":
        query = query.with_for_update()
    async with db.connect() as conn:
        await db.begin_write(conn)
        current = {row.id: row for row in await conn.execute(query)}
        params = [
            applied_outcome(o, current[o.delivery_id].attempts_json, db.max_stored_attempts)
            for o in outcomes
            if o.delivery_id in current and current[o.delivery_id].lease_owner == o.worker_id
        ]
        if params:
            await conn.execute(update, params)
        await conn.commit()


def applied_outcome(outcome: AttemptOutcome, attempts: list[Any] | None, cap: int) -> Row:
    """The update parameters of one outcome over the row's stored attempts."""
    kept = list(attempts or [])
    if outcome.attempt is not None:
        kept = [*kept, attempt_to_json(outcome.attempt)][-cap:]
    return {
        "b_id": outcome.delivery_id,
        "attempts_json": kept,
        "status": outcome.status.value,
        "next_attempt_at": outcome.next_attempt_at,
        "completed_at": outcome.completed_at,
        "last_error": outcome.last_error,
        "inc": 0 if outcome.attempt is None else 1,
    }


# -- the raw path's claim SQL, sent through SQLAlchemy ---------------------------------------------


async def same_sql_claim(db: SqlDatabase, now: datetime) -> None:
    sql = db.sql["claim_deliveries"]
    async with db.connect() as conn:
        if db.dialect == "postgresql":
            await conn.exec_driver_sql(sql, (WORKER, now + LEASE, now, [], BATCH))
        else:
            await db.begin_write(conn)
            params = {
                "worker_id": WORKER,
                "lease_until": to_millis(now + LEASE),
                "now": to_millis(now),
                "exclude": "[]",
                "limit": BATCH,
            }
            await conn.exec_driver_sql(sql, params)
        await conn.commit()


# -- the insert on a caller's SQLAlchemy connection -----------------------------------------------


async def json_insert(db: SqlDatabase, deliveries: list[WebhookDelivery]) -> None:
    async with db.connect() as conn:
        await db.begin_write(conn)
        await db.insert_with_sqlalchemy(conn, deliveries)
        await conn.commit()


# -- raw: the stores' own hot paths ----------------------------------------------------------------


async def raw_insert(db: SqlDatabase, deliveries: list[WebhookDelivery]) -> None:
    async with db.driver() as driver:
        await db.insert_deliveries(driver, deliveries, retried=False)


async def raw_claim(db: SqlDatabase, now: datetime) -> list[WebhookDelivery]:
    async with db.driver() as driver:
        return await db.claim_deliveries(
            driver,
            worker_id=WORKER,
            now=now,
            lease_until=now + LEASE,
            limit=BATCH,
            exclude=[],
            retried=False,
        )


async def raw_record(db: SqlDatabase, outcomes: list[AttemptOutcome]) -> None:
    async with db.driver() as driver:
        await db.record_outcomes(driver, outcomes)


# -- set-up between measurements -------------------------------------------------------------------


async def clear(db: SqlDatabase) -> None:
    """Delete every delivery row."""
    async with db.connect() as conn:
        await db.begin_write(conn)
        await conn.execute(sa.delete(core_table(db)))
        await conn.commit()


async def reset(db: SqlDatabase) -> None:
    """Make every row pending, unleased and without attempts again."""
    async with db.connect() as conn:
        await db.begin_write(conn)
        await conn.execute(
            sa.update(core_table(db)).values(
                lease_owner=None,
                lease_expires_at=None,
                status=DeliveryStatus.PENDING.value,
                attempts_json=[],
                attempt_count=0,
            )
        )
        await conn.commit()


# -- the run ---------------------------------------------------------------------------------------

Insert = Callable[[SqlDatabase, list[WebhookDelivery]], Awaitable[object]]
Claim = Callable[[SqlDatabase, datetime], Awaitable[object]]
Record = Callable[[SqlDatabase, list[AttemptOutcome]], Awaitable[object]]

INSERTS: tuple[tuple[str, Insert], ...] = (
    ("Core", core_insert),
    ("text, JSON", json_insert),
    ("raw", raw_insert),
)
CLAIMS: tuple[tuple[str, Claim], ...] = (
    ("Core", core_claim),
    ("Core, same SQL", same_sql_claim),
    ("raw", raw_claim),
)
RECORDS: tuple[tuple[str, Record], ...] = (("Core", core_record), ("raw", raw_record))


async def bench(db: SqlDatabase, rounds: int) -> dict[str, float]:
    """The median milliseconds of each operation and variant over ``rounds`` rounds."""
    samples: defaultdict[str, list[float]] = defaultdict(list)
    await db.init()
    try:
        for _ in range(rounds):
            for variant, insert in INSERTS:
                await clear(db)
                rows = new_deliveries(INSERT_ROWS)
                samples[f"insert {INSERT_ROWS}: {variant}"].append(await timed(insert, db, rows))
            # The last insert left INSERT_ROWS due rows: claim and record work on those.
            for variant, claim in CLAIMS:
                await reset(db)
                samples[f"claim {BATCH}: {variant}"].append(await timed(claim, db, NOW))
            for variant, record in RECORDS:
                await reset(db)
                outcomes = retry_outcomes([d.id for d in await raw_claim(db, NOW)])
                samples[f"record {BATCH}: {variant}"].append(await timed(record, db, outcomes))
    finally:
        await db.close()
    return {key: statistics.median(values) for key, values in samples.items()}


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def print_results(results: Mapping[str, Mapping[str, float]], rounds: int) -> None:
    title = f"operation (median ms, {rounds} runs)"
    columns = list(results)
    print(f"{title:38}" + "".join(f" {name:>9}" for name in columns))
    for key in next(iter(results.values())):
        print(f"{key:38}" + "".join(f" {results[name][key]:9.2f}" for name in columns))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "dsn",
        nargs="?",
        default=os.environ.get("KMSG_TEST_POSTGRES_DSN") or DEFAULT_DSN,
        help="PostgreSQL server to measure (default: $KMSG_TEST_POSTGRES_DSN or the local one)",
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        sqlite = SQLiteDatabase(Path(directory) / "bench.db")
        results["SQLite"] = await bench(sqlite, args.rounds)
    if not args.sqlite_only:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        try:
            postgres = PostgresDatabase(args.dsn, schema=schema)
            results["Postgres"] = await bench(postgres, args.rounds)
        finally:
            await drop_schema(args.dsn, schema)
    print_results(results, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
