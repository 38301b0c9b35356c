"""PostgreSQL persistence on asyncpg, through one SQLAlchemy connection pool.

Claims use ``FOR UPDATE SKIP LOCKED`` inside a single ``UPDATE ... RETURNING`` statement, so any
number of workers (processes, hosts) share the outbox without holding row locks between calls.
Pooled connections are pinged on checkout and re-opened after the server drops them; an
operation that fails on a lost connection is retried (see :mod:`kmsg_webhook.stores.sql.faults`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from ...errors import ConfigError, StoreError
from ...models import AttemptOutcome, DeliveryStatus, WebhookDelivery
from ...redact import redact_url
from ..protocol import DEFAULT_MAX_STORED_ATTEMPTS, DueCallback, WebhookPersistence
from ..rows import dumps, values_to_delivery
from ..sqlbind import POSTGRES
from ..sqlfiles import (
    DEFAULT_DELIVERY_TABLE,
    DEFAULT_ENDPOINT_TABLE,
    VERSION_TABLE,
    Migration,
    TableNames,
    numbered,
    quote,
    render,
)
from .base import DEFAULT_RETRY_TIMEOUT, WALK_MOST, SqlDatabase
from .listen import PostgresWatch

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")
# A pooled connection returned less than this long ago (and since the last lost connection)
# is reused without a ping.
_TRUSTED_IDLE_S = 2.0


class PostgresDatabase(SqlDatabase):
    """Endpoints and deliveries in a PostgreSQL database.

    ``url`` is a ``postgresql://`` (or ``postgres://``, ``postgresql+asyncpg://``) URL; a
    ``?schema=name`` query parameter (or the ``schema`` argument) puts the tables in that schema,
    created on first use if missing. ``pool_size`` bounds the connections of this store;
    ``connect_timeout`` bounds each connection attempt.
    """

    dialect = "postgresql"
    binding = POSTGRES

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        initialize_schema: bool = True,
        endpoint_table: str | None = None,
        delivery_table: str | None = None,
        max_stored_attempts: int = DEFAULT_MAX_STORED_ATTEMPTS,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        application_name: str = "kmsg-webhook",
    ) -> None:
        display = redact_url(url)
        try:
            parsed = make_url(url)
        except Exception as exc:
            raise ConfigError(f"invalid PostgreSQL URL {display}") from exc
        if parsed.drivername not in POSTGRES_SCHEMES:
            raise ConfigError(f"not a PostgreSQL URL: {display}")
        query = dict(parsed.query)
        url_schema = query.pop("schema", None)
        # asyncpg takes the application name as a server setting, not a connect argument.
        url_app = query.pop("application_name", None)
        if isinstance(url_schema, tuple):
            raise ConfigError(f"the schema is given more than once in {display}")
        if schema is not None and url_schema is not None and schema != url_schema:
            raise ConfigError(f"schema={schema!r} contradicts the URL {display}")
        if pool_size < 1:
            raise ConfigError("pool_size must be at least 1")
        self._url: URL = parsed.set(drivername="postgresql+asyncpg", query=query)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.application_name = url_app if isinstance(url_app, str) else application_name
        names = TableNames(
            DEFAULT_ENDPOINT_TABLE if endpoint_table is None else endpoint_table,
            DEFAULT_DELIVERY_TABLE if delivery_table is None else delivery_table,
            schema if schema is not None else url_schema,
        )
        super().__init__(
            display_url=display,
            names=names,
            initialize_schema=initialize_schema,
            max_stored_attempts=max_stored_attempts,
            retry_timeout=retry_timeout,
        )
        # NOTIFY channel of this table pair: a name within Postgres's 63-byte identifier limit.
        digest = hashlib.sha256(f"{names.schema or ''}|{names.scope}".encode()).hexdigest()
        self.channel = f"kmsg_webhook_{digest[:24]}"
        # asyncpg binds by position: the named statements it runs, numbered.
        self._insert = numbered(self.sql["insert_deliveries"], "$")
        self._migrator = {name: numbered(sql, "$") for name, sql in self.migrate_sql.items()}

    def persistence(self) -> WebhookPersistence:
        """The two stores with ``init``/``close``, and ``watch`` (``LISTEN`` on the channel
        this store's writes ``NOTIFY``)."""
        persistence = super().persistence()
        persistence.watch = self.watch
        return persistence

    async def watch(self, callback: DueCallback) -> PostgresWatch:
        """Call ``callback`` with the earliest due time whenever another writer commits new
        or re-scheduled pending rows (see :mod:`kmsg_webhook.stores.sql.listen`)."""
        await self.init()
        url = self._url.set(drivername="postgresql")

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(
                url.render_as_string(hide_password=False),
                timeout=self.connect_timeout,
                server_settings={"application_name": f"{self.application_name} listener"},
            )

        watch = PostgresWatch(connect, self.channel, callback, where=self.display_url)
        await watch.start()
        return watch

    async def announce_due(self, conn: AsyncConnection, at: datetime) -> None:
        await conn.execute(
            self.query("notify_due"), {"channel": self.channel, "at": str(at.timestamp())}
        )

    # -- engine ---------------------------------------------------------------------------------

    def _create_engine(self) -> AsyncEngine:
        engine = create_async_engine(
            self._url,
            pool_size=self.pool_size,
            max_overflow=0,
            hide_parameters=True,
            json_serializer=dumps,
            connect_args={
                "timeout": self.connect_timeout,
                "server_settings": {"application_name": self.application_name},
            },
        )

        # Instead of pool_pre_ping, which costs three round trips (BEGIN, ping, ROLLBACK) on
        # every checkout: ping only a connection that sat idle, or that was returned before an
        # operation last lost its connection. A failed ping recycles every pooled connection
        # older than now, so after a server restart the next checkout reconnects at once.
        @event.listens_for(engine.sync_engine, "checkin")
        def note_idle(dbapi_connection: Any, record: Any) -> None:
            record.info["idle_since"] = time.monotonic()

        @event.listens_for(engine.sync_engine, "checkout")
        def ping_if_stale(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            idle_since = record.info.get("idle_since")
            if (
                idle_since is not None
                and idle_since > self.disconnect_seen_at
                and time.monotonic() - idle_since < _TRUSTED_IDLE_S
            ):
                return
            try:
                dbapi_connection.ping()
            except Exception as exc:
                raise sa.exc.InvalidatePoolError(str(exc)) from exc

        return engine

    async def begin_write(self, conn: AsyncConnection) -> None:
        """SQLAlchemy begins the transaction with the first statement; nothing to do."""

    @asynccontextmanager
    async def driver(self, *, shared: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection's asyncpg connection, checked out of the pool without the
        SQLAlchemy connection around it: the hot paths run only named SQL on the driver, and
        the wrapper's set-up and shielded close cost about a fifth of the instructions of one
        producer's ``emit`` (``docs/performance.md``). A transient failure invalidates the
        connection, as :meth:`connect` does. ``shared`` changes nothing: every operation has a
        pooled connection of its own."""
        engine = self._engine
        if engine is None:
            raise self.closed_error()
        pooled = await engine.raw_connection()
        try:
            yield pooled.driver_connection
        except BaseException as exc:
            if self._is_disconnect(exc):
                self.disconnect_seen_at = time.monotonic()
                await greenlet_spawn(pooled.invalidate, exc)
            # Back to the pool even if the caller is cancelled again meanwhile (the close
            # may have a connection to shut), as AsyncConnection's own close is.
            await asyncio.shield(greenlet_spawn(pooled.close))
            raise
        # A healthy connection goes back to the pool without a round trip (the hot paths
        # leave no transaction open): nothing to shield.
        await greenlet_spawn(pooled.close)

    # -- schema ---------------------------------------------------------------------------------

    async def _current_version(self, conn: AsyncConnection) -> int:
        driver = await _driver(conn)
        version_table = self.names.qualified(VERSION_TABLE)
        if not await _fetchval(driver, self._migrator["table_exists"], name=version_table):
            return 0
        found = await _fetchval(driver, self._migrator["schema_version"], scope=self.names.scope)
        return int(found)

    async def _existing_tables(self, conn: AsyncConnection) -> list[str]:
        driver = await _driver(conn)
        return [
            table
            for table in (self.names.endpoints, self.names.deliveries)
            if await _fetchval(
                driver, self._migrator["table_exists"], name=self.names.qualified(table)
            )
        ]

    async def _apply_migrations(
        self, conn: AsyncConnection, all_migrations: Sequence[Migration]
    ) -> int:
        driver = await _driver(conn)
        schema = self.names.schema
        # One migrator per schema at a time; the others wait here, then find nothing to do.
        # A session lock taken before the transaction begins: a transaction that began before
        # the previous migrator committed would not see its tables (its catalog caches are only
        # refreshed when it starts or locks a table), and would create them again.
        await _fetchval(driver, self._migrator["lock"], schema=schema)
        try:
            return await self._migrate_locked(conn, all_migrations)
        finally:
            await _fetchval(driver, self._migrator["unlock"], schema=schema)

    async def _migrate_locked(
        self, conn: AsyncConnection, all_migrations: Sequence[Migration]
    ) -> int:
        driver = await _driver(conn)
        schema = self.names.schema
        async with driver.transaction():
            current = await self._current_version(conn)
            self._check_known(current)
            if current == 0:
                self._refuse_foreign_tables(await self._existing_tables(conn))
            if schema is not None and not await _fetchval(
                driver, self._migrator["schema_exists"], schema=schema
            ):
                await driver.execute(
                    self.migrate_sql["create_schema"].replace("{schema}", quote(schema))
                )
            for migration in all_migrations[current:]:
                await driver.execute(render(migration.sql, self.names))
                await _fetchval(
                    driver,
                    self._migrator["record_version"],
                    scope=self.names.scope,
                    version=migration.version,
                    description=migration.description,
                )
        return all_migrations[-1].version

    # -- hot paths (raw asyncpg) ---------------------------------------------------------------

    async def insert_deliveries(
        self, driver: asyncpg.Connection, deliveries: Sequence[WebhookDelivery], *, retried: bool
    ) -> set[str]:
        new = await self._insert_raw(driver, deliveries)
        if retried:
            ids = [d.id for d in deliveries]
            new |= {r[0] for r in await driver.fetch(self.sql["existing_delivery_ids"], ids)}
        return new

    async def insert_on_caller_connection(
        self, connection: object, deliveries: Sequence[WebhookDelivery]
    ) -> set[str]:
        if isinstance(connection, AsyncConnection):
            return await self.insert_with_sqlalchemy(connection, deliveries)
        if isinstance(connection, asyncpg.Connection):  # also pool connection proxies
            if not connection.is_in_transaction():
                raise StoreError(
                    "the asyncpg connection is not inside a transaction: open one "
                    "(async with connection.transaction()) so the deliveries commit or roll "
                    "back with your writes"
                )
            return await self._insert_raw(connection, deliveries) if deliveries else set()
        raise StoreError(
            "the PostgreSQL store joins a caller's transaction on an asyncpg Connection or a "
            f"SQLAlchemy AsyncConnection, not {type(connection).__module__}."
            f"{type(connection).__qualname__}"
        )

    async def _insert_raw(
        self, driver: asyncpg.Connection, deliveries: Sequence[WebhookDelivery]
    ) -> set[str]:
        new = await _fetchval(driver, self._insert, rows=dumps(deliveries), channel=self.channel)
        return set(new)

    async def insert_json_batch(
        self, conn: AsyncConnection, deliveries: Sequence[WebhookDelivery]
    ) -> set[str]:
        # The raw path's statement, by name: one row holding the array of new ids.
        params = {"rows": dumps(deliveries), "channel": self.channel}
        return set((await conn.execute(self.query("insert_deliveries"), params)).scalar_one())

    async def claim_deliveries(
        self,
        driver: asyncpg.Connection,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        exclude: list[str],
        retried: bool,
    ) -> list[WebhookDelivery]:
        found = []
        if retried:
            found = await driver.fetch(self.sql["leased_deliveries"], worker_id, lease_until)
        if len(found) < limit:
            query = "claim_deliveries"
            if exclude:
                due = await driver.fetchval(self.sql["count_excluded_due"], now, WALK_MOST, exclude)
                if due >= WALK_MOST:
                    query = "claim_deliveries_around"
            found += await driver.fetch(
                self.sql[query],
                worker_id,
                lease_until,
                now,
                exclude,
                limit - len(found),
            )
        return [values_to_delivery(r) for r in found]

    async def record_outcomes(
        self, driver: asyncpg.Connection, outcomes: Sequence[AttemptOutcome]
    ) -> int:
        applied = await driver.fetchval(
            self.sql["record_outcomes"],
            [o.delivery_id for o in outcomes],
            [o.worker_id for o in outcomes],
            [None if o.attempt is None else dumps(o.attempt) for o in outcomes],
            [o.status.value for o in outcomes],
            [o.next_attempt_at if o.status is DeliveryStatus.PENDING else None for o in outcomes],
            [o.completed_at for o in outcomes],
            [o.last_error for o in outcomes],
            [None if o.attempt is None else o.attempt.latency_ms for o in outcomes],
            self.max_stored_attempts,
            self.channel,
        )
        return int(applied)


async def _fetchval(
    driver: asyncpg.Connection, statement: tuple[str, tuple[str, ...]], **values: object
) -> Any:
    """Run a numbered statement (see :func:`~kmsg_webhook.stores.sqlfiles.numbered`) with its
    parameters taken from ``values`` by name; its first value (None without a row)."""
    sql, names = statement
    return await driver.fetchval(sql, *(values[name] for name in names))


async def _driver(conn: AsyncConnection) -> asyncpg.Connection:
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, asyncpg.Connection)
    return driver


__all__ = ["PostgresDatabase"]
