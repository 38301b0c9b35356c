"""One schema source: the numbered migrations; schema_sql() joins them, and applying its script
builds exactly what the stores build.

Also: versioned migrations, identifier validation and quoting, custom table names, and refusing
a database whose schema is newer than the code.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from kmsg_webhook import ConfigError, EndpointStatus, StoreError
from kmsg_webhook.stores.sql import TableNames, schema_sql, schema_version
from kmsg_webhook.stores.sql.sqlite import SQLiteDatabase
from kmsg_webhook.stores.sqlfiles import migrations, queries, render, split_statements
from kmsg_webhook.stores.url import migrate
from support.records import delivery, endpoint
from support.stores import drop_schema, new_schema, postgres_database, server_dsn, temporary_sqlite


@pytest.fixture
async def dsn() -> str:
    return await server_dsn()


@pytest.fixture
async def schemas(dsn: str) -> AsyncIterator[list[str]]:
    """Names of throwaway Postgres schemas; every one is dropped afterwards."""
    made: list[str] = []
    yield made
    for schema in made:
        await drop_schema(dsn, schema)


def _fresh(schemas: list[str]) -> str:
    schema = new_schema()
    schemas.append(schema)
    return schema


# -- the files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_migrations_are_numbered_and_queries_named(dialect: Any) -> None:
    found = migrations(dialect)
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert schema_version(dialect) == found[-1].version == 9
    assert [m.description for m in found] == [
        "initial",
        "lookup_hashes",
        "client_certificates",
        "finished_index",
        "endpoint_verification",
        "ordered_delivery",
        "message_tracking",
        "message_jobs",
        "endpoint_due",
    ]
    assert set(queries(dialect)) >= {
        "insert_deliveries",
        "existing_delivery_ids",
        "claim_deliveries",
        "claim_deliveries_around",
        "record_outcomes",
    }


def test_render_quotes_and_qualifies_every_identifier() -> None:
    names = TableNames("hooks", "outbox", "tenant_a")
    sql = render(migrations("postgresql")[0].sql, names)
    assert '"tenant_a"."hooks"' in sql and '"tenant_a"."outbox"' in sql
    assert '"tenant_a"."kmsg_webhook_schema_version"' in sql
    assert 'CREATE UNIQUE INDEX "idx_hooks_url"' in sql
    assert 'CREATE INDEX "idx_outbox_due"' in sql
    assert not re.search(r"kmsg_webhook_(endpoints|deliveries)", sql)
    scripted = schema_sql("sqlite", endpoint_table="hooks", delivery_table="outbox")
    assert "'hooks,outbox'" in scripted  # the version row's scope is a literal, not identifiers
    assert '"outbox"' in scripted and "kmsg_webhook_deliveries" not in scripted


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1abc",
        "a-b",
        "bad name",
        'x"; DROP TABLE y; --',
        "x" * 49,
        "kmsg_webhook_schema_version",
    ],
)
def test_table_names_are_validated(bad: str) -> None:
    with pytest.raises(ConfigError):
        TableNames(endpoints=bad)
    with pytest.raises(ConfigError):
        SQLiteDatabase(":memory:", delivery_table=bad)


def test_schema_names_are_validated_and_tables_distinct() -> None:
    with pytest.raises(ConfigError):
        TableNames(schema="public; drop")
    with pytest.raises(ConfigError):
        TableNames("same", "same")
    with pytest.raises(ConfigError):
        schema_sql("sqlite", schema="x")


def test_split_statements_drops_comments_and_blank_chunks() -> None:
    script = (
        "-- a comment; with semicolon\nCREATE TABLE a (x int);\n\n-- c\nCREATE INDEX i ON a (x);\n"
    )
    assert split_statements(script) == ["CREATE TABLE a (x int)", "CREATE INDEX i ON a (x)"]


# -- the live schema equals schema_sql() ------------------------------------------------------


async def _pg_shape(conn: asyncpg.Connection, schema: str) -> dict[str, Any]:
    columns = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = $1 "
        "ORDER BY table_name, ordinal_position",
        schema,
    )
    indexes = await conn.fetch(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = $1 "
        "ORDER BY indexname",
        schema,
    )
    constraints = await conn.fetch(
        "SELECT c.relname, con.contype, pg_get_constraintdef(con.oid) AS def "
        "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
        "ORDER BY c.relname, def",
        schema,
    )
    versions = await conn.fetch(
        f'SELECT scope, version, description FROM "{schema}".kmsg_webhook_schema_version '
        "ORDER BY scope, version"
    )
    return {
        "columns": [tuple(r) for r in columns],
        "indexes": [(r[0], r[1], r[2].replace(f"{schema}.", "")) for r in indexes],
        "constraints": [tuple(r) for r in constraints],
        "versions": [tuple(r) for r in versions],
    }


async def test_postgres_schema_built_by_the_code_equals_the_schema_script(
    dsn: str, schemas: list[str]
) -> None:
    by_code, by_file = _fresh(schemas), _fresh(schemas)
    db = postgres_database(dsn, by_code)
    try:
        await db.init()
    finally:
        await db.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{by_file}"')
        async with conn.transaction():
            await conn.execute(f'SET LOCAL search_path TO "{by_file}"')
            await conn.execute(schema_sql("postgresql"))
        built, written = await _pg_shape(conn, by_code), await _pg_shape(conn, by_file)
    finally:
        await conn.close()
    assert built["columns"] and built["indexes"] and built["versions"]
    assert built == written
    partial = [d for _, name, d in built["indexes"] if name.endswith("_due")]
    assert partial and "WHERE (status = 'pending'::text)" in partial[0]


def _normalised(sql: str | None) -> str:
    """DDL text without quotes and spacing (ALTER TABLE ADD COLUMN re-spaces a table's)."""
    text = " ".join((sql or "").replace('"', "").split())
    return re.sub(r"\s*([(),])\s*", r"\1", text)


def _sqlite_shape(path: str) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
        ).fetchall()
        shape: dict[str, Any] = {
            "objects": [(kind, name, table, _normalised(sql)) for kind, name, table, sql in objects]
        }
        for kind, name, *_ in objects:
            if kind == "table":
                shape[f"columns {name}"] = conn.execute(f"PRAGMA table_info('{name}')").fetchall()
            else:
                shape[f"index {name}"] = conn.execute(f"PRAGMA index_xinfo('{name}')").fetchall()
        shape["versions"] = conn.execute(
            "SELECT scope, version, description FROM kmsg_webhook_schema_version"
        ).fetchall()
        return shape
    finally:
        conn.close()


async def test_sqlite_schema_built_by_the_code_equals_the_schema_script(tmp_path: Path) -> None:
    by_code, by_file = str(tmp_path / "code.db"), str(tmp_path / "file.db")
    db = SQLiteDatabase(by_code)
    try:
        await db.init()
    finally:
        await db.close()
    conn = sqlite3.connect(by_file)
    conn.executescript(schema_sql("sqlite"))
    conn.close()
    built, written = _sqlite_shape(by_code), _sqlite_shape(by_file)
    assert len(built["objects"]) == 29  # 5 tables, their 5 primary-key indexes, 19 declared
    assert built == written


# -- versions -------------------------------------------------------------------------------


async def test_migrate_is_idempotent_and_initialize_schema_false_requires_it(
    dsn: str, schemas: list[str]
) -> None:
    schema = _fresh(schemas)
    url = f"{dsn}?schema={schema}"
    unmanaged = postgres_database(dsn, schema, initialize_schema=False, retry_timeout=0)
    with pytest.raises(StoreError, match=r"schema version 0.*kmsg-webhook migrate"):
        await unmanaged.endpoint_store.list()
    assert await migrate(url) == 9
    assert await migrate(url) == 9
    await unmanaged.endpoint_store.add(endpoint(1))
    assert [e.id for e in await unmanaged.endpoint_store.list()] == ["ep_1"]
    assert await unmanaged.schema_version() == 9
    await unmanaged.close()


async def test_postgres_refuses_a_newer_schema_and_writes_nothing(
    dsn: str, schemas: list[str]
) -> None:
    schema = _fresh(schemas)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(
            f'CREATE TABLE "{schema}".kmsg_webhook_schema_version (scope text, version int, '
            "description text, applied_at timestamptz DEFAULT now())"
        )
        await conn.execute(
            f'INSERT INTO "{schema}".kmsg_webhook_schema_version VALUES ($1, 99, $2)',
            TableNames().scope,
            "from the future",
        )
        db = postgres_database(dsn, schema, retry_timeout=0)
        with pytest.raises(StoreError, match="version 99, newer than this kmsg-webhook knows"):
            await db.init()
        with pytest.raises(StoreError, match="newer"):
            await db.delivery_store.insert_many([delivery(1)])
        await db.close()
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
        assert [r[0] for r in tables] == ["kmsg_webhook_schema_version"]
    finally:
        await conn.close()


async def test_sqlite_refuses_a_newer_schema_and_writes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "future.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE kmsg_webhook_schema_version (scope, version, description)")
    conn.execute(
        "INSERT INTO kmsg_webhook_schema_version VALUES (?, 10, 'x')", (TableNames().scope,)
    )
    conn.commit()
    db = SQLiteDatabase(path, retry_timeout=0)
    with pytest.raises(StoreError, match="version 10, newer"):
        await db.init()
    await db.close()
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    conn.close()
    assert names == ["kmsg_webhook_schema_version"]


async def test_custom_table_names_share_a_schema_with_the_defaults(
    dsn: str, schemas: list[str]
) -> None:
    schema = _fresh(schemas)
    default = postgres_database(dsn, schema)
    custom = postgres_database(dsn, schema, endpoint_table="Hooks", delivery_table="outbox_2")
    try:
        await default.endpoint_store.add(endpoint(1))
        await custom.endpoint_store.add(endpoint(2))
        await custom.delivery_store.insert_many([delivery(1)])
        assert [e.id for e in await default.endpoint_store.list()] == ["ep_1"]
        assert [e.id for e in await custom.endpoint_store.list()] == ["ep_2"]
        assert await default.delivery_store.get("dlv_0001") is None
        assert await custom.delivery_store.get("dlv_0001") == delivery(1)
    finally:
        await default.close()
        await custom.close()
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 "
            "ORDER BY table_name",
            schema,
        )
        versions = await conn.fetch(
            f'SELECT scope, version FROM "{schema}".kmsg_webhook_schema_version '
            "ORDER BY scope, version"
        )
    finally:
        await conn.close()
    assert [r[0] for r in tables] == [
        "Hooks",
        "kmsg_webhook_deliveries",
        "kmsg_webhook_endpoints",
        "kmsg_webhook_message_jobs",
        "kmsg_webhook_message_tracking",
        "kmsg_webhook_schema_version",
        "outbox_2",
    ]
    assert [tuple(r) for r in versions] == [
        *(("Hooks,outbox_2", v) for v in range(1, 10)),
        *(("kmsg_webhook_endpoints,kmsg_webhook_deliveries", v) for v in range(1, 10)),
    ]


async def test_sqlite_custom_table_names() -> None:
    async with temporary_sqlite(endpoint_table="hooks", delivery_table="outbox") as db:
        await db.endpoint_store.add(endpoint(1))
        await db.delivery_store.insert_many([delivery(1)])
        assert await db.delivery_store.get("dlv_0001") == delivery(1)
        assert [e.id for e in await db.endpoint_store.list()] == ["ep_1"]
        assert await db.schema_version() == 9


# -- upgrading a version-1 database -------------------------------------------------------------


async def test_sqlite_version_1_database_is_upgraded_and_keeps_its_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "v1.db")
    db = SQLiteDatabase(path)
    await db.endpoint_store.add(endpoint(1))
    await db.delivery_store.insert_many([delivery(1), delivery(2)])
    await db.close()
    conn = sqlite3.connect(path)  # turn it back into what migration 0001 left
    for statement in (
        "DROP INDEX idx_kmsg_webhook_deliveries_to_hash",
        "DROP INDEX idx_kmsg_webhook_deliveries_from_hash",
        "DROP INDEX idx_kmsg_webhook_deliveries_completed_at",
        "ALTER TABLE kmsg_webhook_deliveries DROP COLUMN to_hash",
        "ALTER TABLE kmsg_webhook_deliveries DROP COLUMN from_hash",
        "ALTER TABLE kmsg_webhook_endpoints DROP COLUMN client_cert",
        "ALTER TABLE kmsg_webhook_endpoints DROP COLUMN client_key",
        "DROP INDEX idx_kmsg_webhook_deliveries_ordering",
        "ALTER TABLE kmsg_webhook_deliveries DROP COLUMN ordering_key",
        "ALTER TABLE kmsg_webhook_endpoints DROP COLUMN ordered",
        "DROP TABLE kmsg_webhook_message_tracking",
        "DROP TABLE kmsg_webhook_message_jobs",
        "DROP INDEX idx_kmsg_webhook_deliveries_endpoint_due",
        "DELETE FROM kmsg_webhook_schema_version WHERE version >= 2",
    ):
        conn.execute(statement)
    conn.commit()
    conn.close()
    reopened = SQLiteDatabase(path)
    try:
        assert await reopened.delivery_store.get("dlv_0001") == delivery(1)
        assert await reopened.schema_version() == 9
        assert [e.id for e in await reopened.endpoint_store.list()] == ["ep_1"]
    finally:
        await reopened.close()
    fresh = str(tmp_path / "fresh.db")
    built = SQLiteDatabase(fresh)
    await built.init()
    await built.close()
    upgraded, current = _sqlite_shape(path), _sqlite_shape(fresh)
    upgraded.pop("versions"), current.pop("versions")
    assert upgraded == current


async def test_postgres_version_1_schema_is_upgraded_and_keeps_its_rows(
    dsn: str, schemas: list[str]
) -> None:
    schema = _fresh(schemas)
    db = postgres_database(dsn, schema)
    await db.delivery_store.insert_many([delivery(1)])
    await db.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP INDEX "{schema}".idx_kmsg_webhook_deliveries_completed_at')
        await conn.execute(
            f'ALTER TABLE "{schema}".kmsg_webhook_deliveries DROP COLUMN to_hash, '
            "DROP COLUMN from_hash, DROP COLUMN ordering_key, DROP COLUMN ordering_seq"
        )
        await conn.execute(
            f'ALTER TABLE "{schema}".kmsg_webhook_endpoints DROP COLUMN client_cert, '
            "DROP COLUMN client_key, DROP COLUMN ordered"
        )
        await conn.execute(f'DROP TABLE "{schema}".kmsg_webhook_message_tracking')
        await conn.execute(f'DROP TABLE "{schema}".kmsg_webhook_message_jobs')
        await conn.execute(f'DROP INDEX "{schema}".idx_kmsg_webhook_deliveries_endpoint_due')
        await conn.execute(f'DELETE FROM "{schema}".kmsg_webhook_schema_version WHERE version >= 2')
        reopened = postgres_database(dsn, schema)
        try:
            assert await reopened.delivery_store.get("dlv_0001") == delivery(1)
            assert await reopened.schema_version() == 9
        finally:
            await reopened.close()
        indexes = await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND indexname LIKE '%hash'",
            schema,
        )
    finally:
        await conn.close()
    assert sorted(r[0] for r in indexes) == [
        "idx_kmsg_webhook_deliveries_from_hash",
        "idx_kmsg_webhook_deliveries_to_hash",
        "idx_kmsg_webhook_message_tracking_recipient_hash",
    ]


# -- upgrading a version-2 database (the endpoint status CHECK) -------------------------------


def _version_2_script(dialect: Any, names: TableNames) -> str:
    return "\n".join(render(m.sql, names) + ";" for m in migrations(dialect)[:2])


async def test_sqlite_version_2_database_accepts_pending_verification_after_upgrade(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "v2.db")
    names = TableNames("hooks", "outbox")
    conn = sqlite3.connect(path)
    conn.executescript(_version_2_script("sqlite", names))
    conn.executemany(
        "INSERT INTO kmsg_webhook_schema_version (scope, version, description) VALUES (?, ?, ?)",
        [(names.scope, 1, "initial"), (names.scope, 2, "lookup_hashes")],
    )
    conn.execute(
        "INSERT INTO hooks (id, url, status, events_json, created_at, updated_at) "
        "VALUES ('ep_old', 'https://old.example.com/', 'active', '[\"message.sent\"]', 0, 0)"
    )
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE hooks SET status = 'pending_verification'")
    conn.commit()
    conn.close()
    db = SQLiteDatabase(path, endpoint_table="hooks", delivery_table="outbox")
    try:
        assert await db.schema_version() == 9
        [old] = await db.endpoint_store.list()
        assert old.id == "ep_old" and old.status.value == "active"
        pending = endpoint(2, status=EndpointStatus.PENDING_VERIFICATION)
        await db.endpoint_store.add(pending)
        assert await db.endpoint_store.get(pending.id) == pending
    finally:
        await db.close()
    names_after = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "hooks_rebuild" not in names_after and "idx_hooks_url" in names_after


async def test_postgres_version_2_schema_accepts_pending_verification_after_upgrade(
    dsn: str, schemas: list[str]
) -> None:
    schema = _fresh(schemas)
    names = TableNames("Hooks", "outbox_2", schema)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(_version_2_script("postgresql", names))
        await conn.executemany(
            f'INSERT INTO "{schema}".kmsg_webhook_schema_version (scope, version, description) '
            "VALUES ($1, $2, $3)",
            [(names.scope, 1, "initial"), (names.scope, 2, "lookup_hashes")],
        )
        db = postgres_database(dsn, schema, endpoint_table="Hooks", delivery_table="outbox_2")
        try:
            await db.endpoint_store.add(endpoint(1))
            assert await db.schema_version() == 9
            pending = endpoint(2, status=EndpointStatus.PENDING_VERIFICATION)
            await db.endpoint_store.add(pending)
            assert await db.endpoint_store.get(pending.id) == pending
        finally:
            await db.close()
    finally:
        await conn.close()


async def test_postgres_processes_opening_a_fresh_schema_at_once_all_succeed(
    dsn: str, schemas: list[str]
) -> None:
    # Each waits for the migration lock inside a transaction begun before the first migrator
    # committed: the waiters must still see the tables it created.
    schema = _fresh(schemas)
    databases = [postgres_database(dsn, schema, application_name=f"m{n}") for n in range(4)]
    try:
        await asyncio.gather(*(db.init() for db in databases))
        assert {await db.schema_version() for db in databases} == {9}
    finally:
        for db in databases:
            await db.close()
