"""The D1 schema: the SQLite backend's tables, created idempotently over the REST API.

D1 speaks SQLite, so the tables, columns, checks and indexes are those of the SQLite backend
(timestamps are epoch-millisecond INTEGERs, nested values JSON text, table names default to the
original adapter's ``kmsg_webhook_endpoints``/``kmsg_webhook_deliveries``). Tables written by
the original TypeScript adapter can be brought over once with ``upgrade_original=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...errors import ConfigError
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


# (column, declaration) in table order: column for column the SQLite backend's schema
# (schema.sqlite.sql: its migrations 0001 to 0006), so a database moves between SQLite and D1
# (``wrangler d1 export``/``execute --file``) as it is.
ENDPOINT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "TEXT NOT NULL PRIMARY KEY"),
    ("url", "TEXT NOT NULL"),
    ("name", "TEXT"),
    ("description", "TEXT"),
    (
        "status",
        "TEXT NOT NULL CHECK (status IN"
        " ('active', 'inactive', 'error', 'suspended', 'pending_verification'))",
    ),
    ("events_json", "TEXT NOT NULL"),
    ("headers_json", "TEXT NOT NULL DEFAULT '{}'"),
    ("secret", "TEXT"),
    ("previous_secrets_json", "TEXT NOT NULL DEFAULT '[]'"),
    ("retry_config_json", "TEXT"),
    ("filters_json", "TEXT"),
    ("created_at", "INTEGER NOT NULL"),
    ("updated_at", "INTEGER NOT NULL"),
    ("last_triggered_at", "INTEGER"),
    ("disabled_reason", "TEXT"),
    ("consecutive_failures", "INTEGER NOT NULL DEFAULT 0"),
    ("failing_since", "INTEGER"),
    ("last_success_at", "INTEGER"),
    # An endpoint's client certificate for mutual TLS (SQLite migration 0003); added to older
    # tables.
    ("client_cert", "TEXT"),
    ("client_key", "TEXT"),
    # Ordered delivery (SQLite migration 0006); added to older tables.
    ("ordered", "INTEGER NOT NULL DEFAULT 0"),
)

DELIVERY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "TEXT NOT NULL PRIMARY KEY"),
    ("endpoint_id", "TEXT NOT NULL"),
    ("event_id", "TEXT NOT NULL"),
    ("event_type", "TEXT NOT NULL"),
    ("url", "TEXT NOT NULL"),
    ("payload", "TEXT NOT NULL"),
    ("status", "TEXT NOT NULL CHECK (status IN ('pending', 'success', 'failed', 'exhausted'))"),
    ("attempts_json", "TEXT NOT NULL DEFAULT '[]'"),
    ("attempt_count", "INTEGER NOT NULL DEFAULT 0"),
    ("last_latency_ms", "REAL"),
    ("last_error", "TEXT"),
    ("created_at", "INTEGER NOT NULL"),
    ("next_attempt_at", "INTEGER"),
    ("completed_at", "INTEGER"),
    ("lease_owner", "TEXT"),
    ("lease_expires_at", "INTEGER"),
    # Field crypto's keyed lookup hashes (SQLite migration 0002); added to older tables.
    ("to_hash", "TEXT"),
    ("from_hash", "TEXT"),
    # The event's ordering key on ordered endpoints (SQLite migration 0006).
    ("ordering_key", "TEXT"),
)


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


def _create_table(quoted: str, columns: tuple[tuple[str, str], ...]) -> str:
    body = ",\n  ".join(f"{name} {decl}" for name, decl in columns)
    return f"CREATE TABLE IF NOT EXISTS {quoted} (\n  {body}\n)"


def _index_statements(t: D1Tables) -> list[str]:
    e, d = t.endpoints, t.deliveries
    ep, dl = t.endpoint_table, t.delivery_table
    return [
        f"CREATE UNIQUE INDEX IF NOT EXISTS {t.index(ep, 'url')} ON {e} (url)",
        # One delivery per (endpoint, event): intake is insert-or-ignore on this pair.
        f"CREATE UNIQUE INDEX IF NOT EXISTS {t.index(dl, 'endpoint_event')} "
        f"ON {d} (endpoint_id, event_id)",
        # The claim query: due pending rows, oldest due first.
        f"CREATE INDEX IF NOT EXISTS {t.index(dl, 'due')} "
        f"ON {d} (next_attempt_at, id) WHERE status = 'pending'",
        # Listings newest first, overall and per endpoint / status / event type; purge by age.
        f"CREATE INDEX IF NOT EXISTS {t.index(dl, 'created_at')} ON {d} (created_at DESC, id DESC)",
        f"CREATE INDEX IF NOT EXISTS {t.index(dl, 'endpoint_id')} "
        f"ON {d} (endpoint_id, created_at DESC, id DESC)",
        f"CREATE INDEX IF NOT EXISTS {t.index(dl, 'status')} "
        f"ON {d} (status, created_at DESC, id DESC)",
        f"CREATE INDEX IF NOT EXISTS {t.index(dl, 'event_type')} "
        f"ON {d} (event_type, created_at DESC, id DESC)",
        # Field crypto lookups by keyed recipient / sender hash.
        f"CREATE INDEX IF NOT EXISTS {t.index(dl, 'to_hash')} "
        f"ON {d} (to_hash) WHERE to_hash IS NOT NULL",
        f"CREATE INDEX IF NOT EXISTS {t.index(dl, 'from_hash')} "
        f"ON {d} (from_hash) WHERE from_hash IS NOT NULL",
        # Finished rows by completion time (the console's overview and endpoint health).
        f"CREATE INDEX IF NOT EXISTS {t.index(dl, 'completed_at')} "
        f"ON {d} (completed_at, status, endpoint_id, last_latency_ms) "
        "WHERE completed_at IS NOT NULL",
        # Ordered delivery: pending rows of ordered endpoints by key, in rowid (store) order.
        f"CREATE INDEX IF NOT EXISTS {t.index(dl, 'ordering')} ON {d} (endpoint_id, ordering_key)"
        " WHERE status = 'pending' AND ordering_key IS NOT NULL",
    ]


def build_webhook_schema_sql(
    *,
    endpoint_table_name: str = DEFAULT_ENDPOINT_TABLE,
    delivery_table_name: str = DEFAULT_DELIVERY_TABLE,
) -> list[str]:
    """The schema as a list of idempotent statements (``IF NOT EXISTS``), tables first.

    Feed them to a migration system, ``wrangler d1 execute`` or :meth:`D1Client.batch`.
    """
    t = D1Tables(endpoint_table_name, delivery_table_name)
    return [
        _create_table(t.endpoints, ENDPOINT_COLUMNS),
        _create_table(t.deliveries, DELIVERY_COLUMNS),
        *_index_statements(t),
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
    probe = [
        D1Statement("SELECT name FROM pragma_table_info(?)", (t.endpoint_table,)),
        D1Statement("SELECT name FROM pragma_table_info(?)", (t.delivery_table,)),
        D1Statement(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (t.endpoint_table,)
        ),
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
            endpoint_cols, delivery_cols
        ):
            raise
        if not _is_original(endpoint_cols, delivery_cols):
            added = _add_missing_columns(t, endpoint_cols, delivery_cols)
            rebuilt = _rebuild_endpoints(t) if endpoint_cols else []
            await client.batch(
                [D1Statement(sql) for sql in [*added, *rebuilt, *(c.sql for c in create)]]
            )
            return
    if not _is_original(endpoint_cols, delivery_cols) and _missing(endpoint_cols, delivery_cols):
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


def _old_status_check(rows: list[dict[str, object]]) -> bool:
    """Whether the endpoint table exists with a status CHECK older than ``pending_verification``
    (SQLite cannot alter a CHECK: the table is rebuilt)."""
    return bool(rows) and "pending_verification" not in str(rows[0].get("sql") or "")


def _rebuild_endpoints(t: D1Tables) -> list[str]:
    """The endpoint table made again with the current columns and checks, rows kept (the same
    steps as the SQLite backend's migration 0005). One atomic batch with what follows."""
    e = t.endpoints
    rebuild = f'"{t.endpoint_table}_rebuild"'  # validated name plus a fixed suffix
    names = ", ".join(name for name, _ in ENDPOINT_COLUMNS)
    body = ",\n  ".join(f"{name} {decl}" for name, decl in ENDPOINT_COLUMNS)
    return [
        f"DROP TABLE IF EXISTS {rebuild}",
        f"CREATE TABLE {rebuild} (\n  {body}\n)",
        f"INSERT INTO {rebuild} ({names}) SELECT {names} FROM {e}",
        f"DROP TABLE {e}",
        f"ALTER TABLE {rebuild} RENAME TO {e}",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {t.index(t.endpoint_table, 'url')} ON {e} (url)",
    ]


def _missing(endpoint_cols: set[str], delivery_cols: set[str]) -> bool:
    """Whether existing tables lack a column of the current schema (created by an older
    version of this library)."""
    return bool(
        (endpoint_cols and {n for n, _ in ENDPOINT_COLUMNS} - endpoint_cols)
        or (delivery_cols and {n for n, _ in DELIVERY_COLUMNS} - delivery_cols)
    )


def _add_missing_columns(
    t: D1Tables, endpoint_cols: set[str], delivery_cols: set[str]
) -> list[str]:
    out: list[str] = []
    for quoted, columns, present in (
        (t.endpoints, ENDPOINT_COLUMNS, endpoint_cols),
        (t.deliveries, DELIVERY_COLUMNS, delivery_cols),
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
    out: list[str] = []
    if endpoint_cols:
        if "active" in endpoint_cols:
            out.append(f"ALTER TABLE {e} DROP COLUMN active")
        for name, decl in ENDPOINT_COLUMNS:
            if name not in endpoint_cols:
                out.append(f"ALTER TABLE {e} ADD COLUMN {name} {_addable(decl)}")
        out += [
            f"UPDATE {e} SET headers_json = '{{}}' WHERE headers_json IS NULL",
            f"UPDATE {e} SET status = 'inactive'"
            " WHERE status NOT IN ('active', 'inactive', 'error', 'suspended',"
            " 'pending_verification')",
            # The original wrote camelCase JSON; the stored form has snake_case keys.
            f"UPDATE {e} SET retry_config_json = json_object("
            "'max_retries', json_extract(retry_config_json, '$.maxRetries'),"
            " 'retry_delay_ms', json_extract(retry_config_json, '$.retryDelayMs'),"
            " 'backoff_multiplier', json_extract(retry_config_json, '$.backoffMultiplier'))"
            " WHERE json_valid(retry_config_json)",
            f"UPDATE {e} SET filters_json = json_object("
            + ", ".join(
                f"'{snake}', json(COALESCE(json_extract(filters_json, '$.{camel}'), '[]'))"
                for snake, camel in (
                    ("provider_id", "providerId"),
                    ("channel_id", "channelId"),
                    ("template_id", "templateId"),
                )
            )
            + ") WHERE json_valid(filters_json)",
        ]
    if delivery_cols:
        if "next_retry_at" in delivery_cols and "next_attempt_at" not in delivery_cols:
            out.append(f"ALTER TABLE {d} RENAME COLUMN next_retry_at TO next_attempt_at")
            delivery_cols = (delivery_cols - {"next_retry_at"}) | {"next_attempt_at"}
        for gone in ("http_method", "headers_json"):
            if gone in delivery_cols:
                out.append(f"ALTER TABLE {d} DROP COLUMN {gone}")
        for name, decl in DELIVERY_COLUMNS:
            if name not in delivery_cols:
                out.append(f"ALTER TABLE {d} ADD COLUMN {name} {_addable(decl)}")
        out += [
            # The original wrote each row once, finished, with its attempts in camelCase JSON.
            f"UPDATE {d} SET attempts_json = (SELECT json_group_array(json_object("
            "'attempt_number', json_extract(value, '$.attemptNumber'),"
            " 'started_at', json_extract(value, '$.timestamp'),"
            " 'latency_ms', COALESCE(json_extract(value, '$.latencyMs'), 0),"
            " 'http_status', json_extract(value, '$.httpStatus'),"
            " 'response_body', json_extract(value, '$.responseBody'),"
            " 'error', json_extract(value, '$.error'))) FROM json_each(attempts_json))"
            " WHERE json_valid(attempts_json)",
            f"UPDATE {d} SET attempt_count = json_array_length(attempts_json),"
            " last_latency_ms = json_extract(attempts_json, '$[#-1].latency_ms')"
            " WHERE json_valid(attempts_json)",
            # It kept next_retry_at as history; here the column means "next due".
            f"UPDATE {d} SET next_attempt_at = NULL WHERE status <> 'pending'",
        ]
    return out


def _addable(decl: str) -> str:
    """A declaration ADD COLUMN accepts: a NOT NULL column needs a default, else it stays
    nullable (the old rows have no value for it)."""
    if "NOT NULL" in decl and "DEFAULT" not in decl:
        return " ".join(decl.replace("NOT NULL", "").split())
    return decl
