"""SQL persistence backends: SQLite (aiosqlite) and PostgreSQL (asyncpg).

Both keep endpoints and the delivery outbox in two tables (``kmsg_webhook_endpoints``,
``kmsg_webhook_deliveries`` by default) whose schema is versioned by numbered migrations. Most
code should open a store with :func:`kmsg_webhook.stores.url.persistence_from_url`; the classes
here give every option: ``SQLiteDatabase(path, ...).persistence()`` and
``PostgresDatabase(url, ...).persistence()``. See ``docs/sql-backends.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..protocol import DEFAULT_MAX_STORED_ATTEMPTS
from ..sqlfiles import TableNames, schema_sql, schema_version
from .base import (
    DEFAULT_RETRY_TIMEOUT,
    SqlDatabase,
    SqlDeliveryStore,
    SqlEndpointStore,
)

if TYPE_CHECKING:
    from .postgres import PostgresDatabase
    from .sqlite import SQLiteDatabase

# The driver-specific modules load on first use, so either driver may be absent.
_LAZY = {"PostgresDatabase": "postgres", "SQLiteDatabase": "sqlite"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)


__all__ = [
    "DEFAULT_MAX_STORED_ATTEMPTS",
    "DEFAULT_RETRY_TIMEOUT",
    "PostgresDatabase",
    "SQLiteDatabase",
    "SqlDatabase",
    "SqlDeliveryStore",
    "SqlEndpointStore",
    "TableNames",
    "schema_sql",
    "schema_version",
]
