"""Messaging-store backends (tracking store and job queue over one database) for the
conformance suites, each able to show a table's rows as stored."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from kmsg_webhook.crypto import FieldCrypto
from kmsg_webhook.messaging import InMemoryTrackingStore, TrackingStore
from kmsg_webhook.messaging.jobs import InMemoryJobStore, JobStore
from kmsg_webhook.messaging.jobs_d1 import D1JobStore
from kmsg_webhook.messaging.jobs_sql import SqlJobStore
from kmsg_webhook.messaging.tracking_d1 import D1TrackingStore
from kmsg_webhook.messaging.tracking_sql import SqlTrackingStore
from kmsg_webhook.stores.sql.sqlite import SQLiteDatabase
from support.crypto_keys import conformance_crypto
from support.d1 import require_local_d1
from support.stores import drop_schema, new_schema, postgres_database, server_dsn

TRACKING_TABLE = "kmsg_webhook_message_tracking"
JOBS_TABLE = "kmsg_webhook_message_jobs"
RawRows = Callable[[str], Awaitable[list[dict[str, Any]]]]


@dataclass
class TrackingBackend:
    name: str
    store: TrackingStore
    jobs: JobStore
    raw_rows: RawRows  # a table's rows as stored
    close: Callable[[], Awaitable[None]]


async def memory(crypto: FieldCrypto | None) -> TrackingBackend:
    store = InMemoryTrackingStore(crypto=crypto)
    jobs = InMemoryJobStore(crypto=crypto)

    async def raw(table: str) -> list[dict[str, Any]]:
        rows = store.rows() if table == TRACKING_TABLE else jobs.rows()
        return [row.values() for row in rows]

    async def close() -> None:
        await store.close()

    return TrackingBackend("memory", store, jobs, raw, close)


async def sqlite(crypto: FieldCrypto | None) -> TrackingBackend:
    directory = tempfile.mkdtemp(prefix="kmsg-tracking-")
    path = os.path.join(directory, "store.db")
    db = SQLiteDatabase(path)
    store = SqlTrackingStore(db, crypto=crypto, owns_database=True)

    async def raw(table: str) -> list[dict[str, Any]]:
        conn = sqlite3.connect(path)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute(f"SELECT * FROM {table}").fetchall()]
        finally:
            conn.close()

    async def close() -> None:
        try:
            await store.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    return TrackingBackend("sqlite", store, SqlJobStore(db, crypto=crypto), raw, close)


async def postgres(crypto: FieldCrypto | None) -> TrackingBackend:
    dsn = await server_dsn()
    schema = new_schema()
    db = postgres_database(dsn, schema)
    store = SqlTrackingStore(db, crypto=crypto, owns_database=True)

    async def raw(table: str) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(row) for row in await conn.fetch(f'SELECT * FROM "{schema}".{table}')]
        finally:
            await conn.close()

    async def close() -> None:
        try:
            await store.close()
        finally:
            await drop_schema(dsn, schema)

    return TrackingBackend("postgres", store, SqlJobStore(db, crypto=crypto), raw, close)


def fresh_messaging_tables() -> dict[str, str]:
    """Tracking and job table names no other test uses, by default name (D1 has one shared
    database per test session)."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    return {TRACKING_TABLE: f"{prefix}_tracking", JOBS_TABLE: f"{prefix}_jobs"}


async def d1(crypto: FieldCrypto | None) -> TrackingBackend:
    local = await asyncio.to_thread(require_local_d1)
    tables = fresh_messaging_tables()
    client = local.client()
    store = D1TrackingStore(client, table=tables[TRACKING_TABLE], crypto=crypto)
    jobs = D1JobStore(client, table=tables[JOBS_TABLE], crypto=crypto)

    async def raw(table: str) -> list[dict[str, Any]]:
        return (await client.query(f'SELECT * FROM "{tables[table]}"')).rows

    return TrackingBackend("d1", store, jobs, raw, client.close)


_PLAIN: dict[str, Callable[[FieldCrypto | None], Awaitable[TrackingBackend]]] = {
    "memory": memory,
    "sqlite": sqlite,
    "postgres": postgres,
    "d1": d1,
}


async def open_backend(name: str) -> TrackingBackend:
    """``memory``, ``sqlite``, ``postgres``, ``d1``, each also ``<name>+crypto`` (everything
    sealed)."""
    base, _, crypto = name.partition("+")
    opened = await _PLAIN[base](conformance_crypto() if crypto else None)
    opened.name = name
    return opened


TRACKING_BACKENDS = sorted([*_PLAIN, *(f"{name}+crypto" for name in _PLAIN)])
