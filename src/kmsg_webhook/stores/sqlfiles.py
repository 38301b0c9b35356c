"""The packaged SQL every SQL-speaking store runs, loaded by name and rendered for table names.

All SQL lives in reviewed ``.sql`` files under ``sql/``: ``migrations/<dialect>/NNNN_*.sql``
(applied in order, recorded in the schema-version table), ``queries/[<family>.]<dialect>.sql``
(every query under a ``-- name: <name>`` header); :func:`schema_sql` joins the migrations into
the full current schema. D1 is SQLite: it runs the ``sqlite`` files. They are
written with the default names; :func:`render` replaces every ``kmsg_webhook_*`` identifier with
the configured name, validated and quoted, so a name is never pasted raw. This module imports no
driver, so every backend (and the messaging stores) can load its SQL from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

from ..errors import ConfigError, StoreError

Dialect = Literal["postgresql", "sqlite"]

DEFAULT_ENDPOINT_TABLE = "kmsg_webhook_endpoints"
DEFAULT_DELIVERY_TABLE = "kmsg_webhook_deliveries"
VERSION_TABLE = "kmsg_webhook_schema_version"
#: Delivery tracking of sent messages: one table per database (or Postgres schema), whatever
#: the table pair is called.
TRACKING_TABLE = "kmsg_webhook_message_tracking"
#: The queue of scheduled and bulk sends: one table per database (or Postgres schema) too.
JOBS_TABLE = "kmsg_webhook_message_jobs"

# Index names are ``idx_<table>_<suffix>`` (the original's convention), so a table name must
# leave room for the longest suffix inside Postgres' 63-byte identifier limit.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def validate_table_name(name: str, *, what: str = "table name") -> str:
    """Return ``name`` if it is a plain SQL identifier (letters, digits, ``_``; at most 48)."""
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid {what} {name!r}: use letters, digits and '_' (not first), at most 48"
        )
    return name


def validate_schema_name(name: str) -> str:
    """Return ``name`` if it is a plain Postgres schema identifier."""
    if not isinstance(name, str) or not _SCHEMA_NAME.fullmatch(name):
        raise ConfigError(
            f"invalid schema name {name!r}: use letters, digits and '_' (not first), at most 63"
        )
    return name


def quote(identifier: str) -> str:
    """Double-quote an identifier (it has been validated, so it holds no quote)."""
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class TableNames:
    """Where a store keeps its rows: two table names and, in Postgres, an optional schema."""

    endpoints: str = DEFAULT_ENDPOINT_TABLE
    deliveries: str = DEFAULT_DELIVERY_TABLE
    schema: str | None = None

    def __post_init__(self) -> None:
        validate_table_name(self.endpoints, what="endpoint table name")
        validate_table_name(self.deliveries, what="delivery table name")
        if self.endpoints == self.deliveries:
            raise ConfigError("the endpoint and delivery tables must have different names")
        for reserved in (VERSION_TABLE, TRACKING_TABLE, JOBS_TABLE):
            if reserved in (self.endpoints, self.deliveries):
                raise ConfigError(f"{reserved} is reserved for a table of its own")
        if self.schema is not None:
            validate_schema_name(self.schema)

    @property
    def scope(self) -> str:
        """The key of this table pair in the schema-version table."""
        return f"{self.endpoints},{self.deliveries}"

    def qualified(self, table: str) -> str:
        """``table`` quoted, and schema-qualified when a schema is set."""
        return f"{quote(self.schema)}.{quote(table)}" if self.schema else quote(table)


_DEFAULT_SCOPE = TableNames().scope
_IDENTIFIERS = re.compile(
    r"'(?P<scope>" + re.escape(_DEFAULT_SCOPE) + r")'"
    r"|\bidx_kmsg_webhook_(?P<indexed>endpoints|deliveries)_(?P<suffix>\w+)\b"
    # Names derived from a table's: its CHECK constraint's, a table it is rebuilt in, the
    # sequence of its ordered deliveries.
    r"|\bkmsg_webhook_(?P<derived>endpoints|deliveries)_(?P<part>status_check|rebuild|ordering_seq)\b"
    r"|\b(?P<table>kmsg_webhook_(?:endpoints|deliveries|schema_version|message_tracking|message_jobs))\b"
)


def render(sql: str, names: TableNames) -> str:
    """``sql`` with the default identifiers replaced by ``names`` (quoted, schema-qualified)."""
    tables = {
        DEFAULT_ENDPOINT_TABLE: names.endpoints,
        DEFAULT_DELIVERY_TABLE: names.deliveries,
        VERSION_TABLE: VERSION_TABLE,
        TRACKING_TABLE: TRACKING_TABLE,
        JOBS_TABLE: JOBS_TABLE,
    }

    def replace(match: re.Match[str]) -> str:
        if match["scope"]:
            return f"'{names.scope}'"
        if match["indexed"]:
            table = tables[f"kmsg_webhook_{match['indexed']}"]
            return quote(f"idx_{table}_{match['suffix']}")
        if match["derived"]:
            name = f"{tables['kmsg_webhook_' + match['derived']]}_{match['part']}"
            # A sequence lives in the schema; a constraint name never is qualified, and a
            # rebuild table is SQLite's (no schema).
            return names.qualified(name) if match["part"] == "ordering_seq" else quote(name)
        return names.qualified(tables[match["table"]])

    return _IDENTIFIERS.sub(replace, sql)


def _read(*parts: str) -> str:
    return resources.files(__package__).joinpath("sql", *parts).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change: ``migrations/<dialect>/<version>_<name>.sql``."""

    version: int
    description: str
    sql: str


@cache
def migrations(dialect: Dialect) -> tuple[Migration, ...]:
    """The dialect's migrations in version order (numbers must run 1, 2, 3, ... without gaps)."""
    folder = resources.files(__package__).joinpath("sql", "migrations", dialect)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"packaged {dialect} migrations are not numbered 1..n: {found}")
    return tuple(found)


def schema_version(dialect: Dialect) -> int:
    """The newest schema version this code knows."""
    return migrations(dialect)[-1].version


#: The query families whose SQLite file D1 runs too (the messaging stores'): on Postgres they
#: start from that file and replace only what Postgres words differently.
_FROM_SQLITE = frozenset({"jobs", "tracking"})


@cache
def queries(dialect: Dialect, family: str = "") -> dict[str, str]:
    """Named queries (``-- name: x`` headers) from ``queries/<dialect>.sql``, or
    ``queries/<family>.<dialect>.sql``. Later files override a name: the webhook family starts
    from ``queries/shared.sql``, the text both dialects run; on Postgres a messaging family
    starts from its SQLite file (what D1 runs too) and replaces what Postgres words differently."""
    if not family:
        files = ["shared.sql", f"{dialect}.sql"]
    elif dialect == "postgresql" and family in _FROM_SQLITE:
        files = [f"{family}.sqlite.sql", f"{family}.postgresql.sql"]
    else:
        files = [f"{family}.{dialect}.sql"]
    found: dict[str, str] = {}
    for file in files:
        text = _read("queries", file)
        for match in re.finditer(r"^-- name: (\w+)\n(.*?)(?=^-- name:|\Z)", text, re.S | re.M):
            found[match[1]] = match[2].strip().rstrip(";")
    return found


def without_comments(sql: str) -> str:
    """``sql`` without its ``--`` comment lines (a ``:name`` in one is no parameter)."""
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


#: A ``:name`` parameter (not a ``::`` cast).
NAMED_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def numbered(sql: str, mark: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` with its ``:name`` parameters numbered ``<mark>1``, ``<mark>2``... in order of
    first use, for a driver that binds by position only (asyncpg ``$``, D1 ``?``); and the
    names, in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"{mark}{names.index(match[1]) + 1}"

    return NAMED_PARAMETER.sub(number, sql), tuple(names)


def schema_sql(
    dialect: Dialect,
    *,
    endpoint_table: str | None = None,
    delivery_table: str | None = None,
    schema: str | None = None,
) -> str:
    """The full current schema as one script, for the given names: the numbered migrations in
    order, then the rows recording their versions (what a store applies to an empty database).

    Apply it yourself when you manage DDL with your own tooling, then run stores with
    ``initialize_schema=False``; ``kmsg-webhook schema --dialect ...`` prints it.
    """
    if dialect == "sqlite" and schema is not None:
        raise ConfigError("SQLite has no schemas")
    names = TableNames(
        DEFAULT_ENDPOINT_TABLE if endpoint_table is None else endpoint_table,
        DEFAULT_DELIVERY_TABLE if delivery_table is None else delivery_table,
        schema,
    )
    applied = migrations(dialect)
    # Validated identifiers and \w+ descriptions: safe as literals.
    versions = ",\n       ".join(
        f"('{names.scope}', {m.version}, '{m.description}')" for m in applied
    )
    return "\n\n".join(
        [
            f"-- kmsg-webhook schema, {dialect}, version {applied[-1].version}: migrations "
            f"0001 to {applied[-1].version:04d}, then their version rows.",
            *(render(m.sql, names).strip() for m in applied),
            f"INSERT INTO {names.qualified(VERSION_TABLE)} (scope, version, description)\n"
            f"VALUES {versions};\n",
        ]
    )


def split_statements(script: str) -> list[str]:
    """Split a script of ``;``-terminated statements (no ``;`` inside literals, by convention)."""
    statements = []
    for chunk in re.split(r";[ \t]*(?:\n|\Z)", script):
        body = "\n".join(
            line for line in chunk.splitlines() if not line.lstrip().startswith("--")
        ).strip()
        if body:
            statements.append(body)
    return statements
