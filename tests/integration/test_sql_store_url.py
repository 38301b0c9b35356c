"""``persistence_from_url`` / ``migrate``: every scheme, the environment default, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmsg_webhook import ConfigError, DeliveryFilter, StoreError
from kmsg_webhook.stores.memory import InMemoryDeliveryStore
from kmsg_webhook.stores.sql.base import SqlDeliveryStore
from kmsg_webhook.stores.sql.postgres import PostgresDatabase
from kmsg_webhook.stores.sql.sqlite import SQLiteDatabase
from kmsg_webhook.stores.sqlfiles import schema_version
from kmsg_webhook.stores.url import (
    ENV_VAR,
    database_from_url,
    migrate,
    migrate_url,
    persistence_from_url,
    sqlite_path,
)
from support.records import delivery, endpoint
from support.stores import drop_schema, new_schema, server_dsn


def test_memory_is_the_default_and_env_overrides_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert isinstance(persistence_from_url().delivery_store, InMemoryDeliveryStore)
    assert isinstance(persistence_from_url("memory://").delivery_store, InMemoryDeliveryStore)
    monkeypatch.setenv(ENV_VAR, f"sqlite:///{tmp_path}/env.db")
    db = database_from_url(f"sqlite:///{tmp_path}/env.db")
    assert isinstance(db, SQLiteDatabase)
    store = persistence_from_url()
    assert isinstance(store.delivery_store, SqlDeliveryStore)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative.db", "relative.db"),
        ("sqlite:////abs/path.db", "/abs/path.db"),
        ("sqlite+aiosqlite:///x/y.db", "x/y.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite://", ":memory:"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    "url", ["sqlite://host/x.db", "sqlite:///x.db?mode=ro", "sqlite://user:pw@h/x.db"]
)
def test_bad_sqlite_urls(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sqlite_path(url)
    assert "pw" not in str(caught.value).replace("pw@", "")


async def test_sqlite_url_round_trip(tmp_path: Path) -> None:
    persistence = persistence_from_url(
        f"sqlite+aiosqlite:///{tmp_path}/store.db", max_stored_attempts=3
    )
    assert persistence.init is not None and persistence.close is not None
    await persistence.init()
    try:
        await persistence.endpoint_store.add(endpoint(1))
        await persistence.delivery_store.insert_many([delivery(1)])
        assert await persistence.endpoint_store.get("ep_1") == endpoint(1)
    finally:
        await persistence.close()
    memory = persistence_from_url("sqlite:///:memory:")
    await memory.delivery_store.insert_many([delivery(2)])
    assert (await memory.delivery_store.stats(DeliveryFilter())).total == 1
    assert memory.close is not None
    await memory.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
def test_postgres_urls_and_schema_option(scheme: str) -> None:
    db = database_from_url(f"{scheme}://app:pw@db.internal:6543/hooks?schema=tenant_1")
    assert isinstance(db, PostgresDatabase)
    assert db.names.schema == "tenant_1"
    assert db.display_url == f"{scheme}://app:***@db.internal:6543/hooks?schema=tenant_1"
    assert db._url.drivername == "postgresql+asyncpg"
    assert "schema" not in db._url.query  # ours, not a connection parameter
    assert repr(db).count("***") == 1 and "pw@" not in repr(db)


def test_postgres_application_name_from_the_url_is_a_server_setting() -> None:
    db = database_from_url("postgresql://app@db/hooks?application_name=billing-web")
    assert isinstance(db, PostgresDatabase)
    assert db.application_name == "billing-web"
    assert "application_name" not in db._url.query  # asyncpg refuses it as a connect argument


def test_postgres_url_errors() -> None:
    with pytest.raises(ConfigError, match="contradicts"):
        PostgresDatabase("postgresql://h/db?schema=a", schema="b")
    with pytest.raises(ConfigError, match="invalid schema name"):
        database_from_url("postgresql://h/db?schema=bad-name")
    with pytest.raises(ConfigError, match="invalid delivery table name"):
        database_from_url("postgresql://h/db", delivery_table='x"; drop table y; --')


@pytest.mark.parametrize(
    "url",
    ["mysql://root:hunter2@db/app", "redis://:hunter2@cache:6379", "hunter2", "file:///x.db"],
)
def test_unknown_schemes_are_config_errors_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError, match="unsupported store URL") as caught:
        persistence_from_url(url)
    if "@" in url:
        assert "hunter2" not in str(caught.value)
        assert "***" in str(caught.value)


def test_table_names_are_validated_for_every_backend() -> None:
    for url in ("memory://", "sqlite:///:memory:", "postgresql://h/db"):
        with pytest.raises(ConfigError):
            persistence_from_url(url, endpoint_table="no spaces")


def test_d1_urls_go_to_the_d1_backend() -> None:
    with pytest.raises(ConfigError, match="query"):
        persistence_from_url("d1://acct/db", endpoint_table="hooks")
    persistence = persistence_from_url("d1://acct/db?token=t0k")
    assert type(persistence.delivery_store).__module__.startswith("kmsg_webhook.stores.d1")


async def test_migrate_by_url() -> None:
    with pytest.raises(ConfigError):
        await migrate("memory://")
    dsn = await server_dsn()
    schema = new_schema()
    try:
        latest = schema_version("postgresql")
        assert await migrate_url(f"{dsn}?schema={schema}") == latest
        assert await migrate(f"{dsn}?schema={schema}") == latest
        # Another table pair may live in the same schema, but must not share a table.
        with pytest.raises(StoreError, match=r"kmsg_webhook_deliveries already exist.*Nothing"):
            await migrate(f"{dsn}?schema={schema}", endpoint_table="hooks")
        assert (
            await migrate(f"{dsn}?schema={schema}", endpoint_table="hooks", delivery_table="box")
            == latest
        )
    finally:
        await drop_schema(dsn, schema)
