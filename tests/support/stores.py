"""The store factory: PostgreSQL and SQLite for the tests, every backend of the store
conformance suite (:data:`BACKENDS`) and of the tracking and job suites
(:func:`open_tracking_backend`).

A server is found in this order: ``$KMSG_TEST_POSTGRES_DSN``; the machine's cluster at
``postgresql://postgres@127.0.0.1:5432/test``; a throwaway cluster started with ``initdb`` and
``pg_ctl`` in a temporary directory on a free port. When none works the Postgres tests are
skipped with the reason, except under ``CI=true`` where they fail instead.

Every test gets its own schema (``t_<random>``), created by the store's migrations and dropped
when the test's persistence closes, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from kmsg_webhook import WebhookPersistence, create_in_memory_persistence
from kmsg_webhook.crypto import FieldCrypto, with_field_crypto
from kmsg_webhook.messaging import InMemoryTrackingStore, TrackingStore
from kmsg_webhook.messaging.jobs import InMemoryJobStore, JobStore
from kmsg_webhook.messaging.jobs_d1 import D1JobStore
from kmsg_webhook.messaging.jobs_sql import SqlJobStore
from kmsg_webhook.messaging.tracking_d1 import D1TrackingStore
from kmsg_webhook.messaging.tracking_sql import SqlTrackingStore
from kmsg_webhook.stores.sql.postgres import PostgresDatabase
from kmsg_webhook.stores.sql.sqlite import SQLiteDatabase
from support.crypto_keys import conformance_crypto
from support.d1 import d1_backend, require_local_d1

DSN_ENV = "KMSG_TEST_POSTGRES_DSN"
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/test"
BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin")

# The conformance suite expects stores built with this cap.
CONFORMANCE_MAX_ATTEMPTS = 5


class Relay:
    """A TCP relay to a server on loopback that can be cut and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        #: When set, the next answer from the server containing these bytes is never
        #: delivered: the connection is dropped instead (the server has done the work).
        self.lose_answer: bytes | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, answers: bool
        ) -> None:
            with suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    if answers and self.lose_answer is not None and self.lose_answer in data:
                        self.lose_answer = None
                        break
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(
            pipe(reader, up_writer, answers=False), pipe(up_reader, writer, answers=True)
        )
        self._writers.difference_update((writer, up_writer))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip the current test, or fail it under ``CI=true``."""
    if in_ci():
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


async def can_connect(dsn: str) -> str | None:
    """``None`` when ``dsn`` accepts a connection (within 3 s), else why not."""
    try:
        conn = await asyncpg.connect(dsn, timeout=3.0)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


# -- throwaway clusters ---------------------------------------------------------------------------


def find_binary(name: str) -> str | None:
    for folder in BIN_DIRS:
        candidate = Path(folder, name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThrowawayCluster:
    """A private PostgreSQL cluster in a temporary directory (trust auth, fsync off).

    ``stop`` is a fast shutdown: clients are disconnected, committed work survives (fsync off
    only matters if the machine itself crashes).

    Run as root, the server runs as the ``postgres`` user (``initdb`` refuses root).
    """

    def __init__(self) -> None:
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError(f"initdb/pg_ctl not found in {BIN_DIRS} or PATH")
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self._prefix: list[str] = []
        self.directory = Path(tempfile.mkdtemp(prefix="kmsg-pg-"))
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no postgres user") from None
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]
        self.data = self.directory / "data"
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run(self._initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync")  # fmt: skip

    def _run(self, *args: str) -> None:
        subprocess.run([*self._prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off"
        self._run(self._pg_ctl, "-D", str(self.data), "-o", options, "-l",
                  str(self.directory / "log"), "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        self._run(self._pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with suppress(subprocess.SubprocessError, OSError):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_throwaway_cluster() -> ThrowawayCluster:
    cluster = ThrowawayCluster()
    try:
        cluster.start()
    except BaseException:
        cluster.remove()
        raise
    atexit.register(cluster.remove)
    return cluster


# -- discovery ------------------------------------------------------------------------------------

_discovered: tuple[str | None, str] | None = None


async def _discover() -> tuple[str | None, str]:
    reasons: list[str] = []
    candidates = [(DSN_ENV, os.environ[DSN_ENV])] if os.environ.get(DSN_ENV) else []
    candidates.append(("local server", LOCAL_DSN))
    for label, dsn in candidates:
        problem = await can_connect(dsn)
        if problem is None:
            return dsn, ""
        reasons.append(f"{label} {dsn}: {problem}")
    try:
        cluster = await asyncio.to_thread(start_throwaway_cluster)
    except Exception as exc:
        reasons.append(f"throwaway cluster: {type(exc).__name__}: {exc}")
        return None, "no PostgreSQL server found (" + "; ".join(reasons) + ")"
    return cluster.dsn, ""


async def server_dsn() -> str:
    """The DSN of a working server; skips (fails under CI) when there is none."""
    global _discovered
    if _discovered is None:
        _discovered = await _discover()
    dsn, reason = _discovered
    if dsn is None:
        unavailable(reason)
        raise AssertionError("unreachable")
    return dsn


# -- per-test schemas and backends -----------------------------------------------------------


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@asynccontextmanager
async def relayed_postgres_database(
    **options: Any,
) -> AsyncIterator[tuple[Relay, PostgresDatabase]]:
    """A :class:`Relay` in front of the test server, and a store (own schema, dropped after)
    reached through it."""
    dsn = await server_dsn()
    parts = urlsplit(dsn)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    await relay.start()
    schema = new_schema()
    netloc = f"{parts.username}@127.0.0.1:{relay.port}" if parts.username else None
    url = urlunsplit(parts._replace(netloc=netloc or f"127.0.0.1:{relay.port}"))
    db = PostgresDatabase(url, schema=schema, **options)
    try:
        yield relay, db
    finally:
        await db.close()
        await relay.cut()
        await drop_schema(dsn, schema)


async def terminate_backends(dsn: str, application_name: str) -> int:
    """``pg_terminate_backend`` every connection with this application name; how many."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        killed: int = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND pid <> pg_backend_pid()",
            application_name,
        )
        return killed
    finally:
        await conn.close()


def postgres_database(dsn: str, schema: str, **options: Any) -> PostgresDatabase:
    options.setdefault("application_name", f"kmsg-test-{schema}")
    options.setdefault("pool_size", 4)
    return PostgresDatabase(dsn, schema=schema, **options)


@asynccontextmanager
async def temporary_postgres(**options: Any) -> AsyncIterator[PostgresDatabase]:
    """A :class:`PostgresDatabase` in a fresh schema, dropped afterwards."""
    dsn = await server_dsn()
    schema = new_schema()
    db = postgres_database(dsn, schema, **options)
    try:
        yield db
    finally:
        try:
            await db.close()
        finally:
            await drop_schema(dsn, schema)


@asynccontextmanager
async def temporary_store_url() -> AsyncIterator[str]:
    """A store URL for a fresh Postgres schema (``...?schema=``), dropped afterwards."""
    dsn = await server_dsn()
    schema = new_schema()
    try:
        yield f"{dsn}?schema={schema}"
    finally:
        await drop_schema(dsn, schema)


@asynccontextmanager
async def migrated_store_url(kind: str) -> AsyncIterator[str]:
    """A store URL, schema created: ``sqlite`` (a file in a fresh directory) or ``postgres``
    (a fresh schema); removed afterwards."""
    from kmsg_webhook.stores.url import migrate

    if kind == "postgres":
        async with temporary_store_url() as url:
            await migrate(url)
            yield url
        return
    with tempfile.TemporaryDirectory(prefix="kmsg-store-") as directory:
        url = f"sqlite:///{os.path.join(directory, 'store.db')}"
        await migrate(url)
        yield url


@asynccontextmanager
async def temporary_sqlite(**options: Any) -> AsyncIterator[SQLiteDatabase]:
    """A :class:`SQLiteDatabase` in a fresh file of a temporary directory, removed afterwards."""
    directory = tempfile.mkdtemp(prefix="kmsg-sqlite-")
    db = SQLiteDatabase(os.path.join(directory, "store.db"), **options)
    try:
        yield db
    finally:
        try:
            await db.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


async def postgres_persistence() -> WebhookPersistence:
    """Conformance backend: PostgreSQL in a schema of its own, dropped on close."""
    dsn = await server_dsn()
    schema = new_schema()
    db = postgres_database(dsn, schema, max_stored_attempts=CONFORMANCE_MAX_ATTEMPTS)

    async def close() -> None:
        try:
            await db.close()
        finally:
            await drop_schema(dsn, schema)

    return WebhookPersistence(db.endpoint_store, db.delivery_store, init=db.init, close=close)


async def sqlite_persistence() -> WebhookPersistence:
    """Conformance backend: a SQLite file (WAL) in a temporary directory, removed on close."""
    directory = tempfile.mkdtemp(prefix="kmsg-sqlite-")
    db = SQLiteDatabase(
        os.path.join(directory, "store.db"), max_stored_attempts=CONFORMANCE_MAX_ATTEMPTS
    )

    async def close() -> None:
        try:
            await db.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    return WebhookPersistence(db.endpoint_store, db.delivery_store, init=db.init, close=close)


# Backends of the store conformance suite, by name: each builds a fresh, empty persistence.
# Every backend appears once more with field crypto on (support/crypto_keys.py): the same suite
# must pass through the wrappers, reading back exactly what was written.
async def _memory() -> WebhookPersistence:
    return create_in_memory_persistence(max_stored_attempts=CONFORMANCE_MAX_ATTEMPTS)


def _with_crypto(
    make: Callable[[], Awaitable[WebhookPersistence]],
) -> Callable[[], Awaitable[WebhookPersistence]]:
    async def build() -> WebhookPersistence:
        return with_field_crypto(await make(), conformance_crypto())

    return build


_PLAIN: dict[str, Callable[[], Awaitable[WebhookPersistence]]] = {
    "memory": _memory,
    "sqlite": sqlite_persistence,
    "postgres": postgres_persistence,
    "d1": d1_backend,
}
BACKENDS = {**_PLAIN, **{f"{name}+crypto": _with_crypto(make) for name, make in _PLAIN.items()}}


# Messaging stores of the tracking and job conformance suites.
TRACKING_TABLE = "kmsg_webhook_message_tracking"
JOBS_TABLE = "kmsg_webhook_message_jobs"
RawRows = Callable[[str], Awaitable[list[dict[str, Any]]]]
#: The tracking store and job queue over the same tables, with other field crypto.
Reopen = Callable[[FieldCrypto | None], tuple[TrackingStore, JobStore]]


@dataclass
class TrackingBackend:
    """A tracking store and a job queue over one database, able to show a table's rows as stored."""

    name: str
    store: TrackingStore
    jobs: JobStore
    raw_rows: RawRows  # a table's rows as stored
    close: Callable[[], Awaitable[None]]
    reopen: Reopen  # e.g. to write rows sealed under a key the backend's stores lack


async def _tracking_memory(crypto: FieldCrypto | None) -> TrackingBackend:
    store = InMemoryTrackingStore(crypto=crypto)
    jobs = InMemoryJobStore(crypto=crypto)

    async def raw(table: str) -> list[dict[str, Any]]:
        rows = store.rows() if table == TRACKING_TABLE else jobs.rows()
        return [row.values() for row in rows]

    async def close() -> None:
        await store.close()

    def reopen(other: FieldCrypto | None) -> tuple[TrackingStore, JobStore]:
        # Memory stores share nothing by themselves: the new pair writes into the same rows.
        tracking, queue = InMemoryTrackingStore(crypto=other), InMemoryJobStore(crypto=other)
        tracking._rows, queue._rows = store._rows, jobs._rows
        return tracking, queue

    return TrackingBackend("memory", store, jobs, raw, close, reopen)


async def _tracking_sqlite(crypto: FieldCrypto | None) -> TrackingBackend:
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

    def reopen(other: FieldCrypto | None) -> tuple[TrackingStore, JobStore]:
        return SqlTrackingStore(db, crypto=other), SqlJobStore(db, crypto=other)

    return TrackingBackend("sqlite", store, SqlJobStore(db, crypto=crypto), raw, close, reopen)


async def _tracking_postgres(crypto: FieldCrypto | None) -> TrackingBackend:
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

    def reopen(other: FieldCrypto | None) -> tuple[TrackingStore, JobStore]:
        return SqlTrackingStore(db, crypto=other), SqlJobStore(db, crypto=other)

    return TrackingBackend("postgres", store, SqlJobStore(db, crypto=crypto), raw, close, reopen)


def fresh_messaging_tables() -> dict[str, str]:
    """Tracking and job table names no other test uses, by default name (D1 has one shared
    database per test session)."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    return {TRACKING_TABLE: f"{prefix}_tracking", JOBS_TABLE: f"{prefix}_jobs"}


async def _tracking_d1(crypto: FieldCrypto | None) -> TrackingBackend:
    local = await asyncio.to_thread(require_local_d1)
    tables = fresh_messaging_tables()
    client = local.client()
    store = D1TrackingStore(client, table=tables[TRACKING_TABLE], crypto=crypto)
    jobs = D1JobStore(client, table=tables[JOBS_TABLE], crypto=crypto)

    async def raw(table: str) -> list[dict[str, Any]]:
        return (await client.query(f'SELECT * FROM "{tables[table]}"')).rows

    def reopen(other: FieldCrypto | None) -> tuple[TrackingStore, JobStore]:
        return (
            D1TrackingStore(client, table=tables[TRACKING_TABLE], crypto=other),
            D1JobStore(client, table=tables[JOBS_TABLE], crypto=other),
        )

    return TrackingBackend("d1", store, jobs, raw, client.close, reopen)


_TRACKING: dict[str, Callable[[FieldCrypto | None], Awaitable[TrackingBackend]]] = {
    "memory": _tracking_memory,
    "sqlite": _tracking_sqlite,
    "postgres": _tracking_postgres,
    "d1": _tracking_d1,
}


async def open_tracking_backend(name: str) -> TrackingBackend:
    """``memory``, ``sqlite``, ``postgres``, ``d1``, each also ``<name>+crypto`` (everything
    sealed)."""
    base, _, crypto = name.partition("+")
    opened = await _TRACKING[base](conformance_crypto() if crypto else None)
    opened.name = name
    return opened


TRACKING_BACKENDS = sorted([*_TRACKING, *(f"{name}+crypto" for name in _TRACKING)])

__all__: Sequence[str] = [
    "BACKENDS",
    "JOBS_TABLE",
    "TRACKING_BACKENDS",
    "TRACKING_TABLE",
    "ThrowawayCluster",
    "TrackingBackend",
    "fresh_messaging_tables",
    "open_tracking_backend",
    "postgres_persistence",
    "server_dsn",
    "sqlite_persistence",
    "temporary_postgres",
    "temporary_sqlite",
    "terminate_backends",
]
