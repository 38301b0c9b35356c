"""Ordered delivery per key, through the runtime and at a real receiver.

An endpoint added with ``ordered=True`` receives the events of one ``ordering_key`` strictly in
emit order: the next is sent only after the previous one ended. Other keys, other endpoints and
events without a key are not held up. (The store rule itself is in the conformance suite; many
worker processes killed at random are in ``test_ordered_workers.py``.)
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    InvalidEndpointError,
    InvalidEventError,
    ManualClock,
    RetentionPolicy,
    WebhookConfig,
    WebhookEvent,
)
from support.stores import BACKENDS

HANG_GUARD = 30
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(n: int, key: str | None) -> WebhookEvent:
    return WebhookEvent(
        id=f"evt_{key}_{n:03d}" if key else f"evt_free_{n:03d}",
        type="message.sent",
        timestamp=T0,
        data={"n": n},
        ordering_key=key,
    )


class Arrivals:
    """What a receiver saw, per key, in arrival order; it fails the first attempt of every
    third message so retries have to keep their place."""

    def __init__(self) -> None:
        self.by_key: defaultdict[str, list[str]] = defaultdict(list)
        self.seen: set[str] = set()

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        body = await request.json()
        event_id = body["id"]
        key = event_id.rsplit("_", 1)[0]
        self.by_key[key].append(event_id)
        first = event_id not in self.seen
        self.seen.add(event_id)
        if first and body["data"]["n"] % 3 == 1:
            return web.Response(status=503)
        return web.Response(status=200)


async def all_succeeded(runtime: Any, count: int) -> bool:
    page = await runtime.list_deliveries(DeliveryFilter(statuses=(DeliveryStatus.SUCCESS,)))
    return len(page.items) >= count


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
async def test_one_key_arrives_in_emit_order_through_failed_first_attempts(
    receiver, make_runtime, wait_until, tmp_path, store
):
    arrivals = Arrivals()
    persistence = f"sqlite:///{tmp_path / 'ordered.db'}" if store == "sqlite" else store
    runtime = await make_runtime(
        WebhookConfig(jitter=False, retry_delay_ms=20, max_retries=5, poll_interval_ms=20),
        persistence=persistence,
    )
    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/ordered", arrivals), events=["message.sent"], ordered=True)
    )
    keys = ["order-1", "order-2", "order-3"]
    for n in range(8):
        await asyncio.gather(*(runtime.emit(event(n, key)) for key in keys))
    await wait_until(lambda: all_succeeded(runtime, 24), within=HANG_GUARD)
    for key in keys:
        ids = [f"evt_{key}_{n:03d}" for n in range(8)]
        seen = arrivals.by_key[f"evt_{key}"]
        assert sorted(seen) == seen, f"{key} arrived out of order: {seen}"
        assert list(dict.fromkeys(seen)) == ids


async def test_other_endpoints_and_keys_are_not_held_up(receiver, make_runtime):
    """While key A's first message waits for its retry, A's later messages wait too, but key B,
    unkeyed events and an unordered endpoint get theirs at once."""
    recovered = asyncio.Event()

    async def fails_a_first(request: web.Request, n: int) -> web.StreamResponse:
        body = await request.json()
        if body["id"] == "evt_A_000" and not recovered.is_set():
            return web.Response(status=503)
        return web.Response(status=200)

    clock = ManualClock(T0)
    runtime = await make_runtime(
        WebhookConfig(jitter=False, retry_delay_ms=60_000, max_retries=3), clock=clock
    )
    ordered = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/ordered", fails_a_first), events=["message.sent"], ordered=True
        )
    )
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/plain"), events=["message.sent"]))
    for n in range(3):
        for key in ("A", "B", None):
            await runtime.emit(event(n, key))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    to_ordered = [r.headers["webhook-id"] for r in receiver.at("/ordered")]
    assert [i for i in to_ordered if i.startswith("evt_A")] == ["evt_A_000"]
    assert [i for i in to_ordered if i.startswith("evt_B")] == [
        "evt_B_000",
        "evt_B_001",
        "evt_B_002",
    ]
    assert sorted(i for i in to_ordered if i.startswith("evt_free")) == [
        "evt_free_000",
        "evt_free_001",
        "evt_free_002",
    ]
    assert len(receiver.at("/plain")) == 9  # the unordered endpoint got everything
    page = await runtime.list_deliveries(DeliveryFilter(endpoint_id=ordered.id))
    rows = {d.event_id: d for d in page.items}
    assert rows["evt_A_000"].status is DeliveryStatus.PENDING
    assert rows["evt_A_001"].attempt_count == 0 and rows["evt_A_001"].ordering_key == "A"
    assert rows["evt_free_000"].ordering_key is None

    # The receiver recovers and the retry falls due: the rest of A follows, in order.
    recovered.set()
    clock.advance(seconds=61)
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    a_arrivals = [
        r.headers["webhook-id"]
        for r in receiver.at("/ordered")
        if r.headers["webhook-id"].startswith("evt_A")
    ]
    assert a_arrivals == ["evt_A_000", "evt_A_000", "evt_A_001", "evt_A_002"]
    page = await runtime.list_deliveries(DeliveryFilter(endpoint_id=ordered.id))
    assert {d.status for d in page.items} == {DeliveryStatus.SUCCESS}


async def test_the_memory_cap_keeps_a_keys_waiting_deliveries(receiver, make_runtime, wait_until):
    """Retention's row cap deletes finished deliveries only: a key's waiting ones all stay and
    still arrive in order."""
    recovered = asyncio.Event()

    async def fails_a_first(request: web.Request, n: int) -> web.StreamResponse:
        body = await request.json()
        if body["id"] == "evt_A_000" and not recovered.is_set():
            return web.Response(status=503)
        return web.Response(status=200)

    clock = ManualClock(T0)
    config = WebhookConfig(
        jitter=False,
        retry_delay_ms=60_000,
        max_retries=3,
        retention=RetentionPolicy(memory_max_rows=2),
    )
    runtime = await make_runtime(config, clock=clock)
    await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/ordered", fails_a_first), events=["message.sent"], ordered=True
        )
    )
    for n in range(5):
        await runtime.emit(event(n, "A"))
        await runtime.emit(event(n, None))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    await runtime.apply_retention()  # the unkeyed successes go (here or in the background)
    deliveries = (await runtime.stats()).deliveries
    assert deliveries.total == deliveries.pending == 5  # A's: the first waits for its retry

    recovered.set()
    clock.advance(seconds=61)
    ids = [f"evt_A_{n:03d}" for n in range(5)]

    def a_arrivals() -> list[str]:
        return [
            r.headers["webhook-id"]
            for r in receiver.at("/ordered")
            if r.headers["webhook-id"].startswith("evt_A")
        ]

    await wait_until(lambda: len(a_arrivals()) == 6, within=HANG_GUARD, what="all of key A")
    assert a_arrivals() == [ids[0], *ids]


@pytest.mark.parametrize("store", ["memory", "sqlite", "postgres"])
async def test_flush_sends_a_keys_due_deliveries_one_after_another(receiver, make_runtime, store):
    """Each delivery of the key becomes claimable only when the one before it is recorded,
    which may happen while flush's own claim runs: flush still sends them all."""
    persistence = await BACKENDS[store]()
    runtime = await make_runtime(WebhookConfig(batch_timeout_ms=20), persistence=persistence)
    await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/ordered"), events=["message.sent"], ordered=True)
    )
    await asyncio.gather(*(runtime.emit(event(n, "K")) for n in range(60)))
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)
    # (Concurrent emits have no order of their own: the store's is checked elsewhere.)
    arrived = [r.headers["webhook-id"] for r in receiver.at("/ordered")]
    assert sorted(arrived) == [f"evt_K_{n:03d}" for n in range(60)]


async def test_emit_sync_leaves_ordered_deliveries_to_the_dispatcher(
    receiver, make_runtime, wait_until
):
    runtime = await make_runtime(WebhookConfig(jitter=False, poll_interval_ms=20))
    await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/ordered"), events=["message.sent"], ordered=True)
    )
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/plain"), events=["message.sent"]))
    rows = await runtime.emit_sync(event(0, "K"))
    by_url = {r.url.rsplit("/", 1)[1]: r for r in rows}
    assert by_url["plain"].status is DeliveryStatus.SUCCESS
    assert by_url["ordered"].status is DeliveryStatus.PENDING
    assert by_url["ordered"].attempt_count == 0 and by_url["ordered"].ordering_key == "K"
    await wait_until(lambda: all_succeeded(runtime, 2), within=HANG_GUARD)


async def test_an_endpoint_without_ordering_ignores_the_key(receiver, make_runtime):
    runtime = await make_runtime()
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/plain"), events=["message.sent"])
    )
    assert endpoint.ordered is False
    [row] = await runtime.emit_sync(event(0, "K"))
    assert row.ordering_key is None and row.status is DeliveryStatus.SUCCESS
    updated = await runtime.update_endpoint(endpoint.id, ordered=True)
    assert updated.ordered is True
    [later] = await runtime.emit_sync(event(1, "K"))
    assert later.ordering_key == "K"


@pytest.mark.parametrize("key", ["", "x" * 256, "line\nbreak", 5])
def test_a_bad_ordering_key_is_refused(key):
    with pytest.raises(InvalidEventError, match="ordering_key"):
        WebhookEvent(id="evt_1", type="message.sent", timestamp=T0, ordering_key=key)


@pytest.mark.parametrize("flag", ["ordered", "verify"])
async def test_yes_no_options_must_be_booleans(receiver, make_runtime, flag):
    runtime = await make_runtime()
    with pytest.raises(InvalidEndpointError, match=flag):
        await runtime.add_endpoint(
            EndpointInput(url=receiver.url("/x"), events=["message.sent"], **{flag: "false"})
        )
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/y"), events=["message.sent"])
    )
    if flag == "ordered":
        with pytest.raises(InvalidEndpointError, match="ordered"):
            await runtime.update_endpoint(endpoint.id, ordered=1)  # type: ignore[arg-type]
    assert [e.id for e in await runtime.list_endpoints()] == [endpoint.id]
