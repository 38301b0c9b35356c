"""No emit waits longer than its bound, even queued behind batches that fail.

PostgreSQL goes down for real: the store reaches it through a TCP relay on loopback that the
test cuts (every connection dropped, new ones refused) and later restores. Emits made during
the outage end within ``emit_timeout_ms`` with a :class:`StoreError` (their own batch failed)
or an :class:`EmitTimeoutError`; emitting the same events again afterwards stores each once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EmitTimeoutError,
    EndpointInput,
    SecurityOptions,
    StoreError,
    WebhookConfig,
    WebhookEvent,
    WebhookEventType,
    WebhookRuntimeService,
)
from kmsg_webhook.stores.sql.postgres import PostgresDatabase
from support.servers import Receiver
from support.stores import Relay, relayed_postgres_database

EMIT_BOUND_S = 2.5
STORE_RETRY_S = 1.5


@pytest.fixture
async def relayed_postgres() -> AsyncIterator[tuple[Relay, PostgresDatabase]]:
    """A relay in front of the test server, and a store (own schema) reached through it."""
    async with relayed_postgres_database(retry_timeout=STORE_RETRY_S, pool_size=4) as found:
        yield found


def event(n: int) -> WebhookEvent:
    return WebhookEvent(
        id=f"evt_{n}", type=WebhookEventType.MESSAGE_SENT, timestamp=datetime.now(UTC), data={}
    )


async def test_emits_during_an_outage_end_within_their_bound_and_retry_idempotently(
    relayed_postgres: tuple[Relay, PostgresDatabase], receiver: Receiver
) -> None:
    relay, db = relayed_postgres
    config = WebhookConfig(
        batch_size=5, batch_timeout_ms=20, poll_interval_ms=50, emit_timeout_ms=2_500
    )
    runtime = WebhookRuntimeService(
        config, persistence=db.persistence(), security=SecurityOptions(allow_private_hosts=True)
    )
    try:
        await runtime.start()
        await runtime.add_endpoint(
            EndpointInput(url=receiver.url("/hooks"), events=[WebhookEventType.MESSAGE_SENT])
        )
        await runtime.emit(event(0))
        await runtime.flush()  # sent and recorded before the outage
        await relay.cut()
        # Sixty concurrent emits: twelve batches, two written at a time, each failing only
        # after the store's retry limit. Unbounded, the last would wait six limits.
        waited: dict[int, float] = {}
        outcomes: dict[int, BaseException | None] = {}

        async def emit(n: int) -> None:
            started = time.monotonic()
            try:
                await runtime.emit(event(n))
            except StoreError as exc:
                outcomes[n] = exc
            else:
                outcomes[n] = None
            waited[n] = time.monotonic() - started

        await asyncio.gather(*(emit(n) for n in range(1, 61)))
        assert max(waited.values()) < EMIT_BOUND_S + 1.5, sorted(waited.values())[-5:]
        kinds = {type(e) for e in outcomes.values()}
        assert EmitTimeoutError in kinds  # the ones queued behind failing batches
        assert kinds <= {StoreError, EmitTimeoutError}  # none was stored while down

        await relay.start()  # the same port again
        # The caller's remedy: emit the same events again. Re-emitting event 0 (stored
        # before the outage) stores nothing twice.
        for n in range(61):
            await runtime.emit(event(n))
        await runtime.flush()
        page = await runtime.list_deliveries(DeliveryFilter(), limit=200)
    finally:
        await asyncio.wait_for(runtime.shutdown(), 30)
    assert sorted(d.event_id for d in page.items) == sorted(f"evt_{n}" for n in range(61))
    assert all(d.status is DeliveryStatus.SUCCESS for d in page.items)
    sent = [r.headers["webhook-id"] for r in receiver.at("/hooks")]
    assert sorted(sent) == sorted(f"evt_{n}" for n in range(61))
