"""``emit_many``: many events in one store write, validated as ``emit`` validates each, all
before anything is written. Runs on the memory, SQLite and PostgreSQL stores."""

from __future__ import annotations

import math

import aiosqlite
import asyncpg
import pytest

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EmitResult,
    EndpointInput,
    InvalidArgumentError,
    InvalidBatchError,
    InvalidEventError,
    PayloadTooLargeError,
    RuntimeClosedError,
    WebhookConfig,
    WebhookEventType,
    WebhookPersistence,
    WebhookRuntimeService,
)
from support.runtime import EventFactory, RuntimeFactory
from support.servers import Receiver
from support.stores import (
    BACKENDS,
    drop_schema,
    new_schema,
    postgres_database,
    server_dsn,
    temporary_sqlite,
)

STORES = ["memory", "sqlite", "postgres"]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> WebhookPersistence:
    return await BACKENDS[request.param]()


async def _runtime(
    make_runtime: RuntimeFactory, store: WebhookPersistence, receiver: Receiver, **options: object
) -> WebhookRuntimeService:
    # The runtime owns the store from here: it is closed (and dropped) at shutdown.
    runtime = await make_runtime(
        WebhookConfig(jitter=False, **options),  # type: ignore[arg-type]
        persistence=store,
    )
    for path in ("/a", "/b"):
        await runtime.add_endpoint(EndpointInput(url=receiver.url(path), events=["message.sent"]))
    return runtime


async def test_every_event_is_stored_and_sent_and_each_says_what_it_stored(
    make_runtime: RuntimeFactory,
    make_event: EventFactory,
    receiver: Receiver,
    store: WebhookPersistence,
) -> None:
    runtime = await _runtime(make_runtime, store, receiver)
    events = [make_event(f"evt_{n}") for n in range(40)]
    unrouted = make_event("evt_nobody", type=WebhookEventType.MESSAGE_FAILED)
    results = await runtime.emit_many([*events, unrouted])
    assert results == [*(EmitResult(e.id, 2, 0) for e in events), EmitResult(unrouted.id, 0, 0)]
    await runtime.flush()
    page = await runtime.list_deliveries(DeliveryFilter(), limit=200)
    assert len(page.items) == 80
    assert {d.status for d in page.items} == {DeliveryStatus.SUCCESS}
    assert len(receiver.at("/a")) == len(receiver.at("/b")) == 40


async def test_emitting_again_stores_nothing_twice(
    make_runtime: RuntimeFactory,
    make_event: EventFactory,
    receiver: Receiver,
    store: WebhookPersistence,
) -> None:
    runtime = await _runtime(make_runtime, store, receiver)
    await runtime.emit(make_event("evt_1"))
    twice = make_event("evt_2")
    results = await runtime.emit_many([make_event("evt_1"), twice, twice, make_event("evt_3")])
    assert results == [
        EmitResult("evt_1", 0, 2),  # emitted before
        EmitResult("evt_2", 2, 0),
        EmitResult("evt_2", 0, 2),  # the same id twice in one call
        EmitResult("evt_3", 2, 0),
    ]
    await runtime.flush()
    assert (await runtime.persistence.delivery_store.stats(DeliveryFilter())).total == 6
    assert sorted(r.body.count(b'"evt_2"') for r in receiver.at("/a")) == [0, 0, 1]


async def test_a_bad_event_in_the_middle_refuses_the_whole_call(
    make_runtime: RuntimeFactory,
    make_event: EventFactory,
    receiver: Receiver,
    store: WebhookPersistence,
) -> None:
    runtime = await _runtime(make_runtime, store, receiver, max_payload_bytes=1024)
    good = [make_event(f"evt_{n}") for n in range(5)]
    nan = make_event("evt_nan", data={"n": math.nan})
    with pytest.raises(InvalidBatchError) as caught:
        await runtime.emit_many([*good[:2], nan, *good[2:]])
    assert (caught.value.index, caught.value.event_id) == (2, "evt_nan")
    assert isinstance(caught.value, InvalidEventError)
    assert "events[2] (id 'evt_nan')" in str(caught.value)
    assert "data.n" in str(caught.value) and "nothing was stored" in str(caught.value)

    big = make_event("evt_big", data={"text": "x" * 2000})
    with pytest.raises(InvalidBatchError) as caught:
        await runtime.emit_many([*good, big])
    assert caught.value.index == 5 and isinstance(caught.value.__cause__, PayloadTooLargeError)

    await runtime.flush()
    assert (await runtime.persistence.delivery_store.stats(DeliveryFilter())).total == 0
    assert receiver.received == []
    # Fixed, the same call stores everything.
    assert [r.stored for r in await runtime.emit_many(good)] == [2] * 5


async def test_what_is_not_an_event_is_refused_before_anything_is_stored(
    make_runtime: RuntimeFactory, make_event: EventFactory, receiver: Receiver
) -> None:
    runtime = await make_runtime()
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/a"), events=["message.sent"]))
    with pytest.raises(InvalidArgumentError, match=r"events\[1\] is a dict"):
        await runtime.emit_many([make_event(), {"id": "evt_x"}])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError, match="iterable of WebhookEvents"):
        await runtime.emit_many(make_event())  # type: ignore[arg-type]
    assert await runtime.emit_many([]) == []
    assert (await runtime.persistence.delivery_store.stats(DeliveryFilter())).total == 0
    await runtime.shutdown()
    with pytest.raises(RuntimeClosedError):
        await runtime.emit_many([make_event()])


async def test_types_outside_enabled_events_are_dropped_as_emit_drops_them(
    make_runtime: RuntimeFactory, make_event: EventFactory, receiver: Receiver
) -> None:
    runtime = await make_runtime(
        WebhookConfig(jitter=False, enabled_events=frozenset({WebhookEventType.MESSAGE_SENT}))
    )
    await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/a"), events=["message.sent", "message.failed"])
    )
    dropped = make_event("evt_off", type=WebhookEventType.MESSAGE_FAILED, data={"n": math.nan})
    results = await runtime.emit_many([dropped, make_event("evt_on")])
    assert results == [EmitResult("evt_off", 0, 0), EmitResult("evt_on", 1, 0)]


async def test_postgres_writes_the_whole_call_in_one_transaction(
    make_event: EventFactory, receiver: Receiver
) -> None:
    dsn = await server_dsn()
    schema = new_schema()
    db = postgres_database(dsn, schema)
    try:
        # Intake only: rows stay as the insert left them (no hand-off lease, no record).
        async with WebhookRuntimeService(persistence=db.persistence(), dispatch=False) as runtime:
            for n in range(3):
                await runtime.add_endpoint(
                    EndpointInput(url=f"https://hooks{n}.example.com/in", events=["message.sent"])
                )
            results = await runtime.emit_many([make_event(f"evt_{n}") for n in range(100)])
        assert sum(r.stored for r in results) == 300
        connection = await asyncpg.connect(dsn)
        try:
            transactions = await connection.fetchval(
                f'SELECT count(DISTINCT xmin::text) FROM "{schema}".kmsg_webhook_deliveries'
            )
        finally:
            await connection.close()
        assert transactions == 1
    finally:
        await drop_schema(dsn, schema)


async def test_a_call_joins_the_callers_transaction(
    make_runtime: RuntimeFactory, make_event: EventFactory, receiver: Receiver
) -> None:
    async with temporary_sqlite() as db:
        runtime = await make_runtime(persistence=db.persistence())
        await runtime.add_endpoint(EndpointInput(url=receiver.url("/a"), events=["message.sent"]))
        async with aiosqlite.connect(db.path) as conn:
            await runtime.emit_many([make_event("evt_rolled_back")], connection=conn)
            await conn.rollback()
            results = await runtime.emit_many([make_event("evt_committed")], connection=conn)
            await conn.commit()
        assert results == [EmitResult("evt_committed", 1, 0)]
        await runtime.flush()
        assert [r.body.count(b"evt_committed") for r in receiver.at("/a")] == [1]
        assert (await db.delivery_store.stats(DeliveryFilter())).total == 1
        await runtime.shutdown()  # before the temporary file goes away
