"""Slow receivers never hold up healthy ones, and every wait is bounded: endpoints that time
out drop to one attempt at a time and then rest, ``flush`` sends only what was due when it was
called, and cancelling or timing out ``flush``, ``emit`` or ``shutdown`` loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp import web

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    DeliveryStore,
    EndpointInput,
    FlushTimeoutError,
    SecurityOptions,
    WebhookConfig,
    WebhookDelivery,
    WebhookError,
    WebhookRuntimeService,
    create_in_memory_persistence,
)

HANG_GUARD = 15
#: How long a cancelled or timed-out call may take to return: generous on a busy machine; what
#: it guards against is waiting for a receiver that answers only when the test lets it.
PROMPT = 5
LOOPBACK = SecurityOptions(allow_private_hosts=True)


async def _rows(runtime: Any, **filter_fields: Any) -> list[WebhookDelivery]:
    page = await runtime.list_deliveries(DeliveryFilter(**filter_fields), limit=1000)
    return list(page.items)


def _held_until(gate: asyncio.Event) -> Any:
    async def held(request: web.Request, n: int) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({})

    return held


async def test_timing_out_endpoints_hold_one_slot_each_then_rest(
    receiver, make_runtime, make_event, gate
):
    # Six endpoints that never answer in time, next to one healthy endpoint, with eight slots
    # in all: at ten attempts each (the old per-endpoint limit) they would take every slot.
    # Their rest (max(timeout_ms, retry_delay_ms)) outlasts the test.
    runtime = await make_runtime(
        WebhookConfig(jitter=False, timeout_ms=300, max_concurrency=8, retry_delay_ms=30_000)
    )
    loop = asyncio.get_running_loop()
    arrivals: dict[str, list[float]] = {}

    async def hanging(request: web.Request, n: int) -> web.StreamResponse:
        arrivals.setdefault(request.path, []).append(loop.time())
        await gate.wait()
        return web.json_response({})

    slow_ids = []
    for n in range(6):
        endpoint = await runtime.add_endpoint(
            EndpointInput(url=receiver.on(f"/slow{n}", hanging), events=["message.failed"])
        )
        slow_ids.append(endpoint.id)
    healthy = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/healthy"), events=["message.sent"])
    )
    for i in range(5):
        await runtime.emit(make_event(f"slow_{i}", type="message.failed"))
    for i in range(30):
        await runtime.emit(make_event(f"ok_{i}"))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)

    assert [d.status for d in await _rows(runtime, endpoint_id=healthy.id)] == [
        DeliveryStatus.SUCCESS
    ] * 30
    # A timing-out endpoint never had a second attempt in flight: each got its second request
    # only once the first had timed out, and none after that (it rests).
    assert len(arrivals) == 6
    for times in arrivals.values():
        assert len(times) == 2
        assert times[1] - times[0] >= 0.25
    for endpoint_id in slow_ids:
        rows = await _rows(runtime, endpoint_id=endpoint_id)
        assert {d.status for d in rows} == {DeliveryStatus.PENDING}
        # Two attempts timed out, then the endpoint rested: its other rows were left in the
        # store as they were (no attempt, no error, no lease).
        assert sum(d.attempt_count for d in rows) == 2
        left = [d for d in rows if d.attempt_count == 0]
        assert left
        assert {(d.last_error, d.lease_owner) for d in left} == {(None, None)}


async def test_flush_does_not_wait_for_retries_that_fall_due_meanwhile(
    receiver, make_runtime, make_event, gate, wait_until
):
    # The first attempt fails and its retry is due at once; the retry hangs. The flush was
    # about the first attempt only.
    async def fail_then_hang(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            return web.Response(status=500)
        await gate.wait()
        return web.json_response({})

    runtime = await make_runtime(WebhookConfig(jitter=False, retry_delay_ms=0))
    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/a", fail_then_hang), events=["message.sent"])
    )
    await runtime.emit(make_event())
    await asyncio.wait_for(runtime.flush(), PROMPT)
    await wait_until(lambda: receiver.hits.get("/a") == 2, what="the retry in flight")
    assert [d.attempt_count for d in await _rows(runtime)] == [1]
    gate.set()
    await wait_until(
        lambda: _statuses_are(runtime, [DeliveryStatus.SUCCESS]), what="the retry recorded"
    )


async def _statuses_are(runtime: Any, expected: list[DeliveryStatus]) -> bool:
    return [d.status for d in await _rows(runtime)] == expected


async def test_flush_with_a_timeout_raises_and_loses_nothing(
    receiver, make_runtime, make_event, gate, wait_until
):
    runtime = await make_runtime()
    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/held", _held_until(gate)), events=["message.sent"])
    )
    for _ in range(3):
        await runtime.emit(make_event())
    with pytest.raises(FlushTimeoutError) as caught:
        await asyncio.wait_for(runtime.flush(timeout=0.3), PROMPT)
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, WebhookError)
    gate.set()
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert [d.status for d in await _rows(runtime)] == [DeliveryStatus.SUCCESS] * 3


async def test_a_cancelled_flush_returns_at_once_and_the_sends_go_on(
    receiver, make_runtime, make_event, gate, wait_until
):
    runtime = await make_runtime()
    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/held", _held_until(gate)), events=["message.sent"])
    )
    for _ in range(3):
        await runtime.emit(make_event())
    flushing = asyncio.create_task(runtime.flush())
    await wait_until(lambda: receiver.at("/held"), what="a request in flight")
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(flushing, PROMPT)
    gate.set()
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert [d.status for d in await _rows(runtime)] == [DeliveryStatus.SUCCESS] * 3


class StalledInsertStore:
    """A delivery store whose inserts wait until ``opened`` is set (a slow database write)."""

    def __init__(self, inner: DeliveryStore, opened: asyncio.Event) -> None:
        self.inner = inner
        self.opened = opened
        self.inserting = asyncio.Event()

    async def insert_many(
        self, deliveries: Sequence[WebhookDelivery], *, connection: object | None = None
    ) -> list[str]:
        self.inserting.set()
        await self.opened.wait()
        return await self.inner.insert_many(deliveries, connection=connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_cancelled_emit_returns_at_once_and_its_rows_are_still_written(
    receiver, make_runtime, make_event
):
    persistence = create_in_memory_persistence()
    opened = asyncio.Event()
    stalled = StalledInsertStore(persistence.delivery_store, opened)
    runtime = await make_runtime(persistence=persistence, delivery_store=stalled)
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/a"), events=["message.sent"]))
    emitting = asyncio.create_task(runtime.emit(make_event("evt_cancelled")))
    await asyncio.wait_for(stalled.inserting.wait(), HANG_GUARD)
    emitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(emitting, PROMPT)
    opened.set()
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    assert [r.headers["webhook-id"] for r in receiver.at("/a")] == ["evt_cancelled"]
    assert [d.status for d in await _rows(runtime)] == [DeliveryStatus.SUCCESS]


async def _sqlite_runtime_with_sends_in_flight(
    url: str, receiver: Any, make_event: Any, gate: asyncio.Event, wait_until: Any
) -> WebhookRuntimeService:
    runtime = WebhookRuntimeService(WebhookConfig(jitter=False), persistence=url, security=LOOPBACK)
    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/held", _held_until(gate)), events=["message.sent"])
    )
    # Five of them: the endpoint has not answered yet, so one is in flight and the rest wait.
    for _ in range(5):
        await runtime.emit(make_event())
    await wait_until(lambda: receiver.at("/held"), what="a request in flight")
    return runtime


async def _given_back_and_sent_by_a_new_worker(url: str, gate: asyncio.Event) -> None:
    """The rows as another process finds them: pending and not leased (claimable at once,
    not after a lease runs out); then that process sends them."""
    async with WebhookRuntimeService(
        WebhookConfig(jitter=False), persistence=url, security=LOOPBACK, dispatch=False
    ) as reader:
        rows = await _rows(reader)
    assert len(rows) == 5
    assert {(d.status, d.lease_owner) for d in rows} == {(DeliveryStatus.PENDING, None)}
    gate.set()
    async with WebhookRuntimeService(
        WebhookConfig(jitter=False), persistence=url, security=LOOPBACK
    ) as worker:
        await asyncio.wait_for(worker.flush(), HANG_GUARD)
        assert [d.status for d in await _rows(worker)] == [DeliveryStatus.SUCCESS] * 5


async def test_a_cancelled_shutdown_gives_every_row_back(
    receiver, make_event, gate, wait_until, tmp_path
):
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    runtime = await _sqlite_runtime_with_sends_in_flight(
        url, receiver, make_event, gate, wait_until
    )
    stopping = asyncio.create_task(runtime.shutdown())
    await asyncio.sleep(0.2)  # draining: waiting for the receiver
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stopping, PROMPT)
    await _given_back_and_sent_by_a_new_worker(url, gate)


async def test_shutdown_with_a_timeout_cancels_what_is_in_flight_and_gives_it_back(
    receiver, make_event, gate, wait_until, tmp_path
):
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    runtime = await _sqlite_runtime_with_sends_in_flight(
        url, receiver, make_event, gate, wait_until
    )
    await asyncio.wait_for(runtime.shutdown(timeout=0.3), PROMPT)
    await _given_back_and_sent_by_a_new_worker(url, gate)
