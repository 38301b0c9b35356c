"""Field crypto at the store boundary: the one place values are sealed and opened.

``with_field_crypto(persistence, config)`` wraps another backend's stores, so every backend
(memory, SQLite, Postgres, D1) gets the same behaviour: values are sealed before they are
written and opened after they are read. Everything else passes through unchanged, including
the maintenance operations (``scan``, ``rewrite_payloads``, ``rewrite_sealed``), which work on
values as stored.

:class:`Sealing` is what the runtime and the dispatcher hold instead of any crypto object:
new rows are written through the wrapped store, claimed rows and endpoints are opened through
it before a send, and without keys it refuses sealed values instead of sending them.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

from ..crypto.config import FailMode, FieldCryptoConfig, FieldMode
from ..crypto.envelope import is_sealed
from ..crypto.fields import FieldCrypto
from ..errors import ConfigError, FieldCryptoError, MissingKeysError
from ..events import WebhookEvent
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
#: What ``field_crypto=`` takes: a config, or one already at work.
FieldCryptoOption: TypeAlias = FieldCryptoConfig | FieldCrypto
#: Pending deliveries sampled for sealed payloads (newest first): one page, one query.
SEALED_SAMPLE = 100
#: Endpoints kept opened for sending (or checked to hold nothing sealed), by id.
_OPENED_CACHE_SIZE = 10_000


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
        opened, refused = open_claimed(self.crypto, claimed)
        if refused:
            for stored, error in refused:
                logger.error("delivery %s settled failed: %s", stored.id, error)
            await self.inner.record(
                [unreadable_outcome(d.id, worker_id, error, now) for d, error in refused]
            )
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


def open_claimed(
    crypto: FieldCrypto | None, claimed: Sequence[WebhookDelivery]
) -> tuple[builtins.list[WebhookDelivery], builtins.list[tuple[WebhookDelivery, FieldCryptoError]]]:
    """Claimed rows with their payloads opened strictly, and the rows that do not open, each
    with the reason. Without ``crypto`` every sealed payload is refused."""
    if crypto is None:
        if not any(is_sealed(d.payload) for d in claimed):
            return list(claimed), []
        return [d for d in claimed if not is_sealed(d.payload)], [
            (d, _keyless(f"delivery {d.id}")) for d in claimed if is_sealed(d.payload)
        ]
    opened: builtins.list[WebhookDelivery] = []
    refused: builtins.list[tuple[WebhookDelivery, FieldCryptoError]] = []
    for stored in claimed:
        delivery, error = crypto.try_open_delivery(stored)
        if error is None:
            opened.append(delivery)
        else:
            refused.append((stored, error))
    return opened, refused


def _keyless(what: str) -> FieldCryptoError:
    return FieldCryptoError(
        f"{what} holds encrypted values and this runtime has no field crypto configured "
        "(field_crypto=...)"
    )


class Sealing:
    """Field crypto for one runtime, or its absence: the seam the runtime and the dispatcher
    go through, so neither handles a sealed value itself.

    ``persistence`` reads and writes plaintext (the wrapped stores, when crypto is on);
    ``stored`` is the same persistence as stored, for what only counts or moves rows. New rows
    are written through ``persistence`` (sealed there); claimed rows come back through
    :meth:`open_claimed`, endpoints through :meth:`for_sending`. Without keys, sealed values
    are refused (never sent, never signed with).
    """

    def __init__(
        self, persistence: WebhookPersistence, field_crypto: FieldCryptoOption | None = None
    ) -> None:
        if field_crypto is not None:
            persistence = with_field_crypto(persistence, field_crypto)
        self.persistence = persistence
        #: What field crypto applies (``None``: off).
        self.crypto: FieldCrypto | None = field_crypto_of(persistence)
        self.stored = stored_view(persistence)
        # Endpoints opened for sending, by id, with the stored form they were opened from
        # (the Sender keeps signers keyed by plaintext secrets anyway); without keys, the
        # endpoints checked to hold nothing sealed.
        self._opened: dict[str, tuple[WebhookEndpoint, WebhookEndpoint]] = {}

    def prepare(self, event: WebhookEvent) -> WebhookEvent:
        """The event as it is serialised, sent and stored (``mask`` fields masked)."""
        crypto = self.crypto
        return event if crypto is None else crypto.prepare_event(event)

    def seal_endpoint(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        """The endpoint as stored."""
        crypto = self.crypto
        return endpoint if crypto is None else crypto.seal_endpoint(endpoint)

    def open_endpoint(self, stored: WebhookEndpoint) -> WebhookEndpoint:
        """The endpoint opened strictly (raises :class:`DecryptionError`): what is written
        back is never a marker. Without keys, as stored."""
        crypto = self.crypto
        return stored if crypto is None else crypto.open_endpoint(stored, strict=True)

    def for_sending(self, stored: WebhookEndpoint) -> WebhookEndpoint:
        """The endpoint with the values a send uses opened; raises :class:`FieldCryptoError`
        for a value that does not open, or for any sealed value without keys."""
        cached = self._opened.get(stored.id)
        if cached is not None and cached[0] is stored:
            return cached[1]
        crypto = self.crypto
        if crypto is not None:
            opened = crypto.open_endpoint(stored, strict=True)
        elif _sealed_of(stored):
            raise _keyless(f"endpoint {stored.id}")
        else:
            opened = stored
        if len(self._opened) >= _OPENED_CACHE_SIZE:
            self._opened.clear()
        self._opened[stored.id] = (stored, opened)
        return opened

    def open_claimed(
        self, claimed: Sequence[WebhookDelivery]
    ) -> tuple[
        builtins.list[WebhookDelivery], builtins.list[tuple[WebhookDelivery, FieldCryptoError]]
    ]:
        """See :func:`open_claimed`."""
        return open_claimed(self.crypto, claimed)

    def recipient_hash(self, number: str) -> str:
        """The lookup hash of a phone number; :class:`ConfigError` when recipients are not
        hashed or ``number`` is not one."""
        crypto = self.crypto
        if crypto is None or crypto.config.to is not FieldMode.ENCRYPT_HASH:
            raise ConfigError("recipient lookups need field crypto with to='encrypt+hash'")
        digest = crypto.recipient_hash(number)
        if digest is None:
            raise ConfigError("not a phone number (masked, or no digits)")
        return digest

    async def check_keys(self, endpoints: Sequence[WebhookEndpoint]) -> str | None:
        """Refuse (:class:`MissingKeysError`) to dispatch from a store whose sampled sealed
        values none of the keys open; returns a warning when only some of them do."""
        sample = await sample_sealed(endpoints, self.stored.delivery_store)
        crypto = self.crypto
        if crypto is None:
            if sample.where():
                raise MissingKeysError(
                    f"the store holds sealed values ({sample.where()}) and no field-crypto "
                    f"keys were given: set KMSG_WEBHOOK_KEYS (field_crypto=) to the keys they "
                    f"were sealed with; refusing to dispatch rather than fail every delivery"
                )
            return None
        unknown, openable = unknown_kids(sample, crypto)
        if not unknown:
            return None
        message = (
            f"sealed values in the store ({sample.where()}) use key id(s) "
            f"{', '.join(sorted(unknown))}, which the configured keys lack "
            f"(KMSG_WEBHOOK_KEYS, field_crypto=)"
        )
        if not openable:  # wrong keys altogether: every delivery would fail
            raise MissingKeysError(f"{message}; refusing to dispatch")
        return f"{message}; their deliveries will fail until the key is added"


@dataclass(frozen=True, slots=True)
class SealedSample:
    """Sealed values found in a store: every endpoint's, and the newest pending payloads'."""

    endpoint_values: tuple[str, ...]
    endpoints: int
    payloads: tuple[str, ...]

    def where(self) -> str:
        """Where they are, as a phrase for an error message."""
        found = []
        if self.endpoints:
            found.append(f"{self.endpoints} endpoint(s) with sealed secrets or headers")
        if self.payloads:
            found.append(f"{len(self.payloads)} pending delivery payload(s) among the newest")
        return " and ".join(found)


def _sealed_of(endpoint: WebhookEndpoint) -> list[str]:
    """Every sealed value of an endpoint: those :meth:`Sealing.for_sending` opens."""
    values = [endpoint.secret or "", endpoint.client_key or "", *endpoint.headers.values()]
    values += [retired.secret for retired in endpoint.previous_secrets]
    return [value for value in values if is_sealed(value)]


async def sample_sealed(
    endpoints: Sequence[WebhookEndpoint], deliveries: DeliveryStore
) -> SealedSample:
    """The sealed values of ``endpoints`` and of the newest pending deliveries (as stored).

    Endpoints are all checked; deliveries by one page of the newest pending ones, which are
    what a worker would send first.
    """
    per_endpoint = [_sealed_of(endpoint) for endpoint in endpoints]
    page = await deliveries.list(
        DeliveryFilter(statuses=(DeliveryStatus.PENDING,)), limit=SEALED_SAMPLE
    )
    return SealedSample(
        endpoint_values=tuple(value for values in per_endpoint for value in values),
        endpoints=sum(1 for values in per_endpoint if values),
        payloads=tuple(d.payload for d in page.items if is_sealed(d.payload)),
    )


def unknown_kids(sample: SealedSample, crypto: FieldCrypto) -> tuple[set[str], int]:
    """Key ids of sampled values that ``crypto`` has no key for, and how many values it can
    open."""
    unknown: set[str] = set()
    openable = 0
    for value in (*sample.endpoint_values, *sample.payloads):
        kid = crypto.kid_of(value)
        if kid is not None and crypto.config.keys.key(kid) is None:
            unknown.add(kid)
        else:
            openable += 1
    return unknown, openable
