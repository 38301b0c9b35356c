"""Delivery tracking on SQLite and PostgreSQL, in the webhook store's database.

:class:`SqlTrackingStore` uses a :class:`~kmsg_webhook.stores.sql.base.SqlDatabase` (its pool,
retries and migrations): records live in ``kmsg_webhook_message_tracking``, created by
migration 0007. Every query is reviewed SQL: ``sql/queries/tracking.sqlite.sql`` (the D1
store's too), with ``tracking.postgresql.sql`` replacing the ones Postgres words differently.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..crypto.fields import FieldCrypto
from ..stores.sql.base import SqlDatabase
from .sql_store import SqlStoreBase
from .tracking_queries import TrackingQueries
from .tracking_records import TrackingRecord
from .tracking_rows import TrackingCodec


class SqlTrackingStore(SqlStoreBase, TrackingQueries[sa.TextClause]):
    """The tracking store of one SQL database; the protocol is ``TrackingStore``.

    ``owns_database``: :meth:`close` closes the database too (a store opened by URL).
    """

    family = "tracking"

    def __init__(
        self, db: SqlDatabase, *, crypto: FieldCrypto | None = None, owns_database: bool = False
    ) -> None:
        super().__init__(db, owns_database=owns_database)
        self._codec = TrackingCodec(crypto)
        self._claim, self._upsert, self._get, self._save, self._release = (
            self.named(name) for name in ("claim_due", "upsert", "get", "save", "release")
        )

    async def claim_due(
        self, *, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[TrackingRecord]:
        if limit <= 0:
            return []
        params = {"worker_id": worker_id, "now": now, "lease_until": lease_until, "limit": limit}
        rows = await self.returning([self._claim.bind(params)])
        return await self._codec.claimed(
            rows, now=now, save_row=lambda row: self._save_row(row, worker_id, False)
        )

    def bound(self, value: datetime) -> Any:
        return self._db.bound(value)
