"""Where delivery tracking keeps its records: the protocol, the memory backend, retention.

Backends: :class:`InMemoryTrackingStore` (here, not durable),
:class:`~kmsg_webhook.messaging.tracking_sql.SqlTrackingStore` (SQLite and PostgreSQL) and
:class:`~kmsg_webhook.messaging.tracking_d1.D1TrackingStore` (Cloudflare D1), in the
``kmsg_webhook_message_tracking`` table of the webhook store's database. Open one from the same
URL as the webhook stores with :func:`tracking_store_from_url`. Every backend passes
``tests/conformance/test_tracking_store_conformance.py``.

The reconciler works like the webhook dispatcher: it *claims* due checks under a lease
(several processes may run it), and *saves* a record only while its lease holds.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from ..crypto.config import FieldCryptoConfig
from ..crypto.fields import FieldCrypto
from ..errors import ConfigError
from ..stores.url import D1_SCHEMES, resolve_url, scheme_of
from .tracking_records import ApiAttemptStatus, TrackingRecord
from .tracking_rows import LEASE_COLUMNS, TrackingCodec, TrackingRow
from .types import DeliveryStatus, MessageType

#: Statuses the reconciler still checks.
POLLED_STATUSES = (DeliveryStatus.PENDING, DeliveryStatus.SENT)
_ATTEMPTING = ApiAttemptStatus.ATTEMPTING.value


class TrackingGroup(StrEnum):
    """What :meth:`TrackingStore.count_by` groups by."""

    PROVIDER_ID = "provider_id"
    TYPE = "type"
    STATUS = "status"


class TrackingOrder(StrEnum):
    """What :meth:`TrackingStore.list_records` sorts by."""

    REQUESTED_AT = "requested_at"
    STATUS_UPDATED_AT = "status_updated_at"


@dataclass(frozen=True, slots=True)
class TrackingFilter:
    """Records matching every given field. ``*_from`` bounds are inclusive, ``*_before``
    exclusive. ``to`` finds a recipient (by its keyed hash when field crypto hashes it).
    ``fallback_in_flight``: ``True`` only records whose fallback is being sent (``attempting``),
    ``False`` every other record."""

    message_id: str | None = None
    provider_id: str | None = None
    provider_message_id: str | None = None
    type: MessageType | None = None
    statuses: tuple[DeliveryStatus, ...] = ()
    to: str | None = None
    requested_from: datetime | None = None
    requested_before: datetime | None = None
    updated_from: datetime | None = None
    updated_before: datetime | None = None
    fallback_in_flight: bool | None = None


#: The filter that matches every record.
ALL_RECORDS = TrackingFilter()


class TrackingStore(Protocol):
    """Tracking records by message id, with leased claims for the reconciler."""

    async def init(self) -> None:
        """Connect and create (migrate) the table; idempotent. Other calls do it first."""

    async def close(self) -> None:
        """Release connections (a store opened by URL owns its database)."""

    async def upsert(self, record: TrackingRecord) -> None:
        """Insert, or replace the record with this message id (keeping any lease on it)."""

    async def get(self, message_id: str) -> TrackingRecord | None:
        """The record, or ``None``."""

    async def claim_due(
        self, *, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[TrackingRecord]:
        """Lease up to ``limit`` records that need the reconciler, earliest check first.

        Claimable: not leased (or the lease expired) and either still polled (PENDING or
        SENT) with ``next_check_at <= now``, or with a fallback left ``attempting`` (its
        sender died mid-send).
        """

    async def save(
        self, record: TrackingRecord, *, worker_id: str, keep_lease: bool = False
    ) -> bool:
        """Write ``record`` only while ``worker_id`` holds its lease; drop the lease unless
        ``keep_lease``. Returns whether it was written."""

    async def release(self, message_ids: Sequence[str], *, worker_id: str) -> None:
        """Give back leases ``worker_id`` holds without writing anything."""

    async def list_records(
        self,
        filter: TrackingFilter = ALL_RECORDS,
        *,
        limit: int = 100,
        offset: int = 0,
        order_by: TrackingOrder = TrackingOrder.REQUESTED_AT,
        descending: bool = True,
    ) -> list[TrackingRecord]:
        """A page of matching records (ties broken by message id in the same direction)."""

    async def count_records(self, filter: TrackingFilter = ALL_RECORDS) -> int:
        """How many records match."""

    async def count_by(
        self, filter: TrackingFilter, by: Sequence[TrackingGroup]
    ) -> dict[tuple[str, ...], int]:
        """Matching records counted per value of ``by`` (keys in the order of ``by``)."""

    async def purge(self, *, statuses: Collection[DeliveryStatus], older_than: datetime) -> int:
        """Delete records in ``statuses`` (terminal only) requested before ``older_than``,
        except those with a fallback in flight; returns how many."""


def check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise ConfigError("limit and offset must be >= 0")


def check_groups(by: Sequence[TrackingGroup]) -> tuple[TrackingGroup, ...]:
    groups = tuple(TrackingGroup(b) for b in by)
    if not groups or len(set(groups)) != len(groups):
        raise ConfigError("count_by needs one or more distinct fields")
    return groups


def check_purgeable(statuses: Collection[DeliveryStatus]) -> list[str]:
    """The status values to purge; a status still polled would delete work, so it is refused."""
    chosen = sorted({DeliveryStatus(s) for s in statuses})
    polled = [s.value for s in chosen if not s.is_terminal]
    if polled:
        raise ConfigError(f"cannot purge records still being tracked: {', '.join(polled)}")
    return [s.value for s in chosen]


def purgeable(statuses: Collection[DeliveryStatus], older_than: datetime) -> TrackingFilter | None:
    """What :meth:`TrackingStore.purge` deletes, as a filter (``None``: nothing, no status
    given). Counting with it tells exactly what a purge would take."""
    chosen = check_purgeable(statuses)
    if not chosen:
        return None
    return TrackingFilter(
        statuses=tuple(DeliveryStatus(s) for s in chosen),
        requested_before=older_than,
        fallback_in_flight=False,
    )


# -- retention -------------------------------------------------------------------------------------


class RetentionPreset(StrEnum):
    """Retention presets, named for what they keep.

    ``ops-logs``: every finished record 90 days (operations logs). ``telecom-metadata``: one
    year (communication metadata). ``billing-evidence``: five years (evidence for billing
    disputes). ``failures-longer``: delivered records 30 days, failed/unknown/cancelled one
    year (enough to answer "why did this customer not get it").
    """

    OPS_LOGS = "ops-logs"
    TELECOM_METADATA = "telecom-metadata"
    BILLING_EVIDENCE = "billing-evidence"
    FAILURES_LONGER = "failures-longer"


TERMINAL_STATUSES = tuple(s for s in DeliveryStatus if s.is_terminal)


def _all_terminal(days: int) -> dict[DeliveryStatus, timedelta]:
    return {status: timedelta(days=days) for status in TERMINAL_STATUSES}


_PRESETS: dict[RetentionPreset, dict[DeliveryStatus, timedelta]] = {
    RetentionPreset.OPS_LOGS: _all_terminal(90),
    RetentionPreset.TELECOM_METADATA: _all_terminal(365),
    RetentionPreset.BILLING_EVIDENCE: _all_terminal(1825),
    RetentionPreset.FAILURES_LONGER: {
        **_all_terminal(365),
        DeliveryStatus.DELIVERED: timedelta(days=30),
    },
}


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long finished records are kept, per status (a status left out is kept forever).

    Age is counted from ``requested_at``. Records still polled, and records whose fallback is
    in flight, are never purged.
    """

    max_age: Mapping[DeliveryStatus, timedelta] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_purgeable(self.max_age)
        for status, age in self.max_age.items():
            if age <= timedelta(0):
                raise ConfigError(f"the retention of {status} must be positive")

    @classmethod
    def preset(cls, name: RetentionPreset | str) -> RetentionPolicy:
        try:
            preset = RetentionPreset(name)
        except ValueError:
            known = ", ".join(p.value for p in RetentionPreset)
            raise ConfigError(f"unknown retention preset {name!r}: use one of {known}") from None
        return cls(dict(_PRESETS[preset]))

    async def apply(self, store: TrackingStore, *, now: datetime) -> int:
        """Purge what the policy no longer keeps; returns how many records went."""
        purged = 0
        for statuses, older_than in self._cutoffs(now):
            purged += await store.purge(statuses=statuses, older_than=older_than)
        return purged

    async def count(self, store: TrackingStore, *, now: datetime) -> int:
        """How many records :meth:`apply` would purge at ``now`` (the same conditions)."""
        due = 0
        for statuses, older_than in self._cutoffs(now):
            query = purgeable(statuses, older_than)
            if query is not None:
                due += await store.count_records(query)
        return due

    def _cutoffs(self, now: datetime) -> list[tuple[list[DeliveryStatus], datetime]]:
        """The statuses kept equally long, with the time before which they go."""
        by_age: dict[timedelta, list[DeliveryStatus]] = {}
        for status, age in self.max_age.items():
            by_age.setdefault(age, []).append(status)
        return [(statuses, now - age) for age, statuses in sorted(by_age.items())]


# -- memory ----------------------------------------------------------------------------------------


class InMemoryTrackingStore:
    """Process-local store (records are lost on restart). Keeps rows as stored, so field
    crypto applies here as on the SQL backends."""

    def __init__(self, *, crypto: FieldCrypto | None = None) -> None:
        self._codec = TrackingCodec(crypto)
        self._rows: dict[str, TrackingRow] = {}

    async def init(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def rows(self) -> list[TrackingRow]:
        """Every row as stored (sealed values are envelopes)."""
        return list(self._rows.values())

    def all(self) -> list[TrackingRecord]:
        return [self._codec.from_row(row) for row in self._rows.values()]

    async def upsert(self, record: TrackingRecord) -> None:
        row = self._codec.to_row(record)
        old = self._rows.get(record.message_id)
        if old is not None:
            row = dataclasses.replace(row, **{name: getattr(old, name) for name in LEASE_COLUMNS})
        self._rows[record.message_id] = row

    async def get(self, message_id: str) -> TrackingRecord | None:
        row = self._rows.get(message_id)
        return None if row is None else self._codec.from_row(row)

    async def claim_due(
        self, *, worker_id: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[TrackingRecord]:
        polled = {s.value for s in POLLED_STATUSES}
        due = [
            row
            for row in self._rows.values()
            if (row.lease_expires_at is None or row.lease_expires_at <= now)
            and (
                (row.status in polled and row.next_check_at <= now)
                or row.fallback_status == _ATTEMPTING
            )
        ]
        due.sort(key=lambda r: (r.next_check_at, r.message_id))
        claimed = []
        for row in due[: max(0, limit)]:
            leased = dataclasses.replace(row, lease_owner=worker_id, lease_expires_at=lease_until)
            self._rows[row.message_id] = leased
            claimed.append(leased.values())
        return await self._codec.claimed(
            claimed, now=now, save_row=lambda row: self._save_row(row, worker_id, False)
        )

    async def save(
        self, record: TrackingRecord, *, worker_id: str, keep_lease: bool = False
    ) -> bool:
        return await self._save_row(self._codec.to_row(record), worker_id, keep_lease)

    async def _save_row(self, row: TrackingRow, worker_id: str, keep_lease: bool) -> bool:
        old = self._rows.get(row.message_id)
        if old is None or old.lease_owner != worker_id:
            return False
        if keep_lease:
            row = dataclasses.replace(
                row, lease_owner=old.lease_owner, lease_expires_at=old.lease_expires_at
            )
        self._rows[row.message_id] = row
        return True

    async def release(self, message_ids: Sequence[str], *, worker_id: str) -> None:
        for message_id in message_ids:
            row = self._rows.get(message_id)
            if row is not None and row.lease_owner == worker_id:
                self._rows[message_id] = dataclasses.replace(
                    row, lease_owner=None, lease_expires_at=None
                )

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
        column = TrackingOrder(order_by).value
        rows = sorted(
            self._matching(filter),
            key=lambda r: (getattr(r, column), r.message_id),
            reverse=descending,
        )
        return [self._codec.from_row(row) for row in rows[offset : offset + limit]]

    async def count_records(self, filter: TrackingFilter = ALL_RECORDS) -> int:
        return sum(1 for _ in self._matching(filter))

    async def count_by(
        self, filter: TrackingFilter, by: Sequence[TrackingGroup]
    ) -> dict[tuple[str, ...], int]:
        groups = check_groups(by)
        counts = Counter(
            tuple(str(getattr(row, g.value)) for g in groups) for row in self._matching(filter)
        )
        return dict(counts)

    async def purge(self, *, statuses: Collection[DeliveryStatus], older_than: datetime) -> int:
        query = purgeable(statuses, older_than)
        gone = [] if query is None else [row.message_id for row in self._matching(query)]
        for message_id in gone:
            del self._rows[message_id]
        return len(gone)

    def _matching(self, f: TrackingFilter) -> Iterable[TrackingRow]:
        recipient = None if f.to is None else self._codec.recipient_filter(f.to)
        statuses = {s.value for s in f.statuses}
        for row in self._rows.values():
            if (
                (f.message_id is not None and row.message_id != f.message_id)
                or (f.provider_id is not None and row.provider_id != f.provider_id)
                or (
                    f.provider_message_id is not None
                    and row.provider_message_id != f.provider_message_id
                )
                or (f.type is not None and row.type != f.type.value)
                or (statuses and row.status not in statuses)
                or (recipient is not None and getattr(row, recipient[0]) != recipient[1])
                or (f.requested_from is not None and row.requested_at < f.requested_from)
                or (f.requested_before is not None and row.requested_at >= f.requested_before)
                or (f.updated_from is not None and row.status_updated_at < f.updated_from)
                or (f.updated_before is not None and row.status_updated_at >= f.updated_before)
                or (
                    f.fallback_in_flight is not None
                    and (row.fallback_status == _ATTEMPTING) != f.fallback_in_flight
                )
            ):
                continue
            yield row


# -- opening by URL --------------------------------------------------------------------------------


def tracking_store_from_url(
    url: str | None = None,
    *,
    crypto: FieldCryptoConfig | FieldCrypto | None = None,
    initialize_schema: bool = True,
) -> TrackingStore:
    """The tracking store in the database a webhook store URL names (nothing connects yet).

    ``url`` defaults to ``$KMSG_WEBHOOK_STORE_URL``, then ``memory://``. SQLite, PostgreSQL and
    D1 keep records in ``kmsg_webhook_message_tracking``, created by the same numbered
    migrations as the webhook tables (a D1 URL may rename it with ``tracking_table``).
    ``crypto`` seals recipients, senders and message content.
    """
    field_crypto = (
        None
        if crypto is None
        else crypto
        if isinstance(crypto, FieldCrypto)
        else FieldCrypto(crypto)
    )
    url = resolve_url(url)
    scheme = scheme_of(url)
    if scheme == "memory":
        return InMemoryTrackingStore(crypto=field_crypto)
    if scheme in D1_SCHEMES:
        from .tracking_d1 import D1TrackingStore

        return D1TrackingStore.from_url(
            url, crypto=field_crypto, initialize_schema=initialize_schema
        )
    from ..stores.url import database_from_url
    from .tracking_sql import SqlTrackingStore

    db = database_from_url(url, initialize_schema=initialize_schema)
    return SqlTrackingStore(db, crypto=field_crypto, owns_database=True)


def filter_parameters(
    f: TrackingFilter, codec: TrackingCodec, bound: Callable[[datetime], Any]
) -> dict[str, Any]:
    """The parameters of the tracking queries' ``filter`` conditions (``None`` does not
    filter); ``bound`` turns a time bound into what the database compares exactly."""
    recipient: dict[str, str | None] = {"recipient": None, "recipient_hash": None}
    if f.to is not None:
        column, value = codec.recipient_filter(f.to)
        recipient[column] = value
    times = {
        "requested_from": f.requested_from,
        "requested_before": f.requested_before,
        "updated_from": f.updated_from,
        "updated_before": f.updated_before,
    }
    return {
        "message_id": f.message_id,
        "provider_id": f.provider_id,
        "provider_message_id": f.provider_message_id,
        "type": None if f.type is None else f.type.value,
        "statuses": [s.value for s in f.statuses] or None,
        **recipient,
        **{name: None if t is None else bound(t) for name, t in times.items()},
        "fallback_in_flight": None if f.fallback_in_flight is None else int(f.fallback_in_flight),
    }
