"""Concurrency limits, observed at the receiver: the global ``max_concurrency`` is never exceeded,
and the per-endpoint limit keeps a saturated slow endpoint from starving a fast one."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    DeliveryStore,
    EndpointInput,
    WebhookConfig,
    WebhookDelivery,
    create_in_memory_persistence,
)

HANG_GUARD = 15


@dataclass
class InFlight:
    """Counts requests a handler is serving right now, and the most at once."""

    now: int = 0
    most: int = 0

    def enter(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def leave(self) -> None:
        self.now -= 1


class YieldingDeliveryStore:
    """Wraps a delivery store so every call yields to the loop first, like a networked
    database would; races between concurrent claimers show up under it."""

    def __init__(self, inner: DeliveryStore) -> None:
        self.inner = inner

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        exclude_endpoints: Collection[str] = (),
    ) -> list[WebhookDelivery]:
        await asyncio.sleep(0)
        claimed = await self.inner.claim(
            worker_id=worker_id,
            now=now,
            lease_until=lease_until,
            limit=limit,
            exclude_endpoints=exclude_endpoints,
        )
        await asyncio.sleep(0)
        return claimed

    async def record(self, outcomes: Sequence[Any]) -> int:
        await asyncio.sleep(0)
        return await self.inner.record(outcomes)

    async def release(self, delivery_ids: Sequence[str], *, worker_id: str) -> None:
        await asyncio.sleep(0)
        await self.inner.release(delivery_ids, worker_id=worker_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def statuses(runtime: Any, **filter_fields: Any) -> list[DeliveryStatus]:
    page = await runtime.list_deliveries(DeliveryFilter(**filter_fields), limit=1000)
    return [d.status for d in page.items]


@pytest.mark.parametrize("own_session", [False, True], ids=["runtime-session", "given-session"])
async def test_the_global_limit_is_never_exceeded(
    receiver, make_runtime, make_event, gate, wait_until, own_session
):
    # A given session has no connection limit of ours, so only the dispatcher enforces it;
    # a store that yields on every call gives concurrent claimers a chance to race.
    persistence = create_in_memory_persistence()
    session = aiohttp.ClientSession() if own_session else None
    try:
        runtime = await make_runtime(
            WebhookConfig(jitter=False, max_concurrency=3, max_concurrency_per_endpoint=10),
            persistence=persistence,
            delivery_store=YieldingDeliveryStore(persistence.delivery_store),
            session=session,
        )
        counts = InFlight()

        async def held(request: web.Request, n: int) -> web.StreamResponse:
            counts.enter()
            try:
                await gate.wait()
                await asyncio.sleep(0.005)
            finally:
                counts.leave()
            return web.Response(text="ok")

        # An endpoint starts with one attempt in flight (it earns more by answering fast):
        # five held endpoints could take five slots.
        for path in ("/a", "/b", "/c", "/d", "/e"):
            await runtime.add_endpoint(
                EndpointInput(url=receiver.on(path, held), events=["message.sent"])
            )
        emits = [runtime.emit(make_event(f"evt_{i}")) for i in range(12)]
        await asyncio.gather(*emits)
        flushing = asyncio.create_task(runtime.flush())  # a second claimer next to the loop

        await wait_until(lambda: counts.now == 3, what="three requests in flight")
        for _ in range(20):
            await asyncio.sleep(0.01)
            assert len(receiver.received) == 3  # nobody else gets a connection meanwhile

        gate.set()
        await asyncio.wait_for(flushing, HANG_GUARD)
        assert counts.most == 3
        assert await statuses(runtime) == [DeliveryStatus.SUCCESS] * 60
        assert len(receiver.received) == 60
    finally:
        if session is not None:
            await session.close()


async def test_the_global_limit_holds_under_steady_traffic(receiver, make_runtime, make_event):
    runtime = await make_runtime(WebhookConfig(jitter=False, max_concurrency=4))
    counts = InFlight()

    async def brief(request: web.Request, n: int) -> web.StreamResponse:
        counts.enter()
        try:
            await asyncio.sleep(0.01)
        finally:
            counts.leave()
        return web.Response(text="ok")

    for path in ("/a", "/b", "/c"):
        await runtime.add_endpoint(
            EndpointInput(url=receiver.on(path, brief), events=["message.sent"])
        )
    for i in range(20):
        await runtime.emit(make_event(f"evt_{i}"))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert 1 <= counts.most <= 4
    assert await statuses(runtime) == [DeliveryStatus.SUCCESS] * 60


@pytest.mark.parametrize("max_concurrency", [4, 100])
async def test_a_saturated_slow_endpoint_does_not_starve_a_fast_one(
    receiver, make_runtime, make_event, gate, wait_until, max_concurrency
):
    runtime = await make_runtime(
        WebhookConfig(jitter=False, max_concurrency=max_concurrency, max_concurrency_per_endpoint=2)
    )
    slow_counts = InFlight()

    async def slow(request: web.Request, n: int) -> web.StreamResponse:
        slow_counts.enter()
        try:
            await gate.wait()
        finally:
            slow_counts.leave()
        return web.Response(text="slow")

    slow_endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/slow", slow), events=["message.failed"])
    )
    fast_endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/fast"), events=["message.sent"])
    )
    for i in range(5):
        await runtime.emit(make_event(f"slow_{i}", type="message.failed"))
    # It has not answered yet, so it has earned no second slot.
    await wait_until(lambda: slow_counts.now == 1, what="the slow endpoint saturated")
    for i in range(6):
        await runtime.emit(make_event(f"fast_{i}", type="message.sent"))

    async def fast_done() -> bool:
        return await statuses(runtime, endpoint_id=fast_endpoint.id) == [DeliveryStatus.SUCCESS] * 6

    await wait_until(fast_done, what="the fast endpoint's deliveries")
    assert slow_counts.now == 1  # still saturated, and never more than its limit
    assert len(receiver.at("/slow")) == 1

    gate.set()
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert await statuses(runtime, endpoint_id=slow_endpoint.id) == [DeliveryStatus.SUCCESS] * 5
    assert slow_counts.most <= 2


class StalledRecordStore(YieldingDeliveryStore):
    """Records wait until ``opened`` is set, like a slow database round trip."""

    def __init__(self, inner: DeliveryStore, opened: asyncio.Event) -> None:
        super().__init__(inner)
        self.opened = opened

    async def record(self, outcomes: Sequence[Any]) -> int:
        await self.opened.wait()
        return await self.inner.record(outcomes)


async def test_sending_goes_on_while_records_wait_but_only_so_far(
    receiver, make_runtime, make_event, wait_until
):
    # Rows already sent and waiting for their record do not hold claim room, up to two
    # record batches: with max_concurrency + claim_batch_size = 4 and records stalled, 4 + 2 * 2
    # = 8 deliveries are sent, and no more until the records go through.
    persistence = create_in_memory_persistence()
    recorded = asyncio.Event()
    runtime = await make_runtime(
        WebhookConfig(jitter=False, max_concurrency=2, claim_batch_size=2),
        persistence=persistence,
        delivery_store=StalledRecordStore(persistence.delivery_store, recorded),
    )
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/a"), events=["message.sent"]))
    await asyncio.gather(*(runtime.emit(make_event(f"evt_{i}")) for i in range(20)))
    await wait_until(lambda: len(receiver.received) >= 8, what="8 sends while records stall")
    for _ in range(20):  # a few loop passes: nothing more goes out
        await asyncio.sleep(0.01)
    assert len(receiver.received) == 8
    recorded.set()
    await runtime.flush()
    assert len(receiver.received) == 20
    assert await statuses(runtime) == [DeliveryStatus.SUCCESS] * 20
