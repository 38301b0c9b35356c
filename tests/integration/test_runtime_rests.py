"""An endpoint resting after timeouts costs its store nothing: claims leave its due rows alone,
so they stay pending and untouched (no lease, no attempt, no error written) until the rest ends;
``flush`` does not wait for them, and a stopped worker leaves them claimable by any other.

Run over the memory store and, through their URLs, SQLite and Postgres (the worker's claim is
the store's own SQL, with the resting endpoints in its exclusion list).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    SecurityOptions,
    WebhookConfig,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookRuntimeService,
    create_in_memory_persistence,
)
from support.servers import Behaviour, Receiver
from support.stores import temporary_store_url

HANG_GUARD = 15
#: How long a flush may take while an endpoint rests: it waits for no receiver here, so this
#: only absorbs a busy machine.
PROMPT = 5
LOOPBACK = SecurityOptions(allow_private_hosts=True)
#: Attempts time out after 300 ms; the rest (max(timeout_ms, retry_delay_ms)) outlasts the
#: test, and so do the retries of the timed-out attempts. A short poll, so that a claim that
#: would take the resting rows has many chances to.
RESTING = WebhookConfig(
    jitter=False, timeout_ms=300, retry_delay_ms=60_000, poll_interval_ms=50, max_concurrency=8
)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str | None]:
    """A store URL (``None``: a memory store of the runtime's own)."""
    if request.param == "memory":
        yield None
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.db'}"
    else:
        async with temporary_store_url() as url:
            yield url


def _runtime(url: str | None, config: WebhookConfig = RESTING) -> WebhookRuntimeService:
    persistence: Any = url if url is not None else create_in_memory_persistence()
    return WebhookRuntimeService(config, persistence=persistence, security=LOOPBACK)


async def _rows(runtime: WebhookRuntimeService, endpoint_id: str) -> list[WebhookDelivery]:
    page = await runtime.list_deliveries(DeliveryFilter(endpoint_id=endpoint_id), limit=1000)
    return list(page.items)


def _untouched(rows: list[WebhookDelivery]) -> list[WebhookDelivery]:
    """Rows no worker has leased or attempted, due now, with nothing written about them."""
    now = datetime.now(UTC)
    return [
        d
        for d in rows
        if d.status is DeliveryStatus.PENDING
        and d.attempt_count == 0
        and d.last_error is None
        and d.lease_owner is None
        and d.next_attempt_at is not None
        and d.next_attempt_at <= now
    ]


def _hanging(gate: asyncio.Event, arrivals: list[str]) -> Behaviour:
    """A receiver that notes each request's ``webhook-id`` in ``arrivals``, then answers only
    once ``gate`` opens (after its attempts have timed out)."""

    async def hanging(request: web.Request, n: int) -> web.StreamResponse:
        arrivals.append(request.headers["webhook-id"])
        await gate.wait()
        return web.json_response({})

    return hanging


async def _hanging_and_healthy(
    runtime: WebhookRuntimeService, receiver: Receiver, gate: asyncio.Event, arrivals: list[str]
) -> tuple[WebhookEndpoint, WebhookEndpoint]:
    """An endpoint for ``message.failed`` that hangs until ``gate``, and a healthy one for
    ``message.sent``."""
    url = receiver.on("/slow", _hanging(gate, arrivals))
    slow = await runtime.add_endpoint(EndpointInput(url=url, events=["message.failed"]))
    healthy = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/healthy"), events=["message.sent"])
    )
    return slow, healthy


async def test_a_resting_endpoints_rows_stay_in_the_store_untouched_and_flush_returns(
    store_url, receiver, make_event, gate, wait_until
):
    arrivals: list[str] = []
    runtime = _runtime(store_url)
    await runtime.start()
    try:
        slow, healthy = await _hanging_and_healthy(runtime, receiver, gate, arrivals)
        for i in range(3):
            await runtime.emit(make_event(f"before_{i}", type="message.failed"))
        # Two attempts time out, one after the other: the endpoint rests (from the second
        # timeout on, before that attempt is recorded).
        await wait_until(
            lambda: _attempted(runtime, slow.id, 2), what="two timed-out attempts recorded"
        )
        for i in range(4):
            await runtime.emit(make_event(f"resting_{i}", type="message.failed"))
        for i in range(10):
            await runtime.emit(make_event(f"ok_{i}"))
        # Every row was due when flush was called; the resting endpoint's count as settled.
        await asyncio.wait_for(runtime.flush(), PROMPT)
        assert [d.status for d in await _rows(runtime, healthy.id)] == [DeliveryStatus.SUCCESS] * 10

        # Many polls later, still nobody has claimed the resting endpoint's rows.
        await asyncio.sleep(0.5)
        assert len(arrivals) == 2
        rows = await _rows(runtime, slow.id)
        assert len(rows) == 7
        timed_out = [d for d in rows if d.attempt_count == 1]
        assert len(timed_out) == 2
        assert all(d.lease_owner is None and d.last_error for d in timed_out)
        assert len(_untouched(rows)) == 5
    finally:
        # Stopping leaves them as they are: no lease to wait out.
        await asyncio.wait_for(runtime.shutdown(timeout=1), PROMPT)

    if store_url is None:
        return
    # Another worker (a process that has not seen the timeouts) claims them at once.
    gate.set()
    async with _runtime(store_url) as worker:
        await asyncio.wait_for(worker.flush(), HANG_GUARD)
        rows = await _rows(worker, slow.id)
        assert sorted(d.status.value for d in rows) == ["pending"] * 2 + ["success"] * 5
        assert all(d.attempt_count == 1 for d in rows)


async def test_when_the_rest_ends_one_probe_goes_out_then_the_rows_flow(
    store_url, receiver, make_event, gate, wait_until
):
    # The endpoint hangs for its first two requests, then answers at once. The rest lasts
    # max(timeout_ms, retry_delay_ms) = 1 s, as does the retry of each timed-out attempt.
    config = WebhookConfig(jitter=False, timeout_ms=300, retry_delay_ms=1_000, poll_interval_ms=50)
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []

    async def stalls_twice(request: web.Request, n: int) -> web.StreamResponse:
        arrivals.append(loop.time())
        if n <= 2:
            await gate.wait()
        return web.json_response({})

    async with _runtime(store_url, config) as runtime:
        slow = await runtime.add_endpoint(
            EndpointInput(url=receiver.on("/slow", stalls_twice), events=["message.failed"])
        )
        for i in range(6):
            await runtime.emit(make_event(f"evt_{i}", type="message.failed"))
        await wait_until(lambda: len(arrivals) >= 3, within=HANG_GUARD, what="the probe")
        # Nothing went out while it rested: the probe came a rest (1 s) after the second
        # timeout (0.3 s), less what a busy machine may add between a send and its arrival.
        # Without the rest the other rows would have followed the timeout at once.
        assert arrivals[2] - arrivals[1] >= 1.0
        await wait_until(
            lambda: _all_sent(runtime, slow.id), within=HANG_GUARD, what="every row delivered"
        )
        rows = await _rows(runtime, slow.id)
        # The rest cost no row an attempt: four were sent once, the two that timed out twice.
        assert sorted(d.attempt_count for d in rows) == [1, 1, 1, 1, 2, 2]
        assert len(arrivals) == 8


async def test_flush_does_not_wait_for_an_attempt_in_flight_to_an_endpoint_timing_out(
    receiver, make_event, gate, wait_until
):
    # One attempt has timed out (not yet a rest); the next one to the same endpoint is in
    # flight and would take timeout_ms. A flush waits for the healthy rows only: it returns
    # with that attempt still unrecorded, which the background loop records later.
    config = WebhookConfig(jitter=False, timeout_ms=4_000, retry_delay_ms=60_000)
    arrivals: list[str] = []
    async with _runtime(None, config) as runtime:
        slow, healthy = await _hanging_and_healthy(runtime, receiver, gate, arrivals)
        for i in range(2):
            await runtime.emit(make_event(f"slow_{i}", type="message.failed"))
        await wait_until(
            lambda: _attempted(runtime, slow.id, 1), within=HANG_GUARD, what="a timed-out attempt"
        )
        await wait_until(lambda: len(arrivals) == 2, what="the second attempt in flight")
        for i in range(5):
            await runtime.emit(make_event(f"ok_{i}"))
        await asyncio.wait_for(runtime.flush(), HANG_GUARD)
        assert [d.status for d in await _rows(runtime, healthy.id)] == [DeliveryStatus.SUCCESS] * 5
        assert await _attempted(runtime, slow.id, 1)  # the one in flight is not recorded yet


async def test_no_row_waits_behind_a_probe_to_an_endpoint_timing_out(
    store_url, receiver, make_event, gate, wait_until
):
    # When a rest ends, the worker holds only the probe for that endpoint (its limit, 1), not
    # a second row queued behind it: if the probe stalls too, the new rest gives nothing back.
    # Attempts time out after 1 s (the probe is still in flight when the rows are read); the
    # rest lasts max(timeout_ms, retry_delay_ms) = 1 s.
    config = dataclasses.replace(RESTING, timeout_ms=1_000, retry_delay_ms=1_000)
    arrivals: list[str] = []
    runtime = _runtime(store_url, config)
    await runtime.start()
    try:
        url = receiver.on("/slow", _hanging(gate, arrivals))
        slow = await runtime.add_endpoint(EndpointInput(url=url, events=["message.failed"]))
        for i in range(6):
            await runtime.emit(make_event(f"slow_{i}", type="message.failed"))
        await wait_until(lambda: len(arrivals) == 3, within=HANG_GUARD, what="the probe")
        await asyncio.sleep(0.3)  # several polls (50 ms): a claim would have taken a row by now
        rows = await _rows(runtime, slow.id)
        leased = [d for d in rows if d.status is DeliveryStatus.PENDING and d.lease_owner]
        assert [d.event_id for d in leased] == [arrivals[2]]
    finally:
        await asyncio.wait_for(runtime.shutdown(timeout=1), PROMPT)


async def _attempted(runtime: WebhookRuntimeService, endpoint_id: str, count: int) -> bool:
    rows = await _rows(runtime, endpoint_id)
    return sum(d.attempt_count for d in rows) == count


async def _all_sent(runtime: WebhookRuntimeService, endpoint_id: str) -> bool:
    rows = await _rows(runtime, endpoint_id)
    return len(rows) == 6 and all(d.status is DeliveryStatus.SUCCESS for d in rows)
