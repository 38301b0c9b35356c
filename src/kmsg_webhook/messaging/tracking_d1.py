"""Delivery tracking on Cloudflare D1, in the webhook store's D1 database.

Records live in ``kmsg_webhook_message_tracking`` (or the URL's ``tracking_table``), made by
the SQLite backend's migration 0007; every query is the SQLite dialect's
(``stores/sql/queries/tracking.sqlite.sql``). Claims, saves and releases are one statement
each, so two reconcilers never hold the same record. A claim whose answer is lost leaves its
records leased until the lease expires; another claim then takes them.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from ..crypto.fields import FieldCrypto
from ..stores.d1.client import D1Statement
from ..stores.d1.queries import D1Query
from ..stores.rows import ceil_millis
from ..stores.sqlfiles import TRACKING_TABLE
from .d1_store import D1StoreBase
from .tracking_queries import TrackingQueries
from .tracking_records import TrackingRecord
from .tracking_rows import TrackingCodec


class D1TrackingStore(D1StoreBase, TrackingQueries[D1Statement]):
    """The tracking store of one D1 database; the protocol is ``TrackingStore``."""

    family = "tracking"
    default_table = TRACKING_TABLE
    migration = 7
    table_option = "tracking_table"

    def _prepare(self, crypto: FieldCrypto | None) -> None:
        self._codec = TrackingCodec(crypto)
        q = {
            name: D1Query.of(self.named(name))
            for name in ("claim_due", "upsert", "get", "save", "release")
        }
        self._claim, self._upsert, self._get = q["claim_due"], q["upsert"], q["get"]
        self._save, self._release = q["save"], q["release"]

    async def claim_due(
        self, *, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[TrackingRecord]:
        if limit <= 0:
            return []
        params = {"worker_id": worker_id, "now": now, "lease_until": lease_until, "limit": limit}
        rows = await self.read(self._claim.bind(params))
        return await self._codec.claimed(
            rows, now=now, save_row=lambda row: self._save_row(row, worker_id, False)
        )

    def bound(self, value: datetime) -> Any:
        return ceil_millis(value)
