"""SQLAlchemy Core views of the tables, for the queries one code path serves on both dialects.

These definitions only build queries; the DDL is the reviewed SQL in ``migrations/``. Two column
types carry the dialect differences: :class:`Timestamp` (``timestamptz`` in Postgres, epoch
milliseconds in SQLite) and :class:`Json` (``jsonb`` in Postgres, JSON text in SQLite).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from ..rows import dumps, from_millis, loads, to_millis
from ..sqlfiles import TableNames


class Timestamp(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes: ``timestamptz`` in Postgres, integer epoch milliseconds in SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        return to_millis(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, int):
            return from_millis(value)
        assert isinstance(value, datetime)
        return value


class Json(sa.types.TypeDecorator[Any]):
    """A JSON document: ``jsonb`` in Postgres, compact JSON text in SQLite."""

    impl = sa.Text()
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return dumps(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else loads(value)


@dataclass(frozen=True, slots=True)
class Tables:
    """The endpoint and delivery tables under their configured names."""

    endpoints: sa.Table
    deliveries: sa.Table


def build_tables(names: TableNames) -> Tables:
    metadata = sa.MetaData(schema=names.schema)
    endpoints = sa.Table(
        names.endpoints,
        metadata,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("description", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("events_json", Json, nullable=False),
        sa.Column("headers_json", Json, nullable=False),
        sa.Column("secret", sa.Text),
        sa.Column("previous_secrets_json", Json, nullable=False),
        sa.Column("retry_config_json", Json),
        sa.Column("filters_json", Json),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("last_triggered_at", Timestamp),
        sa.Column("disabled_reason", sa.Text),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("failing_since", Timestamp),
        sa.Column("last_success_at", Timestamp),
        sa.Column("client_cert", sa.Text),
        sa.Column("client_key", sa.Text),
        sa.Column("ordered", sa.Boolean, nullable=False),
    )
    deliveries = sa.Table(
        names.deliveries,
        metadata,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("endpoint_id", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts_json", Json, nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("last_latency_ms", sa.Float),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("next_attempt_at", Timestamp),
        sa.Column("completed_at", Timestamp),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires_at", Timestamp),
        sa.Column("to_hash", sa.Text),
        sa.Column("from_hash", sa.Text),
        sa.Column("ordering_key", sa.Text),
    )
    return Tables(endpoints=endpoints, deliveries=deliveries)
