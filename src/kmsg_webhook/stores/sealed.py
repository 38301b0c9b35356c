"""Field crypto around any persistence: ``with_field_crypto(persistence, config)``.

The wrappers implement the store protocol over another backend's stores, so every backend
(memory, SQLite, Postgres, D1) gets the same behaviour: values are sealed before they are
written and opened after they are read. Everything else passes through unchanged, including
the maintenance operations (``scan``, ``rewrite_payloads``, ``rewrite_sealed``), which work on
values as stored.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Collection, Sequence
from datetime import datetime

from ..crypto.config import FailMode, FieldCryptoConfig
from ..crypto.fields import FieldCrypto
from ..errors import ConfigError, FieldCryptoError
from ..models import (
    AttemptOutcome,
    DeliveryActivity,
    DeliveryFilter,
    DeliveryPage,
    DeliveryStats,
    DeliveryStatus,
    EndpointList,
    PayloadRewrite,
    QueueStats,
    RecordError,
    RetentionCutoffs,
    WebhookDelivery,
    WebhookEndpoint,
)
from .protocol import DeliveryStore, EndpointStore, WebhookPersistence

logger = logging.getLogger("kmsg_webhook.crypto")


def unreadable_outcome(
    delivery_id: str, worker_id: str, error: FieldCryptoError, now: datetime
) -> AttemptOutcome:
    """Settle a claimed delivery that cannot be sent because a value does not decrypt."""
    return AttemptOutcome(
        delivery_id=delivery_id,
        worker_id=worker_id,
        attempt=None,
        status=DeliveryStatus.FAILED,
        next_attempt_at=None,
        completed_at=now,
        error=f"refused: {error}",
    )


class CryptoEndpointStore:
    """Seals secrets and header values on write, opens them on read."""

    def __init__(self, inner: EndpointStore, crypto: FieldCrypto) -> None:
        self.inner = inner
        self.crypto = crypto

    async def add(self, endpoint: WebhookEndpoint) -> None:
        await self.inner.add(self.crypto.seal_endpoint(endpoint))

    async def update(self, endpoint: WebhookEndpoint, *, reset_health: bool = False) -> None:
        await self.inner.update(self.crypto.seal_endpoint(endpoint), reset_health=reset_health)

    async def remove(self, endpoint_id: str) -> bool:
        return await self.inner.remove(endpoint_id)

    async def get(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint opened; a value that does not decrypt raises (closed) or reads as a
        redaction marker (open)."""
        stored = await self.inner.get(endpoint_id)
        return None if stored is None else self.crypto.open_endpoint(stored)

    async def list(self) -> EndpointList:
        """Every endpoint that opens; the others are named in ``errors`` (and, with
        ``fail_mode="open"``, listed with redaction markers)."""
        items: builtins.list[WebhookEndpoint] = []
        errors: builtins.list[RecordError] = []
        keep_unreadable = self.crypto.config.fail_mode is FailMode.OPEN
        for stored in await self.inner.list():
            opened, error = self.crypto.try_open_endpoint(stored)
            if error is not None:
                errors.append(RecordError(stored.id, error))
                logger.warning("endpoint %s: %s", stored.id, error)
                if not keep_unreadable:
                    continue
            items.append(opened)
        return EndpointList(items, errors)

    async def record_health(
        self, endpoint_id: str, *, succeeded: bool, failures: int, at: datetime
    ) -> WebhookEndpoint | None:
        stored = await self.inner.record_health(
            endpoint_id, succeeded=succeeded, failures=failures, at=at
        )
        return None if stored is None else self.crypto.open_endpoint(stored)

    async def rewrite_sealed(
        self, endpoint_id: str, *, expected: WebhookEndpoint, replacement: WebhookEndpoint
    ) -> bool:
        return await self.inner.rewrite_sealed(
            endpoint_id, expected=expected, replacement=replacement
        )


class CryptoDeliveryStore:
    """Seals payloads (and sets lookup hashes) on insert, opens them on read.

    ``claim`` opens strictly: a claimed row that does not decrypt is settled ``failed`` with
    the reason (no request can be made for it) and is not returned.
    """

    def __init__(self, inner: DeliveryStore, crypto: FieldCrypto) -> None:
        self.inner = inner
        self.crypto = crypto

    async def insert_many(
        self, deliveries: Sequence[WebhookDelivery], *, connection: object | None = None
    ) -> builtins.list[str]:
        seal = self.crypto.seal_delivery
        return await self.inner.insert_many([seal(d) for d in deliveries], connection=connection)

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        exclude_endpoints: Collection[str] = (),
    ) -> builtins.list[WebhookDelivery]:
        claimed = await self.inner.claim(
            worker_id=worker_id,
            now=now,
            lease_until=lease_until,
            limit=limit,
            exclude_endpoints=exclude_endpoints,
        )
        opened: builtins.list[WebhookDelivery] = []
        refused: builtins.list[AttemptOutcome] = []
        for stored in claimed:
            delivery, error = self.crypto.try_open_delivery(stored)
            if error is None:
                opened.append(delivery)
            else:
                logger.error("delivery %s settled failed: %s", stored.id, error)
                refused.append(unreadable_outcome(stored.id, worker_id, error, now))
        if refused:
            await self.inner.record(refused)
        return opened

    async def record(self, outcomes: Sequence[AttemptOutcome]) -> int:
        return await self.inner.record(outcomes)

    async def release(self, delivery_ids: Sequence[str], *, worker_id: str) -> None:
        await self.inner.release(delivery_ids, worker_id=worker_id)

    async def get(self, delivery_id: str) -> WebhookDelivery | None:
        stored = await self.inner.get(delivery_id)
        return None if stored is None else self.crypto.open_delivery(stored)

    async def list(
        self, filter: DeliveryFilter, *, limit: int = 100, cursor: str | None = None
    ) -> DeliveryPage:
        """A page of opened rows; rows that do not open are in ``errors`` (see
        :class:`~kmsg_webhook.models.DeliveryPage`). The cursor still moves past them."""
        page = await self.inner.list(filter, limit=limit, cursor=cursor)
        items: builtins.list[WebhookDelivery] = []
        errors = list(page.errors)
        keep_unreadable = self.crypto.config.fail_mode is FailMode.OPEN
        for stored in page.items:
            delivery, error = self.crypto.try_open_delivery(stored)
            if error is not None:
                errors.append(RecordError(stored.id, error))
                if not keep_unreadable:
                    continue
            items.append(delivery)
        return DeliveryPage(items=tuple(items), next_cursor=page.next_cursor, errors=tuple(errors))

    async def stats(self, filter: DeliveryFilter) -> DeliveryStats:
        return await self.inner.stats(filter)

    async def queue_stats(self, *, now: datetime) -> QueueStats:
        return await self.inner.queue_stats(now=now)

    async def activity(self, *, since: datetime, now: datetime) -> DeliveryActivity:
        return await self.inner.activity(since=since, now=now)

    async def requeue(
        self, filter: DeliveryFilter, *, now: datetime, ids: Sequence[str] | None = None
    ) -> int:
        return await self.inner.requeue(filter, now=now, ids=ids)

    async def purge(self, *, older_than: datetime) -> int:
        return await self.inner.purge(older_than=older_than)

    async def purge_finished(self, cutoffs: RetentionCutoffs, *, limit: int) -> int:
        return await self.inner.purge_finished(cutoffs, limit=limit)

    async def scan(
        self, *, after: str | None = None, limit: int = 500
    ) -> builtins.list[WebhookDelivery]:
        return await self.inner.scan(after=after, limit=limit)

    async def rewrite_payloads(self, rewrites: Sequence[PayloadRewrite]) -> int:
        return await self.inner.rewrite_payloads(rewrites)


def with_field_crypto(
    persistence: WebhookPersistence, config: FieldCryptoConfig | FieldCrypto
) -> WebhookPersistence:
    """``persistence`` with field crypto on: same ``init``/``close``, wrapped stores."""
    if field_crypto_of(persistence) is not None:
        raise ConfigError("this persistence already has field crypto")
    crypto = config if isinstance(config, FieldCrypto) else FieldCrypto(config)
    return WebhookPersistence(
        endpoint_store=CryptoEndpointStore(persistence.endpoint_store, crypto),
        delivery_store=CryptoDeliveryStore(persistence.delivery_store, crypto),
        init=persistence.init,
        close=persistence.close,
        watch=persistence.watch,
        retry_timeout=persistence.retry_timeout,
    )


def field_crypto_of(persistence: WebhookPersistence) -> FieldCrypto | None:
    """The :class:`FieldCrypto` a persistence's stores apply, or ``None``."""
    for store in (persistence.endpoint_store, persistence.delivery_store):
        if isinstance(store, CryptoEndpointStore | CryptoDeliveryStore):
            return store.crypto
    return None


def stored_view(persistence: WebhookPersistence) -> WebhookPersistence:
    """The same persistence without the crypto wrappers: values exactly as stored."""
    endpoints = persistence.endpoint_store
    deliveries = persistence.delivery_store
    return WebhookPersistence(
        endpoint_store=endpoints.inner if isinstance(endpoints, CryptoEndpointStore) else endpoints,
        delivery_store=deliveries.inner
        if isinstance(deliveries, CryptoDeliveryStore)
        else deliveries,
        init=persistence.init,
        close=persistence.close,
        watch=persistence.watch,
        retry_timeout=persistence.retry_timeout,
    )
