"""Open a persistence backend from a URL: ``memory://``, ``sqlite:///path.db``, ``postgresql://``.

``persistence_from_url()`` with no URL reads ``KMSG_WEBHOOK_STORE_URL`` and falls back to the
in-memory store. ``migrate(url)`` applies pending schema migrations (the CLI's
``kmsg-webhook migrate --store URL``).

=====================================================  ==========================================
URL                                                    Backend
=====================================================  ==========================================
``memory://``                                          in-process, not durable
``sqlite:///relative.db``, ``sqlite:////abs/path.db``  SQLite file (WAL); ``sqlite+aiosqlite://``
``sqlite:///:memory:``                                 SQLite in memory, one connection
``postgresql://user:pw@host:5432/db?schema=name``      PostgreSQL (also ``postgres://``,
                                                       ``postgresql+asyncpg://``)
``d1://<account_id>/<database_id>``                    Cloudflare D1 (see ``docs/d1.md``)
=====================================================  ==========================================
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

from ..errors import ConfigError, StoreUnavailableError
from ..redact import redact_url
from .memory import create_in_memory_persistence
from .protocol import DEFAULT_MAX_STORED_ATTEMPTS, WebhookPersistence
from .sql.base import DEFAULT_RETRY_TIMEOUT, SqlDatabase
from .sqlfiles import validate_table_name

ENV_VAR = "KMSG_WEBHOOK_STORE_URL"
MEMORY_URL = "memory://"

_SQLITE = ("sqlite", "sqlite+aiosqlite")
D1_SCHEMES = ("d1", "d1+http", "d1+https")
_POSTGRES = ("postgresql", "postgres", "postgresql+asyncpg")


def resolve_url(url: str | None = None) -> str:
    """``url``, else ``$KMSG_WEBHOOK_STORE_URL``, else ``memory://``."""
    if url is None:
        url = os.environ.get(ENV_VAR, "").strip() or MEMORY_URL
    return url


def scheme_of(url: str) -> str:
    """The lower-cased scheme of a store URL ("" when it has none)."""
    scheme, sep, _ = url.partition(":")
    return scheme.lower() if sep else ""


def persistence_from_url(
    url: str | None = None,
    *,
    initialize_schema: bool = True,
    endpoint_table: str | None = None,
    delivery_table: str | None = None,
    max_stored_attempts: int = DEFAULT_MAX_STORED_ATTEMPTS,
    retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
) -> WebhookPersistence:
    """The persistence the URL names (see the module docstring). Nothing connects yet.

    ``initialize_schema`` applies pending migrations on first use (SQL backends);
    ``endpoint_table``/``delivery_table`` rename the tables (validated identifiers, quoted);
    ``retry_timeout`` bounds how long one operation retries a lost connection or busy database.
    An unknown scheme is a :class:`~kmsg_webhook.errors.ConfigError` (password redacted).
    """
    url = resolve_url(url)
    if scheme_of(url) == "memory":
        for name in (endpoint_table, delivery_table):
            if name is not None:
                validate_table_name(name)
        return create_in_memory_persistence(max_stored_attempts=max_stored_attempts)
    if scheme_of(url) in D1_SCHEMES:
        if endpoint_table or delivery_table or not initialize_schema:
            raise ConfigError(
                "for a D1 store give endpoint_table=, delivery_table= and auto_init= as query "
                f"parameters of the URL: {redact_url(url)!r}"
            )
        from .d1 import d1_persistence_from_url

        return d1_persistence_from_url(
            url, max_stored_attempts=max_stored_attempts, retry_timeout=retry_timeout
        )
    return database_from_url(
        url,
        initialize_schema=initialize_schema,
        endpoint_table=endpoint_table,
        delivery_table=delivery_table,
        max_stored_attempts=max_stored_attempts,
        retry_timeout=retry_timeout,
    ).persistence()


def database_from_url(
    url: str,
    *,
    initialize_schema: bool = True,
    endpoint_table: str | None = None,
    delivery_table: str | None = None,
    max_stored_attempts: int = DEFAULT_MAX_STORED_ATTEMPTS,
    retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
) -> SqlDatabase:
    """The SQL database (SQLite or PostgreSQL) a URL names, not yet connected."""
    scheme = scheme_of(url)
    if scheme in _SQLITE:
        from .sql.sqlite import SQLiteDatabase

        return SQLiteDatabase(
            sqlite_path(url),
            initialize_schema=initialize_schema,
            endpoint_table=endpoint_table,
            delivery_table=delivery_table,
            max_stored_attempts=max_stored_attempts,
            retry_timeout=retry_timeout,
        )
    if scheme in _POSTGRES:
        from .sql.postgres import PostgresDatabase

        return PostgresDatabase(
            url,
            initialize_schema=initialize_schema,
            endpoint_table=endpoint_table,
            delivery_table=delivery_table,
            max_stored_attempts=max_stored_attempts,
            retry_timeout=retry_timeout,
        )
    raise ConfigError(
        f"unsupported store URL {redact_url(url)!r}: use memory://, sqlite:///path/to.db, "
        "postgresql://user@host/db or d1://account/database"
    )


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///`` URL (``:memory:`` for ``sqlite://`` or ``/:memory:``)."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"invalid SQLite URL {redact_url(url)!r}") from exc
    if parsed.query:
        raise ConfigError(f"SQLite URLs take no query options: {redact_url(url)!r}")
    if parsed.host or parsed.username or parsed.port:
        raise ConfigError(
            f"a SQLite URL has no host: write sqlite:///relative.db or sqlite:////abs.db, "
            f"not {redact_url(url)!r}"
        )
    return parsed.database or ":memory:"


def require_durable(url: str, *, create: bool = False) -> None:
    """Refuse a store that cannot outlive the process or that does not exist yet.

    ``memory://`` and in-memory SQLite are a :class:`ConfigError`. A SQLite file that does not
    exist is a :class:`StoreUnavailableError` unless ``create`` (a mistyped path would otherwise
    become a new, empty database); its directory must exist either way.
    """
    scheme = scheme_of(url)
    if scheme == "memory" or (scheme in _SQLITE and sqlite_path(url) == ":memory:"):
        raise ConfigError(
            f"{redact_url(url)} keeps nothing once this command exits; give a store that "
            "persists (sqlite:///path.db, postgresql://…, d1://…)"
        )
    if scheme not in _SQLITE:
        return
    path = Path(sqlite_path(url))
    if not path.parent.is_dir():
        raise StoreUnavailableError(f"no directory {path.parent} for the SQLite store {url}")
    if not create and not path.exists():
        raise StoreUnavailableError(
            f"no SQLite database at {path}: create it with `kmsg-webhook migrate --store {url}` "
            "(or pass --create)"
        )


async def migrate(
    url: str | None = None,
    *,
    endpoint_table: str | None = None,
    delivery_table: str | None = None,
    retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
) -> int:
    """Apply pending migrations to the store at ``url``; returns the schema version it is at.

    ``memory://`` has no schema: :class:`~kmsg_webhook.errors.ConfigError`. A database newer
    than this code is a :class:`~kmsg_webhook.errors.StoreError` and is left untouched.
    """
    url = resolve_url(url)
    if scheme_of(url) == "memory":
        raise ConfigError("the memory:// store has no schema to migrate")
    if scheme_of(url) in D1_SCHEMES:
        raise ConfigError("a D1 store creates its own tables when opened (auto_init)")
    db = database_from_url(
        url,
        endpoint_table=endpoint_table,
        delivery_table=delivery_table,
        retry_timeout=retry_timeout,
    )
    try:
        return await db.migrate()
    finally:
        await db.close()


# The name the CLI (`kmsg-webhook migrate --store URL`) imports.
migrate_url = migrate

__all__ = [
    "ENV_VAR",
    "MEMORY_URL",
    "database_from_url",
    "migrate",
    "migrate_url",
    "persistence_from_url",
    "require_durable",
    "resolve_url",
    "sqlite_path",
]
