"""Runtime intake: event → validate → enabled_events → match endpoints → rows stored → sent.

Everything runs against real aiohttp servers on 127.0.0.1 (the ``receiver`` fixture); the only
test doubles wrap the delivery-store protocol (counting or blocking ``insert_many``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    DeliveryStore,
    EndpointFilters,
    EndpointInput,
    EventMetadata,
    ManualClock,
    StoreError,
    WebhookConfig,
    WebhookDelivery,
    WebhookEventType,
    create_in_memory_persistence,
    verify,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HANG_GUARD = 15


class WatchedDeliveryStore:
    """Wraps a delivery store: notes every ``insert_many`` and ``record`` call; can hold either
    on a gate, and fail records."""

    def __init__(self, inner: DeliveryStore) -> None:
        self.inner = inner
        self.insert_calls: list[list[WebhookDelivery]] = []
        self.entered = asyncio.Event()
        self.hold: asyncio.Event | None = None
        self.record_sizes: list[int] = []
        self.recording = asyncio.Event()
        self.hold_records: asyncio.Event | None = None
        self.record_error: Exception | None = None

    async def record(self, outcomes: Sequence[Any]) -> int:
        self.record_sizes.append(len(outcomes))
        self.recording.set()
        if self.hold_records is not None:
            await self.hold_records.wait()
        if self.record_error is not None:
            raise self.record_error
        return await self.inner.record(outcomes)

    async def insert_many(
        self, deliveries: Sequence[WebhookDelivery], *, connection: object | None = None
    ) -> list[str]:
        self.insert_calls.append(list(deliveries))
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        return await self.inner.insert_many(deliveries, connection=connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def settle(runtime: Any) -> None:
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)


async def all_deliveries(runtime: Any, **filter_fields: Any) -> list[WebhookDelivery]:
    page = await runtime.list_deliveries(DeliveryFilter(**filter_fields), limit=1000)
    return list(page.items)


# --------------------------------------------------------------------------- the pipeline


async def test_rows_are_stored_before_the_send_then_the_attempt_is_recorded(
    receiver, make_runtime, make_event, gate
):
    clock = ManualClock(T0)
    runtime = await make_runtime(clock=clock)
    seen_at_send: list[list[WebhookDelivery]] = []

    async def hold_until_seen(request: web.Request, n: int) -> web.StreamResponse:
        # At request time the row must already be in the outbox.
        seen_at_send.append(await all_deliveries(runtime, event_id="evt_pipe"))
        await gate.wait()
        return web.json_response({"received": True})

    url = receiver.on("/hook", hold_until_seen)
    endpoint = await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    event = make_event("evt_pipe")

    await asyncio.wait_for(runtime.emit(event), HANG_GUARD)  # returns once stored
    await asyncio.wait_for(receiver.arrived.wait(), HANG_GUARD)

    # The receiver is blocked: the test sees the pending, claimed row with no attempt yet.
    [row] = await all_deliveries(runtime)
    assert row.status is DeliveryStatus.PENDING
    assert row.attempt_count == 0
    assert row.endpoint_id == endpoint.id
    assert row.event_id == "evt_pipe"
    assert row.event_type is WebhookEventType.MESSAGE_SENT
    assert row.payload == event.to_json()
    assert row.created_at == T0
    assert row.lease_owner == runtime.worker_id
    [[at_send]] = seen_at_send
    assert at_send.id == row.id
    assert at_send.status is DeliveryStatus.PENDING

    gate.set()
    await settle(runtime)

    done = await runtime.get_delivery(row.id)
    assert done is not None
    assert done.status is DeliveryStatus.SUCCESS
    assert done.attempt_count == 1
    assert done.completed_at == T0
    assert done.next_attempt_at is None
    assert done.lease_owner is None
    assert done.last_error is None
    [attempt] = done.attempts
    assert attempt.attempt_number == 1
    assert attempt.http_status == 200
    assert attempt.response_body == '{"received": true}'
    assert attempt.started_at == T0

    [request] = receiver.at("/hook")
    assert request.body == event.to_json().encode()
    assert request.headers["Content-Type"] == "application/json"
    received = verify(request.body, request.headers, endpoint.secret, now=T0.timestamp())
    assert received == event


async def test_event_type_outside_enabled_events_is_dropped_and_nothing_is_stored(
    receiver, make_runtime, make_event
):
    persistence = create_in_memory_persistence()
    watched = WatchedDeliveryStore(persistence.delivery_store)
    runtime = await make_runtime(
        WebhookConfig(jitter=False, enabled_events=[WebhookEventType.MESSAGE_SENT]),
        persistence=persistence,
        delivery_store=watched,
    )
    await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.sent", "message.failed"])
    )

    await runtime.emit(make_event(type="message.failed"))
    assert await runtime.emit_sync(make_event(type="message.failed")) == []
    await settle(runtime)

    assert watched.insert_calls == []
    assert await all_deliveries(runtime) == []
    assert receiver.received == []

    await runtime.emit(make_event("evt_enabled", type="message.sent"))
    await settle(runtime)
    assert [d.event_id for d in await all_deliveries(runtime)] == ["evt_enabled"]


async def test_endpoint_matching_by_status_event_type_and_fail_closed_filters(
    receiver, make_runtime, make_event
):
    runtime = await make_runtime(dispatch=False)
    add = runtime.add_endpoint
    plain = await add(EndpointInput(url=receiver.url("/plain"), events=["message.sent"]))
    await add(EndpointInput(url=receiver.url("/failed-only"), events=["message.failed"]))
    await add(EndpointInput(url=receiver.url("/off"), events=["message.sent"], active=False))
    await add(
        EndpointInput(url=receiver.url("/paused"), events=["message.sent"], status="suspended")
    )
    by_provider = await add(
        EndpointInput(
            url=receiver.url("/provider"),
            events=["message.sent"],
            filters=EndpointFilters(provider_id=["aligo"]),
        )
    )
    by_both = await add(
        EndpointInput(
            url=receiver.url("/both"),
            events=["message.sent"],
            filters=EndpointFilters(provider_id=["aligo"], channel_id=["ch_1"]),
        )
    )
    two = await add(
        EndpointInput(
            url=receiver.url("/two"),
            events=["message.sent"],
            filters=EndpointFilters(provider_id=["iwinv", "aligo", "aligo"]),
        )
    )

    await runtime.emit(make_event("no_meta"))
    await runtime.emit(make_event("aligo", metadata=EventMetadata(provider_id="aligo")))
    await runtime.emit(
        make_event("aligo_ch1", metadata=EventMetadata(provider_id="aligo", channel_id="ch_1"))
    )
    await runtime.emit(
        make_event("aligo_ch2", metadata=EventMetadata(provider_id="aligo", channel_id="ch_2"))
    )
    await runtime.emit(make_event("other", metadata=EventMetadata(provider_id="iwinv")))

    async def targets(event_id: str) -> set[str]:
        return {d.endpoint_id for d in await all_deliveries(runtime, event_id=event_id)}

    # Missing metadata never passes a filter (fail closed); inactive/suspended get nothing.
    assert await targets("no_meta") == {plain.id}
    assert await targets("aligo") == {plain.id, by_provider.id, two.id}
    assert await targets("aligo_ch1") == {plain.id, by_provider.id, by_both.id, two.id}
    assert await targets("aligo_ch2") == {plain.id, by_provider.id, two.id}
    assert await targets("other") == {plain.id, two.id}
    # Each event is stored once per matching endpoint (a provider listed twice is one match).
    assert len(await all_deliveries(runtime, event_id="aligo")) == 3
    assert receiver.received == []  # an intake-only runtime sends nothing by itself


async def test_event_with_no_matching_endpoint_stores_nothing(receiver, make_runtime, make_event):
    persistence = create_in_memory_persistence()
    watched = WatchedDeliveryStore(persistence.delivery_store)
    runtime = await make_runtime(persistence=persistence, delivery_store=watched)
    await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["template.created"])
    )
    await runtime.emit(make_event())
    await settle(runtime)
    assert watched.insert_calls == []
    assert receiver.received == []


# --------------------------------------------------------------------------- group commit


async def test_concurrent_emits_are_group_committed(receiver, make_runtime, make_event):
    persistence = create_in_memory_persistence()
    watched = WatchedDeliveryStore(persistence.delivery_store)
    runtime = await make_runtime(
        WebhookConfig(jitter=False, batch_size=10),
        persistence=persistence,
        delivery_store=watched,
        dispatch=False,
    )
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/hook"), events=["message.sent"]))

    events = [make_event(f"evt_{i:03d}") for i in range(200)]
    await asyncio.wait_for(asyncio.gather(*(runtime.emit(e) for e in events)), HANG_GUARD)

    calls = watched.insert_calls
    assert len(calls) <= 25, f"{len(calls)} insert_many calls for 200 emits"
    assert all(len(rows) <= 10 for rows in calls)  # never more than batch_size events a write
    stored = sorted(d.event_id for rows in calls for d in rows)
    assert stored == sorted(e.id for e in events)
    assert len(await all_deliveries(runtime)) == 200


async def test_a_lone_emit_does_not_wait_for_the_batch_timeout(receiver, make_runtime, make_event):
    runtime = await make_runtime(
        WebhookConfig(jitter=False, batch_size=100, batch_timeout_ms=60_000), dispatch=False
    )
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/hook"), events=["message.sent"]))

    # A 60 s batch window would trip these hang guards if light load waited for company.
    await asyncio.wait_for(runtime.emit(make_event("evt_lone")), 10)
    for i in range(3):
        await asyncio.wait_for(runtime.emit(make_event(f"evt_seq_{i}")), 10)
    assert len(await all_deliveries(runtime)) == 4


async def test_intake_is_bounded_and_loses_nothing(receiver, make_runtime, make_event):
    persistence = create_in_memory_persistence()
    watched = WatchedDeliveryStore(persistence.delivery_store)
    watched.hold = asyncio.Event()
    runtime = await make_runtime(
        WebhookConfig(jitter=False, intake_queue_size=5, batch_size=10),
        persistence=persistence,
        delivery_store=watched,
        dispatch=False,
    )
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/hook"), events=["message.sent"]))

    events = [make_event(f"evt_{i}") for i in range(9)]
    tasks = [asyncio.create_task(runtime.emit(e)) for e in events]
    try:
        await asyncio.wait_for(watched.entered.wait(), HANG_GUARD)
        for _ in range(50):  # give every emit many chances to slip in
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)

        # Five events fill the intake and are being written; the rest wait for room.
        assert not any(t.done() for t in tasks)
        assert sum(len(rows) for rows in watched.insert_calls) == 5
        assert {d.event_id for d in watched.insert_calls[0]} == {e.id for e in events[:5]}
    finally:
        watched.hold.set()
    await asyncio.wait_for(asyncio.gather(*tasks), HANG_GUARD)

    stored = await all_deliveries(runtime)
    assert sorted(d.event_id for d in stored) == sorted(e.id for e in events)
    assert sum(len(rows) for rows in watched.insert_calls) == 9


async def test_intake_errors_reach_every_emitter_of_the_batch(receiver, make_runtime, make_event):
    runtime = await make_runtime(dispatch=False)
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/hook"), events=["message.sent"]))
    # The in-memory store cannot join a caller's transaction: a clear StoreError, not a hang.
    with pytest.raises(StoreError):
        await runtime.emit(make_event(), connection=object())
    assert await all_deliveries(runtime) == []


# --------------------------------------------------------------------------- idempotency


async def test_emitting_the_same_event_twice_creates_one_delivery_per_endpoint(
    receiver, make_runtime, make_event
):
    runtime = await make_runtime()
    first = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/a"), events=["message.sent"])
    )
    second = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/b"), events=["message.sent"])
    )
    event = make_event("evt_dup")
    await runtime.emit(event)
    await runtime.emit(event)
    await asyncio.gather(runtime.emit(event), runtime.emit(event))
    await settle(runtime)

    rows = await all_deliveries(runtime)
    assert sorted(d.endpoint_id for d in rows) == sorted([first.id, second.id])
    assert len(receiver.at("/a")) == 1
    assert len(receiver.at("/b")) == 1


# --------------------------------------------------------------------------- emit_sync


async def test_emit_sync_stores_sends_now_and_returns_the_recorded_deliveries(
    receiver, make_runtime, make_event
):
    clock = ManualClock(T0)
    runtime = await make_runtime(clock=clock)
    rows_at_send: list[list[WebhookDelivery]] = []

    async def check_outbox(request: web.Request, n: int) -> web.StreamResponse:
        rows_at_send.append(await all_deliveries(runtime))
        return web.Response(text="ok")

    ok = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/ok", check_outbox), events=["message.sent"])
    )

    async def unavailable(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=503)

    down = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/down", unavailable), events=["message.sent"])
    )
    event = make_event("evt_sync")

    deliveries = await asyncio.wait_for(runtime.emit_sync(event), HANG_GUARD)

    by_endpoint = {d.endpoint_id: d for d in deliveries}
    assert set(by_endpoint) == {ok.id, down.id}
    sent = by_endpoint[ok.id]
    assert sent.status is DeliveryStatus.SUCCESS
    assert sent.attempt_count == 1
    assert sent.attempts[0].http_status == 200
    assert sent.attempts[0].response_body == "ok"
    retrying = by_endpoint[down.id]
    assert retrying.status is DeliveryStatus.PENDING
    assert retrying.attempts[0].http_status == 503
    assert retrying.next_attempt_at == T0 + timedelta(milliseconds=1000)
    # What emit_sync returned is what was stored.
    for delivery in deliveries:
        assert await runtime.get_delivery(delivery.id) == delivery
    # Both rows existed before the first request went out.
    assert len(rows_at_send) == 1
    assert {d.endpoint_id for d in rows_at_send[0]} == {ok.id, down.id}

    # Idempotent: the same event again creates nothing and sends nothing.
    assert await runtime.emit_sync(event) == []
    await runtime.emit(event)
    await settle(runtime)
    assert len(receiver.at("/ok")) == 1
    assert len(receiver.at("/down")) == 1
    assert len(await all_deliveries(runtime)) == 2


async def test_concurrent_emit_sync_callers_share_their_record_round_trips(
    receiver, make_runtime, make_event, wait_until
):
    persistence = create_in_memory_persistence()
    store = WatchedDeliveryStore(persistence.delivery_store)
    store.hold_records = asyncio.Event()
    runtime = await make_runtime(
        WebhookConfig(jitter=False, max_concurrency_per_endpoint=10),
        persistence=persistence,
        delivery_store=store,
    )
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/a"), events=["message.sent"]))
    callers = [asyncio.create_task(runtime.emit_sync(make_event(f"evt_{i}"))) for i in range(10)]
    await wait_until(lambda: len(receiver.at("/a")) == 10, what="all ten attempts sent")
    await wait_until(store.recording.is_set, what="the first record under way")
    assert not any(caller.done() for caller in callers)  # each waits for its record

    store.hold_records.set()
    returned = await asyncio.wait_for(asyncio.gather(*callers), HANG_GUARD)

    assert [d.status for rows in returned for d in rows] == [DeliveryStatus.SUCCESS] * 10
    # The first record took what was there when it started; the others waited for one more.
    assert sum(store.record_sizes) == 10
    assert len(store.record_sizes) <= 2
    for rows in returned:
        assert await runtime.get_delivery(rows[0].id) == rows[0]


async def test_emit_sync_raises_when_its_record_fails_and_the_row_stays_leased(
    receiver, make_runtime, make_event
):
    persistence = create_in_memory_persistence()
    store = WatchedDeliveryStore(persistence.delivery_store)
    store.record_error = StoreError("the database went away")
    runtime = await make_runtime(persistence=persistence, delivery_store=store)
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/a"), events=["message.sent"]))

    with pytest.raises(StoreError, match="went away"):
        await asyncio.wait_for(runtime.emit_sync(make_event("evt_lost_record")), HANG_GUARD)

    assert len(receiver.at("/a")) == 1
    [row] = await all_deliveries(runtime)
    # Unrecorded: pending under this worker's lease, sent again when the lease runs out.
    assert row.status is DeliveryStatus.PENDING
    assert row.attempt_count == 0
    assert row.lease_owner == runtime.worker_id


async def test_an_emit_sync_caller_cancelled_while_its_record_waits_still_gets_it_recorded(
    receiver, make_runtime, make_event, wait_until
):
    persistence = create_in_memory_persistence()
    store = WatchedDeliveryStore(persistence.delivery_store)
    store.hold_records = asyncio.Event()
    runtime = await make_runtime(persistence=persistence, delivery_store=store)
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/a"), events=["message.sent"]))
    first = asyncio.create_task(runtime.emit_sync(make_event("evt_first")))
    await wait_until(store.recording.is_set, what="the first record under way")
    # The second outcome queues behind the record in progress; its caller gives up there.
    second = asyncio.create_task(runtime.emit_sync(make_event("evt_gave_up")))
    await wait_until(lambda: len(receiver.at("/a")) == 2, what="the second attempt sent")
    for _ in range(5):
        await asyncio.sleep(0)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    store.hold_records.set()
    await asyncio.wait_for(first, HANG_GUARD)

    async def both_recorded() -> bool:
        rows = await all_deliveries(runtime)
        return [d.status for d in rows] == [DeliveryStatus.SUCCESS] * 2

    await wait_until(both_recorded, what="both attempts recorded")
    await settle(runtime)
    assert store.record_sizes == [1, 1]
    assert all(d.lease_owner is None for d in await all_deliveries(runtime))
    assert len(receiver.at("/a")) == 2  # each sent once: no row was left to be sent again
