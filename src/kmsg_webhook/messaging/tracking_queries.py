"""The tracking store's operations over named queries, shared by the SQL and D1 stores.

Both run the same query text (``queries/tracking.<dialect>.sql``); they differ only in how a
statement is executed and how a time is bound, which each store supplies (``read``, ``write``,
``filtered``, ``bound``).
"""

from __future__ import annotations

import builtins
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

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

S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)


class Bindable(Protocol[S_co]):
    def bind(self, values: Mapping[str, Any]) -> S_co: ...


class TrackingQueries(Generic[S]):
    """``TrackingStore``'s methods other than the claim, on a store's statement type ``S``.

    A store class lists its base (which runs statements) before this one, so its ``read``,
    ``write`` and ``filtered`` come first in the method order."""

    _codec: TrackingCodec
    _upsert: Bindable[S]
    _get: Bindable[S]
    _save: Bindable[S]
    _release: Bindable[S]

    async def read(self, statement: S) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def write(self, statements: Sequence[S]) -> int:
        raise NotImplementedError

    def filtered(self, name: str, values: Mapping[str, Any], **fill: str) -> S:
        raise NotImplementedError

    def bound(self, value: datetime) -> Any:
        """A time as the database compares it exactly."""
        raise NotImplementedError

    async def upsert(self, record: TrackingRecord) -> None:
        await self.write([self._upsert.bind(self._codec.to_row(record).values())])

    async def get(self, message_id: str) -> TrackingRecord | None:
        found = await self.read(self._get.bind({"message_id": message_id}))
        return self._codec.from_row(row_from_mapping(found[0])) if found else None

    async def save(
        self, record: TrackingRecord, *, worker_id: str, keep_lease: bool = False
    ) -> bool:
        return await self._save_row(self._codec.to_row(record), worker_id, keep_lease)

    async def _save_row(self, row: TrackingRow, worker_id: str, keep_lease: bool) -> bool:
        values = row.values()
        for name in LEASE_COLUMNS:
            values.pop(name)
        params = {**values, "worker_id": worker_id, "keep_lease": keep_lease}
        return await self.write([self._save.bind(params)]) > 0

    async def release(self, message_ids: Sequence[str], *, worker_id: str) -> None:
        if message_ids:
            params = {"worker_id": worker_id, "message_ids": list(message_ids)}
            await self.write([self._release.bind(params)])

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
        rows = await self.read(self.filtered("list_records", params, order=order))
        return [self._codec.from_row(row_from_mapping(row)) for row in rows]

    async def count_records(self, filter: TrackingFilter = ALL_RECORDS) -> int:
        [row] = await self.read(self.filtered("count_records", self._filter(filter)))
        return int(row["n"])

    async def count_by(
        self, filter: TrackingFilter, by: Sequence[TrackingGroup]
    ) -> dict[tuple[str, ...], int]:
        groups = check_groups(by)
        counts: Counter[tuple[str, ...]] = Counter()
        for row in await self.read(self.filtered("count_by", self._filter(filter))):
            counts[tuple(str(row[g.value]) for g in groups)] += int(row["n"])
        return dict(counts)

    async def purge(self, *, statuses: Collection[DeliveryStatus], older_than: datetime) -> int:
        query = purgeable(statuses, older_than)
        if query is None:
            return 0
        return await self.write([self.filtered("purge", self._filter(query))])

    def _filter(self, f: TrackingFilter) -> dict[str, Any]:
        return filter_parameters(f, self._codec, self.bound)
