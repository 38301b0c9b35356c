"""The D1 schema: the SQLite backend's tables, created idempotently over the REST API.

D1 speaks SQLite, so the tables, columns, checks and indexes are what the SQLite backend's
migrations build (timestamps are epoch-millisecond INTEGERs, nested values JSON text, table names
default to the original adapter's ``kmsg_webhook_endpoints``/``kmsg_webhook_deliveries``); this
module reads them from an in-memory SQLite the migrations ran on, and writes no DDL of its own
but the upgrades of the original adapter's tables. Tables written by
the original TypeScript adapter can be brought over once with ``upgrade_original=True``.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from functools import cache

from ...errors import ConfigError
from ..sqlfiles import TableNames, migrations, numbered, queries, render, without_comments
from .client import D1Client, D1Statement
from .errors import D1QueryError, D1SchemaError

__all__ = [
    "DEFAULT_DELIVERY_TABLE",
    "DEFAULT_ENDPOINT_TABLE",
    "D1Tables",
    "build_webhook_schema_sql",
    "initialize_webhook_schema",
    "quote_identifier",
]

DEFAULT_ENDPOINT_TABLE = "kmsg_webhook_endpoints"
DEFAULT_DELIVERY_TABLE = "kmsg_webhook_deliveries"

# At most 48 characters, as in the SQL backends (index names add a prefix and a suffix).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")


def quote_identifier(name: str) -> str:
    """``name`` validated as a plain identifier and double-quoted for SQL."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ConfigError(
            f"invalid table name {name!r}: use letters, digits and underscores "
            "(not starting with a digit, at most 48 characters)"
        )
    if name.lower().startswith(("sqlite_", "_cf_")):
        raise ConfigError(f"invalid table name {name!r}: the sqlite_/_cf_ prefixes are reserved")
    return f'"{name}"'


@dataclass(frozen=True, slots=True)
class D1Tables:
    """The two table names, validated; ``endpoints``/``deliveries`` are the quoted forms."""

    endpoint_table: str = DEFAULT_ENDPOINT_TABLE
    delivery_table: str = DEFAULT_DELIVERY_TABLE

    def __post_init__(self) -> None:
        quote_identifier(self.endpoint_table)
        quote_identifier(self.delivery_table)
        if self.endpoint_table.lower() == self.delivery_table.lower():
            raise ConfigError("the endpoint and delivery tables must have different names")

    @property
    def endpoints(self) -> str:
        return quote_identifier(self.endpoint_table)

    @property
    def deliveries(self) -> str:
        return quote_identifier(self.delivery_table)

    def index(self, table: str, suffix: str) -> str:
        return quote_identifier(f"idx_{table}_{suffix}")


Column = tuple[str, str]  # (name, declaration)


@dataclass(frozen=True, slots=True)
class _Built:
    """The webhook tables as the SQLite migrations leave them, for one pair of names."""

    endpoint_columns: tuple[Column, ...]
    delivery_columns: tuple[Column, ...]
    #: ``CREATE [UNIQUE] INDEX IF NOT EXISTS`` statements, in the order they were made.
    indexes: tuple[str, ...]


@cache
def _built(endpoint_table: str, delivery_table: str) -> _Built:
    """Run the SQLite backend's migrations on an in-memory SQLite and read back the two tables
    and their indexes: D1 has no DDL of its own, so the two backends cannot drift apart."""
    db = sqlite3.connect(":memory:")
    try:
        names = TableNames(endpoint_table, delivery_table)
        for migration in migrations("sqlite"):
            db.executescript(render(migration.sql, names))
        introspect = queries("sqlite", "migrate")
        tables = dict(db.execute(introspect["schema_tables"]))
        indexes = db.execute(
            introspect["schema_indexes"],
            {"endpoints": endpoint_table, "deliveries": delivery_table},
        ).fetchall()
    finally:
        db.close()
    return _Built(
        _columns_of(tables[endpoint_table]),
        _columns_of(tables[delivery_table]),
        tuple(
            re.sub(
                r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX IF NOT EXISTS ", " ".join(sql.split())
            )
            for (sql,) in indexes
        ),
    )


def _columns_of(create_table: str) -> tuple[Column, ...]:
    """The column definitions of a ``CREATE TABLE`` text (no table constraints in ours), with
    their whitespace made single."""
    body = create_table[create_table.index("(") + 1 : create_table.rindex(")")]
    parts: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(body):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    columns = [" ".join(part.split()) for part in parts]
    return tuple((c.split(" ", 1)[0], c.split(" ", 1)[1]) for c in columns)


def _create_table(quoted: str, columns: tuple[Column, ...]) -> str:
    body = ",\n  ".join(f"{name} {decl}" for name, decl in columns)
    return f"CREATE TABLE IF NOT EXISTS {quoted} (\n  {body}\n)"


def build_webhook_schema_sql(
    *,
    endpoint_table_name: str = DEFAULT_ENDPOINT_TABLE,
    delivery_table_name: str = DEFAULT_DELIVERY_TABLE,
) -> list[str]:
    """The schema as a list of idempotent statements (``IF NOT EXISTS``), tables first.

    Feed them to a migration system, ``wrangler d1 execute`` or :meth:`D1Client.batch`.
    """
    t = D1Tables(endpoint_table_name, delivery_table_name)
    built = _built(t.endpoint_table, t.delivery_table)
    return [
        _create_table(t.endpoints, built.endpoint_columns),
        _create_table(t.deliveries, built.delivery_columns),
        *built.indexes,
    ]


async def initialize_webhook_schema(
    client: D1Client,
    *,
    endpoint_table_name: str = DEFAULT_ENDPOINT_TABLE,
    delivery_table_name: str = DEFAULT_DELIVERY_TABLE,
    upgrade_original: bool = False,
) -> None:
    """Create the tables and indexes if missing, in one atomic batch (one round trip).

    Every statement is idempotent, so running it again (or from two processes at once) is
    harmless. Tables created by an earlier version of this library get the columns added since
    (the lookup-hash columns), in the same batch as the indexes on them. Tables created by the
    original TypeScript adapter are detected: they are
    upgraded in place when ``upgrade_original`` is true (this renames ``next_retry_at`` and
    drops ``deliveries.http_method``, ``deliveries.headers_json`` and ``endpoints.active``),
    otherwise a :class:`~kmsg_webhook.stores.d1.errors.D1SchemaError` says so and nothing changes.
    """
    t = D1Tables(endpoint_table_name, delivery_table_name)
    columns, definition = _probe_sql()
    probe = [
        D1Statement(columns, (t.endpoint_table,)),
        D1Statement(columns, (t.delivery_table,)),
        D1Statement(definition, (t.endpoint_table,)),
    ]
    create = [
        D1Statement(sql)
        for sql in build_webhook_schema_sql(
            endpoint_table_name=t.endpoint_table, delivery_table_name=t.delivery_table
        )
    ]
    try:
        # Fast path, one round trip: the probe runs first in the batch, so it sees the
        # tables as they were before the CREATEs.
        results = await client.batch([*probe, *create])
        endpoint_cols, delivery_cols = _names(results[0].rows), _names(results[1].rows)
        if _old_status_check(results[2].rows):
            # Columns without an index the old table lacks are added before the rebuild
            # copies them.
            added = (
                []
                if _is_original(endpoint_cols, delivery_cols)
                else _add_missing_columns(t, endpoint_cols, delivery_cols)
            )
            await client.batch([D1Statement(sql) for sql in [*added, *_rebuild_endpoints(t)]])
            if added:
                return
    except D1QueryError:
        # An index on a column an older table lacks fails the whole (atomic) batch.
        endpoint_cols, delivery_cols = await _columns(client, probe)
        if not _is_original(endpoint_cols, delivery_cols) and not _missing(
            t, endpoint_cols, delivery_cols
        ):
            raise
        if not _is_original(endpoint_cols, delivery_cols):
            added = _add_missing_columns(t, endpoint_cols, delivery_cols)
            rebuilt = _rebuild_endpoints(t) if endpoint_cols else []
            await client.batch(
                [D1Statement(sql) for sql in [*added, *rebuilt, *(c.sql for c in create)]]
            )
            return
    if not _is_original(endpoint_cols, delivery_cols) and _missing(t, endpoint_cols, delivery_cols):
        # Columns without an index (the batch above went through): added now.
        added = _add_missing_columns(t, endpoint_cols, delivery_cols)
        await client.batch([D1Statement(sql) for sql in added])
        return
    if _is_original(endpoint_cols, delivery_cols):
        if not upgrade_original:
            raise D1SchemaError(
                f"tables {t.endpoint_table}/{t.delivery_table} were created by the original "
                "TypeScript adapter; run initialize_webhook_schema(..., upgrade_original=True) "
                "once to upgrade them (see docs/d1.md)"
            )
        upgrade = _upgrade_statements(t, endpoint_cols, delivery_cols)
        rebuilt = _rebuild_endpoints(t) if endpoint_cols else []
        await client.batch(
            [D1Statement(sql) for sql in [*upgrade, *rebuilt, *(c.sql for c in create)]]
        )


@cache
def _probe_sql() -> tuple[str, str]:
    """The column-list and table-definition lookups of ``queries/migrate.sqlite.sql``, with
    D1's positional parameter."""
    introspect = queries("sqlite", "migrate")
    return (
        numbered(without_comments(introspect["table_columns"]), "?")[0],
        numbered(without_comments(introspect["table_definition"]), "?")[0],
    )


def _old_status_check(rows: list[dict[str, object]]) -> bool:
    """Whether the endpoint table exists with a status CHECK older than ``pending_verification``
    (SQLite cannot alter a CHECK: the table is rebuilt)."""
    return bool(rows) and "pending_verification" not in str(rows[0].get("sql") or "")


def _rebuild_endpoints(t: D1Tables) -> list[str]:
    """The endpoint table made again with the current columns and checks, rows kept (the same
    steps as the SQLite backend's migration 0005). One atomic batch with what follows."""
    e = t.endpoints
    rebuild = f'"{t.endpoint_table}_rebuild"'  # validated name plus a fixed suffix
    columns = _built(t.endpoint_table, t.delivery_table).endpoint_columns
    names = ", ".join(name for name, _ in columns)
    return [
        f"DROP TABLE IF EXISTS {rebuild}",
        _create_table(rebuild, columns),
        f"INSERT INTO {rebuild} ({names}) SELECT {names} FROM {e}",
        f"DROP TABLE {e}",
        f"ALTER TABLE {rebuild} RENAME TO {e}",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {t.index(t.endpoint_table, 'url')} ON {e} (url)",
    ]


def _missing(t: D1Tables, endpoint_cols: set[str], delivery_cols: set[str]) -> bool:
    """Whether existing tables lack a column of the current schema (created by an older
    version of this library)."""
    built = _built(t.endpoint_table, t.delivery_table)
    return bool(
        (endpoint_cols and {n for n, _ in built.endpoint_columns} - endpoint_cols)
        or (delivery_cols and {n for n, _ in built.delivery_columns} - delivery_cols)
    )


def _add_missing_columns(
    t: D1Tables, endpoint_cols: set[str], delivery_cols: set[str]
) -> list[str]:
    built = _built(t.endpoint_table, t.delivery_table)
    out: list[str] = []
    for quoted, columns, present in (
        (t.endpoints, built.endpoint_columns, endpoint_cols),
        (t.deliveries, built.delivery_columns, delivery_cols),
    ):
        if present:
            out += [
                f"ALTER TABLE {quoted} ADD COLUMN {name} {_addable(decl)}"
                for name, decl in columns
                if name not in present
            ]
    return out


def _names(rows: list[dict[str, object]]) -> set[str]:
    return {str(r["name"]) for r in rows}


async def _columns(client: D1Client, probe: list[D1Statement]) -> tuple[set[str], set[str]]:
    results = await client.batch(probe)
    return _names(results[0].rows), _names(results[1].rows)


def _is_original(endpoint_cols: set[str], delivery_cols: set[str]) -> bool:
    return ("next_retry_at" in delivery_cols and "next_attempt_at" not in delivery_cols) or (
        "active" in endpoint_cols and "consecutive_failures" not in endpoint_cols
    )


def _upgrade_statements(t: D1Tables, endpoint_cols: set[str], delivery_cols: set[str]) -> list[str]:
    """Bring tables written by the original adapter to this schema (one atomic batch)."""
    e, d = t.endpoints, t.deliveries
    built = _built(t.endpoint_table, t.delivery_table)
    names = TableNames(t.endpoint_table, t.delivery_table)
    # The data fixes, in file order: reviewed SQL (queries/original_adapter.sqlite.sql).
    fixes = {
        name: render(sql, names) for name, sql in queries("sqlite", "original_adapter").items()
    }
    out: list[str] = []
    if endpoint_cols:
        if "active" in endpoint_cols:
            out.append(f"ALTER TABLE {e} DROP COLUMN active")
        for name, decl in built.endpoint_columns:
            if name not in endpoint_cols:
                out.append(f"ALTER TABLE {e} ADD COLUMN {name} {_addable(decl)}")
        out += [fixes[name] for name in fixes if name.startswith("endpoints_")]
    if delivery_cols:
        if "next_retry_at" in delivery_cols and "next_attempt_at" not in delivery_cols:
            out.append(f"ALTER TABLE {d} RENAME COLUMN next_retry_at TO next_attempt_at")
            delivery_cols = (delivery_cols - {"next_retry_at"}) | {"next_attempt_at"}
        for gone in ("http_method", "headers_json"):
            if gone in delivery_cols:
                out.append(f"ALTER TABLE {d} DROP COLUMN {gone}")
        for name, decl in built.delivery_columns:
            if name not in delivery_cols:
                out.append(f"ALTER TABLE {d} ADD COLUMN {name} {_addable(decl)}")
        out += [fixes[name] for name in fixes if name.startswith("deliveries_")]
    return out


def _addable(decl: str) -> str:
    """A declaration ADD COLUMN accepts: a NOT NULL column needs a default, else it stays
    nullable (the old rows have no value for it)."""
    if "NOT NULL" in decl and "DEFAULT" not in decl:
        return " ".join(decl.replace("NOT NULL", "").split())
    return decl
