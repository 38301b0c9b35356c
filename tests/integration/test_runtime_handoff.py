"""Intake hand-off: rows a running dispatcher can send at once are written leased to it and
queued without a claim. Everything else keeps the outbox rules: rows it cannot take go to the
store unleased, an older backlog goes first, a failed or duplicate write gives the room back,
and rows in a caller's transaction always wait for a claim."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import datetime
from typing import Any

import pytest
from aiohttp import web

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    DeliveryStore,
    EndpointInput,
    StoreError,
    WebhookConfig,
    WebhookDelivery,
    WebhookEventType,
    WebhookPersistence,
    create_in_memory_persistence,
)
from support.stores import sqlite_persistence

HANG_GUARD = 15


class CountingDeliveryStore:
    """Wraps a real delivery store: counts the rows claims return, can fail inserts, and with
    ``hold`` keeps a claim that leased rows from returning until the event is set."""

    def __init__(self, inner: DeliveryStore, *, hold: asyncio.Event | None = None) -> None:
        self.inner = inner
        self.claimed = 0
        self.failing_inserts = 0
        self.hold = hold
        self.holding = False

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        exclude_endpoints: Collection[str] = (),
    ) -> list[WebhookDelivery]:
        rows = await self.inner.claim(
            worker_id=worker_id,
            now=now,
            lease_until=lease_until,
            limit=limit,
            exclude_endpoints=exclude_endpoints,
        )
        self.claimed += len(rows)
        if rows and self.hold is not None:
            self.holding = True
            await self.hold.wait()
        return rows

    async def insert_many(
        self, deliveries: Sequence[WebhookDelivery], *, connection: object | None = None
    ) -> list[str]:
        if self.failing_inserts:
            self.failing_inserts -= 1
            raise StoreError("insert refused (test)")
        return await self.inner.insert_many(deliveries, connection=connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[WebhookPersistence]:
    persistence = (
        create_in_memory_persistence() if request.param == "memory" else await sqlite_persistence()
    )
    if persistence.init is not None:
        await persistence.init()
    yield persistence  # the runtime closes it


def _endpoint(url: str) -> EndpointInput:
    return EndpointInput(url=url, events=[WebhookEventType.MESSAGE_SENT])


def _event_ids(receiver: Any, path: str) -> list[str]:
    return [r.headers["webhook-id"] for r in receiver.at(path)]


async def _runtime(make_runtime: Any, store: WebhookPersistence, **config: Any) -> Any:
    counting = CountingDeliveryStore(store.delivery_store)
    runtime = await make_runtime(
        WebhookConfig(jitter=False, **config), persistence=store, delivery_store=counting
    )
    return runtime, counting


async def test_new_rows_are_sent_without_a_claim(receiver, make_runtime, make_event, store):
    runtime, counting = await _runtime(make_runtime, store)
    url = receiver.url("/a")
    await runtime.add_endpoint(_endpoint(url))
    # Fast answers earn the endpoint its full share (it starts with one attempt at a time);
    # the flush's last claim finds the store empty, so new rows are taken from then on.
    for _ in range(20):
        await runtime.emit(make_event())
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    counting.claimed = 0
    for _ in range(20):
        await runtime.emit(make_event())
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)

    assert len(receiver.at("/a")) == 40
    assert counting.claimed == 0
    stats = (await runtime.stats(DeliveryFilter())).deliveries
    assert stats.success == 40


async def test_a_taken_row_is_stored_leased_to_the_worker_before_it_is_sent(
    receiver, make_runtime, make_event, store, gate, wait_until
):
    async def held(request: web.Request, n: int) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({})

    runtime, _ = await _runtime(make_runtime, store)
    await runtime.add_endpoint(_endpoint(receiver.on("/held", held)))
    await runtime.emit(make_event())
    await wait_until(lambda: receiver.at("/held"))

    (row,) = (await runtime.list_deliveries()).items
    assert row.status is DeliveryStatus.PENDING
    assert row.lease_owner == runtime.worker_id
    assert row.lease_expires_at is not None
    gate.set()
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)


async def test_rows_beyond_the_room_go_to_the_store_and_are_claimed(
    receiver, make_runtime, make_event, store
):
    # Room is max_concurrency + claim_batch_size = 3: most of a 40-event burst waits in the
    # store, unleased, for the claimer.
    runtime, counting = await _runtime(
        make_runtime, store, max_concurrency=1, claim_batch_size=2, batch_size=40
    )
    await runtime.add_endpoint(_endpoint(receiver.url("/a")))
    await asyncio.gather(*(runtime.emit(make_event()) for _ in range(40)))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)

    ids = _event_ids(receiver, "/a")
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 40  # each sent exactly once
    assert counting.claimed >= 30


async def test_a_slow_endpoint_gets_no_more_than_a_claim_would_hold(
    receiver, make_runtime, make_event, store, gate, wait_until
):
    async def held(request: web.Request, n: int) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({})

    runtime, _ = await _runtime(make_runtime, store, max_concurrency_per_endpoint=1)
    await runtime.add_endpoint(_endpoint(receiver.on("/slow", held)))
    for _ in range(10):
        await runtime.emit(make_event())
    await wait_until(lambda: receiver.at("/slow"))

    rows = (await runtime.list_deliveries()).items
    leased = [r for r in rows if r.lease_owner is not None]
    # One in flight and one queued (two rounds of its share); the rest stay claimable by any
    # worker instead of ageing under this worker's lease.
    assert len(leased) == 2
    assert all(r.lease_owner is None for r in rows if r not in leased)
    gate.set()
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert len(receiver.at("/slow")) == 10


async def test_an_older_backlog_is_sent_before_new_rows(
    receiver, make_runtime, make_event, store, gate
):
    # Rows stored by an emit-only runtime, then a dispatching runtime on the same store emits
    # more: with one sender and small claims, every old row must reach the receiver first.
    writer = await make_runtime(WebhookConfig(jitter=False), persistence=store, dispatch=False)
    await writer.add_endpoint(_endpoint(receiver.url("/a")))
    old = [make_event() for _ in range(12)]
    for event in old:
        await writer.emit(event)
    await writer.flush()

    runtime, _ = await _runtime(
        make_runtime, store, max_concurrency=1, claim_batch_size=3, poll_interval_ms=50
    )
    new = [make_event() for _ in range(6)]
    for event in new:
        await runtime.emit(event)
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)

    ids = _event_ids(receiver, "/a")
    assert sorted(ids[:12]) == sorted(e.id for e in old)
    assert sorted(ids[12:]) == sorted(e.id for e in new)


async def test_a_failed_write_gives_the_room_back(receiver, make_runtime, make_event, store):
    runtime, counting = await _runtime(
        make_runtime, store, max_concurrency=1, claim_batch_size=1, batch_size=10
    )
    await runtime.add_endpoint(_endpoint(receiver.url("/a")))
    counting.failing_inserts = 1
    with pytest.raises(StoreError):
        await runtime.emit(make_event())
    # Had the refused write kept its room (2 rows here), nothing below could be sent.
    for _ in range(5):
        await runtime.emit(make_event())
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert len(receiver.at("/a")) == 5


async def test_re_emitting_an_event_gives_the_room_back(receiver, make_runtime, make_event, store):
    runtime, _ = await _runtime(make_runtime, store, max_concurrency=1, claim_batch_size=1)
    await runtime.add_endpoint(_endpoint(receiver.url("/a")))
    event = make_event()
    for _ in range(4):
        await runtime.emit(event)  # taken each time, stored once
    others = [make_event() for _ in range(3)]
    for other in others:
        await runtime.emit(other)
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert sorted(_event_ids(receiver, "/a")) == sorted([event.id, *(e.id for e in others)])


async def test_flush_waits_for_a_claim_still_on_its_way_back(
    receiver, make_runtime, make_event, store, gate, wait_until
):
    # The claimer's claim has leased the stored rows but not yet returned them: a claim by
    # flush() finds nothing, yet flush must not return before those rows are sent and recorded.
    writer = await make_runtime(WebhookConfig(jitter=False), persistence=store, dispatch=False)
    await writer.add_endpoint(_endpoint(receiver.url("/a")))
    for _ in range(5):
        await writer.emit(make_event())
    await writer.flush()

    counting = CountingDeliveryStore(store.delivery_store, hold=gate)
    runtime = await make_runtime(
        WebhookConfig(jitter=False), persistence=store, delivery_store=counting
    )
    await runtime.start()
    await wait_until(lambda: counting.holding)
    flushing = asyncio.create_task(runtime.flush())
    await asyncio.sleep(0.2)
    assert not flushing.done(), "flush returned while a claim still held leased rows"
    gate.set()
    await asyncio.wait_for(flushing, HANG_GUARD)
    assert len(receiver.at("/a")) == 5
    assert (await runtime.stats(DeliveryFilter())).deliveries.success == 5
