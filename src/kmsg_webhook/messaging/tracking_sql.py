"""Delivery tracking on SQLite and PostgreSQL, in the webhook store's database.

:class:`SqlTrackingStore` uses a :class:`~kmsg_webhook.stores.sql.base.SqlDatabase` (its pool,
retries and migrations): records live in ``kmsg_webhook_message_tracking``, created by
migration 0007. The claim is reviewed SQL (``sql/queries/tracking.<dialect>.sql``); the
listings, counts and writes are SQLAlchemy Core, one code path for both dialects.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..crypto.fields import FieldCrypto
from ..stores.sql.base import SqlDatabase
from ..stores.sql.tables import Timestamp
from ..stores.sqlfiles import TRACKING_TABLE
from .sql_store import SqlStoreBase
from .tracking_records import TrackingRecord
from .tracking_rows import LEASE_COLUMNS, TrackingCodec, TrackingRow, row_from_mapping
from .tracking_store import (
    ALL_RECORDS,
    TrackingFilter,
    TrackingGroup,
    TrackingOrder,
    check_groups,
    check_page,
    check_purgeable,
)
from .types import DeliveryStatus


def tracking_table(schema: str | None) -> sa.Table:
    """The tracking table (queries only; the DDL is migration 0007)."""
    text, stamp = sa.Text, Timestamp
    return sa.Table(
        TRACKING_TABLE,
        sa.MetaData(schema=schema),
        sa.Column("message_id", text, primary_key=True),
        sa.Column("provider_id", text, nullable=False),
        sa.Column("provider_message_id", text),
        sa.Column("type", text, nullable=False),
        sa.Column("recipient", text, nullable=False),
        sa.Column("recipient_hash", text),
        sa.Column("sender", text),
        sa.Column("status", text, nullable=False),
        sa.Column("requested_at", stamp, nullable=False),
        sa.Column("status_updated_at", stamp, nullable=False),
        sa.Column("next_check_at", stamp, nullable=False),
        sa.Column("scheduled_at", stamp),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("last_checked_at", stamp),
        sa.Column("sent_at", stamp),
        sa.Column("delivered_at", stamp),
        sa.Column("failed_at", stamp),
        sa.Column("provider_status_code", text),
        sa.Column("provider_status_message", text),
        sa.Column("last_error_code", text),
        sa.Column("last_error_message", text),
        sa.Column("template_id", text),
        sa.Column("correlation_id", text),
        sa.Column("custom_fields", text),
        sa.Column("failover", text),
        sa.Column("fallback_status", text),
        sa.Column("lease_owner", text),
        sa.Column("lease_expires_at", stamp),
    )


class SqlTrackingStore(SqlStoreBase):
    """The tracking store of one SQL database; the protocol is ``TrackingStore``.

    ``owns_database``: :meth:`close` closes the database too (a store opened by URL).
    """

    def __init__(
        self, db: SqlDatabase, *, crypto: FieldCrypto | None = None, owns_database: bool = False
    ) -> None:
        super().__init__(db, owns_database=owns_database)
        self._codec = TrackingCodec(crypto)
        self._t = tracking_table(db.names.schema)
        self._claim = self.named_query("tracking", "claim_due")

    async def upsert(self, record: TrackingRecord) -> None:
        t = self._t
        values = self._codec.to_row(record).values()
        for name in LEASE_COLUMNS:
            values.pop(name)
        insert = self._db.insert_statement(t).values(values)
        statement = insert.on_conflict_do_update(
            index_elements=[t.c.message_id],
            set_={name: insert.excluded[name] for name in values if name != "message_id"},
        )
        await self.write(statement)

    async def get(self, message_id: str) -> TrackingRecord | None:
        t = self._t
        found = await self._read(sa.select(t).where(t.c.message_id == message_id))
        return found[0] if found else None

    async def claim_due(
        self, *, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[TrackingRecord]:
        if limit <= 0:
            return []
        params = {"worker_id": worker_id, "now": now, "lease_until": lease_until, "limit": limit}
        rows = await self.claim_rows(self._claim, params)
        return await self._codec.claimed(
            rows, now=now, save_row=lambda row: self._save_row(row, worker_id, False)
        )

    async def save(
        self, record: TrackingRecord, *, worker_id: str, keep_lease: bool = False
    ) -> bool:
        return await self._save_row(self._codec.to_row(record), worker_id, keep_lease)

    async def _save_row(self, row: TrackingRow, worker_id: str, keep_lease: bool) -> bool:
        t = self._t
        values = row.values()
        if keep_lease:
            for name in LEASE_COLUMNS:
                values.pop(name)
        statement = (
            sa.update(t)
            .where(t.c.message_id == row.message_id, t.c.lease_owner == worker_id)
            .values(values)
        )
        return await self.write(statement) > 0

    async def release(self, message_ids: Sequence[str], *, worker_id: str) -> None:
        if not message_ids:
            return
        t = self._t
        statement = (
            sa.update(t)
            .where(t.c.message_id.in_(list(message_ids)), t.c.lease_owner == worker_id)
            .values(lease_owner=None, lease_expires_at=None)
        )
        await self.write(statement)

    async def list_records(
        self,
        filter: TrackingFilter = ALL_RECORDS,
        *,
        limit: int = 100,
        offset: int = 0,
        order_by: TrackingOrder = TrackingOrder.REQUESTED_AT,
        descending: bool = True,
    ) -> list[TrackingRecord]:
        check_page(limit, offset)
        t = self._t
        keys = [t.c[TrackingOrder(order_by).value], t.c.message_id]
        query = (
            sa.select(t)
            .where(*self._conditions(filter))
            .order_by(*(k.desc() if descending else k.asc() for k in keys))
            .limit(limit)
            .offset(offset)
        )
        return await self._read(query)

    async def count_records(self, filter: TrackingFilter = ALL_RECORDS) -> int:
        query = sa.select(sa.func.count()).select_from(self._t).where(*self._conditions(filter))

        async def op(conn: AsyncConnection, attempt: int) -> int:
            return int((await conn.execute(query)).scalar_one())

        return await self._db.run(op)

    async def count_by(
        self, filter: TrackingFilter, by: Sequence[TrackingGroup]
    ) -> dict[tuple[str, ...], int]:
        columns = [self._t.c[g.value] for g in check_groups(by)]
        query = (
            sa.select(*columns, sa.func.count()).where(*self._conditions(filter)).group_by(*columns)
        )

        async def op(conn: AsyncConnection, attempt: int) -> dict[tuple[str, ...], int]:
            return {
                tuple(str(v) for v in row[:-1]): int(row[-1]) for row in await conn.execute(query)
            }

        return await self._db.run(op)

    async def purge(self, *, statuses: Collection[DeliveryStatus], older_than: datetime) -> int:
        chosen = check_purgeable(statuses)
        if not chosen:
            return 0
        t = self._t
        statement = sa.delete(t).where(
            t.c.status.in_(chosen),
            t.c.requested_at < self._db.bound(older_than),
            sa.or_(t.c.fallback_status.is_(None), t.c.fallback_status != "attempting"),
        )
        return await self.write(statement)

    # -- helpers -------------------------------------------------------------------------------

    async def _read(self, query: sa.Select[Any]) -> builtins.list[TrackingRecord]:
        return [self._codec.from_row(row_from_mapping(r)) for r in await self.read(query)]

    def _conditions(self, f: TrackingFilter) -> builtins.list[sa.ColumnElement[bool]]:
        t, bound = self._t, self._db.bound
        conditions: builtins.list[sa.ColumnElement[bool]] = []
        for column, value in (
            ("message_id", f.message_id),
            ("provider_id", f.provider_id),
            ("provider_message_id", f.provider_message_id),
            ("type", None if f.type is None else f.type.value),
        ):
            if value is not None:
                conditions.append(t.c[column] == value)
        if f.statuses:
            conditions.append(t.c.status.in_([s.value for s in f.statuses]))
        if f.to is not None:
            column, value = self._codec.recipient_filter(f.to)
            conditions.append(t.c[column] == value)
        if f.requested_from is not None:
            conditions.append(t.c.requested_at >= bound(f.requested_from))
        if f.requested_before is not None:
            conditions.append(t.c.requested_at < bound(f.requested_before))
        if f.updated_from is not None:
            conditions.append(t.c.status_updated_at >= bound(f.updated_from))
        if f.updated_before is not None:
            conditions.append(t.c.status_updated_at < bound(f.updated_before))
        return conditions
