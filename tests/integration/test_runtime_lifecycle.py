"""Lifecycle (flush, shutdown, ``async with``), crash recovery across workers, and bad input."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

import kmsg_webhook
from kmsg_webhook import (
    ConfigError,
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    HealthPolicy,
    InvalidEventError,
    ManualClock,
    RuntimeClosedError,
    SecurityOptions,
    UnknownEventTypeError,
    WebhookConfig,
    WebhookError,
    WebhookEvent,
    WebhookEventType,
    WebhookRuntimeService,
    create_in_memory_persistence,
)
from kmsg_webhook.transport import AiohttpTransport, LeanTransport, Target, TransportError
from kmsg_webhook.urlguard import GuardedResolver

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HANG_GUARD = 15
LOOPBACK = SecurityOptions(allow_private_hosts=True)


async def settle(runtime: Any) -> None:
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)


# --------------------------------------------------------------------------- flush / shutdown


async def test_flush_stores_and_sends_everything_due(receiver, make_runtime, make_event):
    runtime = await make_runtime()
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/hook"), events=["message.sent"]))
    emits = [asyncio.create_task(runtime.emit(make_event(f"evt_{i}"))) for i in range(30)]
    await settle(runtime)
    await asyncio.gather(*emits)

    page = await runtime.list_deliveries(limit=100)
    assert len(page.items) == 30
    assert {d.status for d in page.items} == {DeliveryStatus.SUCCESS}
    assert len(receiver.at("/hook")) == 30


async def test_shutdown_sends_what_was_emitted_and_closes(receiver, make_event):
    persistence = create_in_memory_persistence()
    runtime = WebhookRuntimeService(persistence=persistence, security=LOOPBACK)
    await runtime.add_endpoint(EndpointInput(url=receiver.url("/hook"), events=["message.sent"]))
    for i in range(5):
        await runtime.emit(make_event(f"evt_{i}"))
    transport = runtime._transport  # the runtime's own transport (white-box: closed on shutdown)
    assert isinstance(transport, LeanTransport)

    await asyncio.wait_for(runtime.shutdown(), HANG_GUARD)

    page = await persistence.delivery_store.list(DeliveryFilter())
    assert sorted(d.event_id for d in page.items) == [f"evt_{i}" for i in range(5)]
    assert {d.status for d in page.items} == {DeliveryStatus.SUCCESS}
    assert len(receiver.at("/hook")) == 5
    with pytest.raises(TransportError, match="closed"):
        await transport.post(
            Target.from_url(URL(receiver.url("/hook"))), {}, b"", time_limit=5, max_body_bytes=0
        )


async def test_shutdown_lets_an_in_flight_attempt_finish_and_records_it(receiver, make_event, gate):
    persistence = create_in_memory_persistence()
    runtime = WebhookRuntimeService(persistence=persistence, security=LOOPBACK)

    async def slow(request: web.Request, n: int) -> web.StreamResponse:
        await gate.wait()
        return web.Response(text="finally")

    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/slow", slow), events=["message.sent"])
    )
    await runtime.emit(make_event("evt_slow"))
    await asyncio.wait_for(receiver.arrived.wait(), HANG_GUARD)

    stopping = asyncio.create_task(runtime.shutdown())
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waiting for the attempt, not abandoning it
    with pytest.raises(RuntimeClosedError):
        await runtime.emit(make_event("evt_late"))
    gate.set()
    await asyncio.wait_for(stopping, HANG_GUARD)

    [delivery] = (await persistence.delivery_store.list(DeliveryFilter())).items
    assert delivery.status is DeliveryStatus.SUCCESS
    assert delivery.attempts[0].response_body == "finally"


async def test_closed_runtime_refuses_work_and_shutdown_twice_is_fine(receiver, make_event):
    runtime = WebhookRuntimeService(security=LOOPBACK)
    await runtime.start()
    await runtime.shutdown()
    await runtime.shutdown()
    event = make_event()
    for call in (
        runtime.emit(event),
        runtime.emit_sync(event),
        runtime.flush(),
        runtime.start(),
        runtime.add_endpoint(EndpointInput(url=receiver.url("/x"), events=["message.sent"])),
        runtime.list_deliveries(),
    ):
        with pytest.raises(RuntimeClosedError):
            await call


async def test_shutdown_of_a_never_started_runtime(make_event):
    runtime = WebhookRuntimeService()
    await runtime.shutdown()
    with pytest.raises(RuntimeClosedError):
        await runtime.emit(make_event())


async def test_async_with_starts_and_shuts_down(receiver, make_event):
    async with WebhookRuntimeService(security=LOOPBACK) as runtime:
        await runtime.add_endpoint(
            EndpointInput(url=receiver.url("/hook"), events=["message.sent"])
        )
        await runtime.emit(make_event("evt_ctx"))
        await settle(runtime)
        [delivery] = (await runtime.list_deliveries()).items
        assert delivery.status is DeliveryStatus.SUCCESS
    with pytest.raises(RuntimeClosedError):
        await runtime.emit(make_event())


async def test_a_given_session_is_used_and_left_open(receiver, make_event):
    async with aiohttp.ClientSession() as session:
        async with WebhookRuntimeService(session=session, security=LOOPBACK) as runtime:
            await runtime.add_endpoint(
                EndpointInput(url=receiver.url("/hook"), events=["message.sent"])
            )
            await runtime.emit(make_event())
            await settle(runtime)
        assert not session.closed
        assert len(receiver.at("/hook")) == 1


async def test_a_given_transport_is_used_and_left_open(receiver, make_event):
    transport = LeanTransport(resolver=GuardedResolver(allow_private_hosts=True))
    try:
        async with WebhookRuntimeService(transport=transport, security=LOOPBACK) as runtime:
            request = await _one_delivery(runtime, receiver, make_event("evt_given"))
        assert request.all("User-Agent") == [WebhookConfig().user_agent]
        after = await transport.post(
            Target.from_url(URL(receiver.url("/after"))), {}, b"{}", time_limit=5, max_body_bytes=64
        )
        assert after.status == 200
    finally:
        await transport.aclose()


async def test_a_session_and_a_transport_together_are_refused():
    async with aiohttp.ClientSession() as session:
        transport = AiohttpTransport(session)
        with pytest.raises(ConfigError, match="not both"):
            WebhookRuntimeService(session=session, transport=transport)


async def test_every_delivery_carries_json_content_type_and_our_user_agent(receiver, make_event):
    config = WebhookConfig(user_agent="acme-hooks/2")
    async with WebhookRuntimeService(config, security=LOOPBACK) as runtime:
        request = await _one_delivery(runtime, receiver, make_event("evt_plain"))
    assert request.all("Content-Type") == ["application/json"]
    assert request.all("User-Agent") == ["acme-hooks/2"]


async def test_a_given_sessions_own_default_headers_do_not_replace_ours(receiver, make_event):
    defaults = {"Content-Type": "text/plain", "User-Agent": "theirs/1", "X-Team": "billing"}
    session = aiohttp.ClientSession(headers=defaults)
    async with session, WebhookRuntimeService(session=session, security=LOOPBACK) as runtime:
        request = await _one_delivery(runtime, receiver, make_event("evt_given"))
    assert request.all("Content-Type") == ["application/json"]
    assert request.all("User-Agent") == [WebhookConfig().user_agent]
    assert request.headers["X-Team"] == "billing"  # the session's other defaults still apply


@pytest.mark.parametrize("given", [False, True])
@pytest.mark.parametrize("name", ["User-Agent", "user-agent"])
async def test_an_endpoints_own_user_agent_replaces_ours(receiver, make_event, name, given):
    session = aiohttp.ClientSession()
    runtime = WebhookRuntimeService(session=session if given else None, security=LOOPBACK)
    async with session, runtime:
        request = await _one_delivery(
            runtime, receiver, make_event("evt_agent"), headers={name: "crm/9"}
        )
    assert request.all("User-Agent") == ["crm/9"]
    assert request.all("Content-Type") == ["application/json"]


async def _one_delivery(
    runtime: WebhookRuntimeService,
    receiver: Any,
    event: WebhookEvent,
    headers: dict[str, str] | None = None,
) -> Any:
    """Register one endpoint (with ``headers``), emit ``event`` to it and return the one
    request the receiver got."""
    await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.sent"], headers=headers or {})
    )
    await runtime.emit(event)
    await settle(runtime)
    [request] = receiver.at("/hook")
    return request


# --------------------------------------------------------------------------- crash recovery


async def test_deliveries_claimed_by_a_crashed_worker_are_sent_once_after_the_lease(
    receiver, make_runtime, make_event
):
    clock = ManualClock(T0)
    persistence = create_in_memory_persistence()
    config = WebhookConfig(jitter=False, timeout_ms=5_000, lease_ms=60_000)
    crashed = await make_runtime(
        config, persistence=persistence, clock=clock, worker_id="a", dispatch=False
    )
    await crashed.add_endpoint(EndpointInput(url=receiver.url("/hook"), events=["message.sent"]))
    for i in range(6):
        await crashed.emit(make_event(f"evt_{i}"))
    # Worker "a" claims everything and dies mid-send (nothing is ever recorded).
    claimed = await persistence.delivery_store.claim(
        worker_id="a",
        now=clock.now(),
        lease_until=clock.now() + timedelta(milliseconds=config.effective_lease_ms),
        limit=100,
    )
    assert len(claimed) == 6

    survivor = await make_runtime(config, persistence=persistence, clock=clock, worker_id="b")
    await settle(survivor)
    assert receiver.received == []  # still leased by "a"

    clock.advance(ms=config.effective_lease_ms - 1)
    await settle(survivor)
    assert receiver.received == []

    clock.advance(ms=1)
    await settle(survivor)
    clock.advance(seconds=600)
    await settle(survivor)

    ids = sorted(r.headers["webhook-id"] for r in receiver.at("/hook"))
    assert ids == [f"evt_{i}" for i in range(6)]  # each exactly once
    page = await survivor.list_deliveries()
    assert {d.status for d in page.items} == {DeliveryStatus.SUCCESS}
    assert {d.attempt_count for d in page.items} == {1}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"id": ""}, "Event ID is required"),
        ({"id": None}, "Event ID is required"),
        ({"type": ""}, "Event type is required"),
        ({"type": None}, "Event type is required"),
        ({"timestamp": None}, "Event timestamp is required"),
        ({"timestamp": ""}, "Event timestamp is required"),
        ({"timestamp": "yesterday-ish"}, "Event timestamp must be a valid Date"),
        ({"timestamp": True}, "Event timestamp must be a valid Date"),
        ({"version": ""}, "Event version is required"),
    ],
)
def test_event_validation_uses_the_original_messages(fields, message):
    raw: dict[str, Any] = {
        "id": "evt_1",
        "type": "message.sent",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "version": "1.0",
    }
    raw.update(fields)
    with pytest.raises(InvalidEventError) as constructed:
        WebhookEvent(**raw)
    assert str(constructed.value) == message
    with pytest.raises(InvalidEventError) as parsed:
        WebhookEvent.from_wire(raw)
    assert str(parsed.value) == message


@pytest.mark.parametrize(
    "event_id",
    ["evt 1", "evt\t1", "evt\x7f", "évt", "e" * 256, "evt\n1"],
)
def test_event_ids_outside_visible_ascii_are_refused(event_id):
    # A well-typed event takes the one-line check; these must still fall to the detailed one.
    with pytest.raises(InvalidEventError, match="visible ASCII"):
        WebhookEvent(id=event_id, type=WebhookEventType.MESSAGE_SENT, timestamp=T0)


def test_events_outside_the_usual_types_are_still_checked_and_normalised():
    class Id(str):
        pass

    kst = timezone(timedelta(hours=9))
    event = WebhookEvent(
        id=Id("e" * 255),
        type="message.sent",
        timestamp=datetime(2026, 1, 1, 9, tzinfo=kst),
        data=MappingProxyType({"n": 1}),
    )
    assert event.type is WebhookEventType.MESSAGE_SENT
    assert event.timestamp == datetime(2026, 1, 1, tzinfo=UTC)
    assert event.timestamp.tzinfo is UTC
    with pytest.raises(InvalidEventError, match="data must be an object"):
        WebhookEvent(id="e", type=WebhookEventType.MESSAGE_SENT, timestamp=T0, data=[1])
    with pytest.raises(InvalidEventError, match="metadata must be an EventMetadata"):
        WebhookEvent(id="e", type=WebhookEventType.MESSAGE_SENT, timestamp=T0, metadata={"x": 1})


def test_missing_wire_fields_use_the_original_messages():
    with pytest.raises(InvalidEventError, match=r"^Event ID is required$"):
        WebhookEvent.from_wire({"type": "message.sent"})
    with pytest.raises(InvalidEventError, match=r"^Event timestamp is required$"):
        WebhookEvent.from_wire({"id": "e", "type": "message.sent", "version": "1.0"})


def test_unknown_event_type():
    with pytest.raises(UnknownEventTypeError) as raised:
        WebhookEvent(id="evt_1", type="message.exploded", timestamp=T0)
    assert isinstance(raised.value, InvalidEventError)
    assert isinstance(raised.value, WebhookError)
    assert "message.exploded" in str(raised.value)


async def test_emit_takes_only_events(make_runtime):
    runtime = await make_runtime()
    with pytest.raises(TypeError):
        await runtime.emit({"id": "evt_1", "type": "message.sent"})
    with pytest.raises(TypeError):
        await runtime.emit_sync("evt_1")


@pytest.mark.parametrize(
    "fields",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"max_retries": True},
        {"timeout_ms": 0},
        {"timeout_ms": -5},
        {"retry_delay_ms": -1},
        {"retry_delay_ms": 5_000, "max_delay_ms": 1_000},
        {"backoff_multiplier": 0.5},
        {"batch_size": 0},
        {"intake_queue_size": 0},
        {"max_concurrency": 0},
        {"max_concurrency_per_endpoint": 0},
        {"max_response_body_bytes": 0},
        {"timeout_ms": 30_000, "lease_ms": 30_000},
        {"timeout_ms": 30_000, "lease_ms": 10_000},
        {"lease_ms": 0},
        {"signature_scheme": "rot13"},
        {"enabled_events": "message.sent"},
        {"enabled_events": ["message.exploded"]},
        {"secret_key": ""},
        {"health": "strict"},
    ],
)
def test_config_validation(fields):
    with pytest.raises(ConfigError) as raised:
        WebhookConfig(**fields)
    assert isinstance(raised.value, WebhookError)


def test_health_policy_validation():
    with pytest.raises(ConfigError):
        HealthPolicy(max_consecutive_failures=0)
    with pytest.raises(ConfigError):
        HealthPolicy(max_failing_ms=-1)
    assert HealthPolicy(max_consecutive_failures=None, max_failing_ms=None)


def test_runtime_construction_errors():
    with pytest.raises(ConfigError):
        WebhookRuntimeService({"max_retries": 3})  # type: ignore[arg-type]
    persistence = create_in_memory_persistence()
    with pytest.raises(ConfigError):
        WebhookRuntimeService(endpoint_store=persistence.endpoint_store)
    with pytest.raises(ConfigError):
        WebhookRuntimeService(delivery_store=persistence.delivery_store)


def test_config_accepts_strings_for_enums():
    config = WebhookConfig(signature_scheme="kmsg", enabled_events=["message.sent"])
    assert config.enabled_events == frozenset({WebhookEventType.MESSAGE_SENT})
    assert config.effective_lease_ms == 2 * config.timeout_ms + 10_000


def test_every_exported_error_is_a_webhook_error():
    errors = [
        value
        for value in vars(kmsg_webhook).values()
        if inspect.isclass(value) and issubclass(value, Exception)
    ]
    assert len(errors) >= 15
    for error in errors:
        assert issubclass(error, WebhookError), error


# --------------------------------------------------------------------------- incomplete stores


class ReadmeStyleEndpointStore:
    """A custom endpoint store written against a smaller interface: add/update/remove/get/list."""

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}

    async def add(self, endpoint: Any) -> None:
        self.rows[endpoint.id] = endpoint

    async def update(self, endpoint: Any, *, reset_health: bool = False) -> None:
        self.rows[endpoint.id] = endpoint

    async def remove(self, endpoint_id: str) -> bool:
        return self.rows.pop(endpoint_id, None) is not None

    async def get(self, endpoint_id: str) -> Any:
        return self.rows.get(endpoint_id)

    async def list(self) -> list[Any]:
        return list(self.rows.values())


class ReadmeStyleDeliveryStore:
    """The same for deliveries: no claim, record or release, so nothing could ever be sent."""

    async def add(self, delivery: Any) -> None: ...
    async def update(self, delivery: Any) -> None: ...
    async def get(self, delivery_id: str) -> Any: ...
    async def list(self, filter: Any, *, limit: int = 100, cursor: str | None = None) -> Any: ...


def test_a_store_lacking_protocol_methods_is_refused_when_the_runtime_is_built() -> None:
    memory = create_in_memory_persistence()
    with pytest.raises(kmsg_webhook.IncompleteStoreError) as info:
        WebhookRuntimeService(
            endpoint_store=ReadmeStyleEndpointStore(), delivery_store=memory.delivery_store
        )
    assert info.value.missing == ("record_health", "rewrite_sealed")
    assert str(info.value).startswith(
        "endpoint_store ReadmeStyleEndpointStore lacks record_health, rewrite_sealed"
    )
    assert isinstance(info.value, ConfigError) and isinstance(info.value, TypeError)
    with pytest.raises(kmsg_webhook.IncompleteStoreError) as info:
        WebhookRuntimeService(
            endpoint_store=memory.endpoint_store, delivery_store=ReadmeStyleDeliveryStore()
        )
    assert info.value.role == "delivery_store"
    assert info.value.missing == (
        "insert_many", "claim", "record", "release", "stats", "queue_stats", "activity",
        "requeue", "purge", "purge_finished", "scan", "rewrite_payloads",
    )  # fmt: skip
