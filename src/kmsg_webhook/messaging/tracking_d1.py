"""Delivery tracking on Cloudflare D1, in the webhook store's D1 database.

Records live in ``kmsg_webhook_message_tracking`` (or the URL's ``tracking_table``), made by
the SQLite backend's migration 0007; every query is the SQLite dialect's
(``stores/sql/queries/tracking.sqlite.sql``). Claims, saves and releases are one statement
each, so two reconcilers never hold the same record. A claim whose answer is lost leaves its
records leased until the lease expires; another claim then takes them.
"""

from __future__ import annotations

import builtins
from collections import Counter
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from ..crypto.fields import FieldCrypto
from ..stores.d1.queries import D1Query
from ..stores.rows import ceil_millis
from ..stores.sqlfiles import TRACKING_TABLE
from .d1_store import D1StoreBase
from .tracking_records import TrackingRecord
from .tracking_rows import LEASE_COLUMNS, TrackingCodec, TrackingRow, row_from_mapping
from .tracking_store import (
    ALL_RECORDS,
    TrackingFilter,
    TrackingGroup,
    TrackingOrder,
    check_groups,
    check_page,
    filter_parameters,
    purgeable,
)
from .types import DeliveryStatus


class D1TrackingStore(D1StoreBase):
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

    async def upsert(self, record: TrackingRecord) -> None:
        await self.run([self._upsert.bind(self._codec.to_row(record).values())])

    async def get(self, message_id: str) -> TrackingRecord | None:
        found = await self.rows(self._get.bind({"message_id": message_id}))
        return self._codec.from_row(row_from_mapping(found[0])) if found else None

    async def claim_due(
        self, *, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> builtins.list[TrackingRecord]:
        if limit <= 0:
            return []
        params = {"worker_id": worker_id, "now": now, "lease_until": lease_until, "limit": limit}
        rows = await self.rows(self._claim.bind(params))
        return await self._codec.claimed(
            rows, now=now, save_row=lambda row: self._save_row(row, worker_id, False)
        )

    async def save(
        self, record: TrackingRecord, *, worker_id: str, keep_lease: bool = False
    ) -> bool:
        return await self._save_row(self._codec.to_row(record), worker_id, keep_lease)

    async def _save_row(self, row: TrackingRow, worker_id: str, keep_lease: bool) -> bool:
        values = row.values()
        for name in LEASE_COLUMNS:
            values.pop(name)
        params = {**values, "worker_id": worker_id, "keep_lease": keep_lease}
        [result] = await self.run([self._save.bind(params)])
        return result.changes > 0

    async def release(self, message_ids: Sequence[str], *, worker_id: str) -> None:
        if message_ids:
            params = {"worker_id": worker_id, "message_ids": list(message_ids)}
            await self.run([self._release.bind(params)])

    async def list_records(
        self,
        filter: TrackingFilter = ALL_RECORDS,
        *,
        limit: int = 100,
        offset: int = 0,
        order_by: TrackingOrder = TrackingOrder.REQUESTED_AT,
        descending: bool = True,
    ) -> builtins.list[TrackingRecord]:
        check_page(limit, offset)
        direction = "DESC" if descending else "ASC"
        order = f"{TrackingOrder(order_by).value} {direction}, message_id {direction}"
        params = {**self._filter(filter), "limit": limit, "offset": offset}
        rows = await self.rows(self.filtered("list_records", params, order=order))
        return [self._codec.from_row(row_from_mapping(row)) for row in rows]

    async def count_records(self, filter: TrackingFilter = ALL_RECORDS) -> int:
        [row] = await self.rows(self.filtered("count_records", self._filter(filter)))
        return int(row["n"])

    async def count_by(
        self, filter: TrackingFilter, by: Sequence[TrackingGroup]
    ) -> dict[tuple[str, ...], int]:
        groups = check_groups(by)
        counts: Counter[tuple[str, ...]] = Counter()
        for row in await self.rows(self.filtered("count_by", self._filter(filter))):
            counts[tuple(str(row[g.value]) for g in groups)] += int(row["n"])
        return dict(counts)

    async def purge(self, *, statuses: Collection[DeliveryStatus], older_than: datetime) -> int:
        query = purgeable(statuses, older_than)
        if query is None:
            return 0
        [result] = await self.run([self.filtered("purge", self._filter(query))])
        return result.changes

    def _filter(self, f: TrackingFilter) -> dict[str, Any]:
        return filter_parameters(f, self._codec, ceil_millis)
