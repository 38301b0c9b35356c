"""The runtime on a real PostgreSQL that misbehaves.

Connection lost mid-run: the store's connections are killed with ``pg_terminate_backend`` over
and over while events are emitted and dispatched. Intake and dispatch retry (tenacity) and carry
on; nothing is lost, and no delivery is recorded as sent that the receiver did not get.

Database down at start: a clear :class:`StoreError` naming the URL, its password redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiohttp import web

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    SecurityOptions,
    StoreError,
    StoreUnavailableError,
    WebhookConfig,
    WebhookEvent,
    WebhookEventType,
    WebhookRuntimeService,
)
from kmsg_webhook.stores.sql.postgres import PostgresDatabase
from kmsg_webhook.stores.url import persistence_from_url
from support.servers import serve_app
from support.stores import drop_schema, free_port, new_schema, server_dsn, terminate_backends

EVENTS = 300
WAVES = 10
# Generous: a lease (6 s) plus a flush, on a loaded machine.
SETTLE_S = 60


@dataclass
class Receiver:
    url: str = ""
    hits: Counter[str] = field(default_factory=Counter)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.005)  # a little work, so sends overlap the kills
        rec.hits[request.headers["webhook-id"]] += 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hooks", handle)
    async with serve_app(app) as base:
        rec.url = f"{base}/hooks"
        yield rec


@dataclass(frozen=True)
class Store:
    dsn: str
    url: str
    application_name: str


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    """A store URL with a schema of its own (dropped afterwards), and an application name no
    other connection uses, so that only this store's connections are killed."""
    dsn = await server_dsn()
    schema = new_schema()
    try:
        yield Store(dsn, f"{dsn}?schema={schema}", f"kmsg-faults-{schema}")
    finally:
        await drop_schema(dsn, schema)


async def kill_until(stop: asyncio.Event, store: Store, every_s: float) -> int:
    """Terminate the store's connections every ``every_s`` until ``stop``; how many."""
    killed = 0
    while not stop.is_set():
        killed += await terminate_backends(store.dsn, store.application_name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    return killed


def event(n: int) -> WebhookEvent:
    return WebhookEvent(
        id=f"evt_{n}",
        type=WebhookEventType.MESSAGE_SENT,
        timestamp=datetime.now(UTC),
        data={"n": n},
    )


async def test_connections_killed_mid_run_lose_nothing_and_fake_nothing(
    store: Store, receiver: Receiver
) -> None:
    # The URL form cannot set an application name (asyncpg refuses it as a connect argument),
    # so the database is built from the same URL with one; the runtime gets its persistence.
    db = PostgresDatabase(store.url, application_name=store.application_name)
    # A kill can land after a claim committed and before its answer arrived, with the
    # statement still running when the retry looks for its rows: those rows stay leased to
    # this worker, unsent, until the lease expires (as after a crash), and flush() covers
    # only what it can claim. A short lease brings them back within the test.
    config = WebhookConfig(
        poll_interval_ms=50, batch_timeout_ms=20, timeout_ms=5_000, lease_ms=6_000
    )
    security = SecurityOptions(allow_private_hosts=True)
    async with WebhookRuntimeService(
        config, persistence=db.persistence(), security=security
    ) as runtime:
        await runtime.add_endpoint(
            EndpointInput(url=receiver.url, events=[WebhookEventType.MESSAGE_SENT])
        )
        stop = asyncio.Event()
        killer = asyncio.create_task(kill_until(stop, store, every_s=0.05))
        try:
            # Waves of concurrent emits, so that intake and dispatch both run into the kills.
            per_wave = EVENTS // WAVES
            for wave in range(WAVES):
                first = wave * per_wave
                await asyncio.gather(
                    *(runtime.emit(event(n)) for n in range(first, first + per_wave))
                )
                await asyncio.sleep(0.02)
            await runtime.flush()
        finally:
            stop.set()
            killed = await killer
        # What the last kills interrupted: rows a lost claim left leased come back when the
        # lease expires, and the flush after that sends them.
        deadline = time.monotonic() + SETTLE_S
        while True:
            await runtime.flush()
            stats = (await runtime.stats()).deliveries
            if stats.success == EVENTS or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        page = await runtime.list_deliveries(DeliveryFilter(), limit=EVENTS + 1)

    assert killed >= 10, f"only {killed} connections were terminated"
    emitted = {f"evt_{n}" for n in range(EVENTS)}
    assert set(receiver.hits) == emitted, "an event never reached the receiver"
    rows = {d.event_id: d for d in page.items}
    assert len(page.items) == len(rows) == EVENTS and page.next_cursor is None
    assert set(rows) == emitted
    unsettled = [
        (d.event_id, d.status.value, d.lease_expires_at, d.attempt_count, d.last_error)
        for d in page.items
        if d.status is not DeliveryStatus.SUCCESS
    ]
    assert (stats.total, stats.success) == (EVENTS, EVENTS), unsettled[:5]
    for event_id, delivery in rows.items():
        assert delivery.status is DeliveryStatus.SUCCESS
        # Every recorded attempt is a request the receiver answered: none is invented.
        assert 1 <= delivery.attempt_count <= receiver.hits[event_id]
        assert all(a.http_status == 200 for a in delivery.attempts)


async def test_database_down_at_start_names_the_url_without_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://app:secretpw@127.0.0.1:{port}/db"
    # A bare URL retries for the default retry_timeout (30 s); persistence_from_url shortens it.
    runtime = WebhookRuntimeService(persistence=persistence_from_url(url, retry_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        await runtime.start()
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert message.startswith(
        f"cannot reach the postgresql store at postgresql://app:***@127.0.0.1:{port}/db (gave up "
    )
    assert "ConnectionRefusedError" in message
    assert "secretpw" not in "".join(traceback.format_exception(caught.value))
    # Every retry said so, without the password.
    retries = [r.getMessage() for r in caplog.records if r.name == "kmsg_webhook.store"]
    assert retries and retries[0].startswith(
        f"postgresql store at postgresql://app:***@127.0.0.1:{port}/db: attempt 1 failed "
    )
    assert not any("secretpw" in line for line in retries)
    # Any later call starts again, and fails the same way; shutting down is clean.
    with pytest.raises(StoreError, match=r"app:\*\*\*@"):
        await runtime.emit(event(1))
    await runtime.shutdown()
