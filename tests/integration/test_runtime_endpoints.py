"""The endpoint API (add, update, remove, get, list, probe) and the deliveries API
(list with filters and cursor, get, retry, replay, stats, purge)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryNotFoundError,
    DeliveryStatus,
    DuplicateEndpointError,
    EndpointFilters,
    EndpointInput,
    EndpointNotFoundError,
    EndpointStatus,
    EndpointUrlError,
    InvalidEndpointError,
    InvalidSecretError,
    ManualClock,
    RetryConfig,
    WebhookConfig,
    WebhookDelivery,
    WebhookEventType,
    add_endpoints,
    probe_endpoint,
    verify,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HANG_GUARD = 15


async def settle(runtime: Any) -> None:
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)


async def deliveries(runtime: Any, **filter_fields: Any) -> list[WebhookDelivery]:
    page = await runtime.list_deliveries(DeliveryFilter(**filter_fields), limit=1000)
    return list(page.items)


def respond(*statuses: int) -> Any:
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=statuses[min(n, len(statuses)) - 1], text=f"hit {n}")

    return behaviour


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


# --------------------------------------------------------------------------- add / get / list


async def test_add_endpoint_fills_in_id_times_status_and_a_generated_secret(
    receiver, make_runtime, clock
):
    runtime = await make_runtime(clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.url("/hook"),
            events=["message.sent", WebhookEventType.MESSAGE_FAILED, "message.sent"],
            name="orders",
            headers={"X-Tenant": "t1"},
        )
    )
    assert endpoint.id.startswith("ep_")
    assert endpoint.url == receiver.url("/hook")
    assert endpoint.events == (WebhookEventType.MESSAGE_SENT, WebhookEventType.MESSAGE_FAILED)
    assert endpoint.status is EndpointStatus.ACTIVE and endpoint.active
    assert endpoint.created_at == endpoint.updated_at == T0
    assert endpoint.name == "orders"
    assert dict(endpoint.headers) == {"X-Tenant": "t1"}
    assert endpoint.secret is not None and endpoint.secret.startswith("whsec_")
    assert len(base64.b64decode(endpoint.secret[len("whsec_") :])) >= 24
    assert endpoint.secret not in repr(endpoint)

    assert await runtime.get_endpoint(endpoint.id) == endpoint
    assert await runtime.list_endpoints() == [endpoint]
    assert await runtime.get_endpoint("ep_missing") is None

    chosen = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.url("/mine"),
            events=["message.sent"],
            id="ep_mine",
            secret="whsec_bXktb3duLXNlY3JldA==",
            active=False,
        )
    )
    assert chosen.id == "ep_mine"
    assert chosen.secret == "whsec_bXktb3duLXNlY3JldA=="
    assert chosen.status is EndpointStatus.INACTIVE


async def test_duplicate_url_or_id_is_refused(receiver, make_runtime):
    runtime = await make_runtime()
    first = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/hook"), events=["message.sent"], id="ep_one")
    )
    with pytest.raises(DuplicateEndpointError) as same_url:
        await runtime.add_endpoint(
            EndpointInput(url=receiver.url("/hook"), events=["message.read"])
        )
    assert same_url.value.field == "url"
    with pytest.raises(DuplicateEndpointError) as same_id:
        await runtime.add_endpoint(
            EndpointInput(url=receiver.url("/other"), events=["message.sent"], id="ep_one")
        )
    assert same_id.value.field == "id"
    assert await runtime.list_endpoints() == [first]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"events": []}, InvalidEndpointError),
        ({"events": "message.sent"}, InvalidEndpointError),
        ({"events": ["message.exploded"]}, InvalidEndpointError),
        ({"url": "https://"}, EndpointUrlError),
        ({"url": "javascript:alert(1)"}, EndpointUrlError),
        ({"secret": ""}, InvalidEndpointError),
        ({"secret": "whsec_***"}, InvalidSecretError),
        ({"headers": {"Bad Header": "x"}}, InvalidEndpointError),
        ({"headers": {"X-Ok": "line\r\nbreak"}}, InvalidEndpointError),
        ({"status": "paused-ish"}, InvalidEndpointError),
    ],
)
async def test_invalid_endpoint_input_is_refused_and_nothing_is_stored(
    receiver, make_runtime, changes, error
):
    runtime = await make_runtime()
    fields: dict[str, Any] = {"url": receiver.url("/hook"), "events": ["message.sent"]}
    fields.update(changes)
    with pytest.raises(error):
        await runtime.add_endpoint(EndpointInput(**fields))
    assert await runtime.list_endpoints() == []


def test_invalid_retry_config_is_refused():
    with pytest.raises(InvalidEndpointError):
        RetryConfig(max_retries=-1)
    with pytest.raises(InvalidEndpointError):
        RetryConfig(backoff_multiplier=0.5)
    with pytest.raises(InvalidEndpointError):
        EndpointFilters(provider_id="aligo")  # type: ignore[arg-type]


async def test_add_endpoints_adds_in_order_and_stops_at_the_first_error(receiver, make_runtime):
    runtime = await make_runtime()
    added = await add_endpoints(
        runtime,
        [
            EndpointInput(url=receiver.url("/a"), events=["message.sent"]),
            EndpointInput(url=receiver.url("/b"), events=["message.failed"]),
        ],
    )
    assert [e.url for e in added] == [receiver.url("/a"), receiver.url("/b")]
    with pytest.raises(EndpointUrlError):
        await runtime.add_endpoints(
            [
                EndpointInput(url=receiver.url("/c"), events=["message.sent"]),
                EndpointInput(url="ftp://nope.example.com/", events=["message.sent"]),
                EndpointInput(url=receiver.url("/d"), events=["message.sent"]),
            ]
        )
    urls = {e.url for e in await runtime.list_endpoints()}
    assert urls == {receiver.url("/a"), receiver.url("/b"), receiver.url("/c")}


# --------------------------------------------------------------------------- update


async def test_update_endpoint_changes_fields_and_revalidates(
    receiver, make_runtime, make_event, clock
):
    runtime = await make_runtime(clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/old"), events=["message.sent"])
    )
    clock.advance(seconds=5)
    updated = await runtime.update_endpoint(
        endpoint.id,
        url=receiver.url("/new"),
        events=["message.sent", "message.read"],
        name="renamed",
        headers={"X-Env": "prod"},
    )
    assert updated.url == receiver.url("/new")
    assert updated.events == (WebhookEventType.MESSAGE_SENT, WebhookEventType.MESSAGE_READ)
    assert updated.name == "renamed"
    assert updated.updated_at == T0 + timedelta(seconds=5)
    assert updated.created_at == T0
    assert updated.secret == endpoint.secret
    assert await runtime.get_endpoint(endpoint.id) == updated

    await runtime.emit(make_event("evt_read", type="message.read"))
    await settle(runtime)
    [request] = receiver.received
    assert request.path == "/new"
    assert request.headers["X-Env"] == "prod"

    with pytest.raises(EndpointUrlError):
        await runtime.update_endpoint(endpoint.id, url="gopher://example.com/")
    with pytest.raises(InvalidEndpointError):
        await runtime.update_endpoint(endpoint.id, events=[])
    with pytest.raises(EndpointNotFoundError):
        await runtime.update_endpoint("ep_missing", name="x")
    assert await runtime.get_endpoint(endpoint.id) == updated

    paused = await runtime.update_endpoint(endpoint.id, active=False)
    assert paused.status is EndpointStatus.INACTIVE
    await runtime.emit(make_event("evt_paused"))
    await settle(runtime)
    assert await deliveries(runtime, event_id="evt_paused") == []


async def test_unknown_endpoint_ids_raise(make_runtime):
    runtime = await make_runtime()
    with pytest.raises(EndpointNotFoundError):
        await runtime.rotate_secret("ep_missing")
    with pytest.raises(EndpointNotFoundError):
        await probe_endpoint(runtime, "ep_missing")
    assert await runtime.remove_endpoint("ep_missing") is False


# --------------------------------------------------------------------------- remove / disable


async def test_removing_an_endpoint_fails_its_pending_deliveries_without_a_request(
    receiver, make_runtime, make_event, clock
):
    runtime = await make_runtime(clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", respond(503)), events=["message.sent"])
    )
    await runtime.emit(make_event())
    await settle(runtime)  # 503: a retry is scheduled

    assert await runtime.remove_endpoint(endpoint.id) is True
    assert await runtime.get_endpoint(endpoint.id) is None
    assert await runtime.list_endpoints() == []
    clock.advance(seconds=1)
    await settle(runtime)

    [delivery] = await deliveries(runtime)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.last_error == "endpoint was removed"
    assert delivery.attempt_count == 1
    assert delivery.completed_at == clock.now()
    assert receiver.hits["/hook"] == 1


@pytest.mark.parametrize("status", ["inactive", "suspended"])
async def test_deliveries_for_a_disabled_endpoint_end_failed_without_a_request(
    receiver, make_runtime, make_event, clock, status
):
    runtime = await make_runtime(clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", respond(500, 200)), events=["message.sent"])
    )
    await runtime.emit(make_event())
    await settle(runtime)
    await runtime.update_endpoint(endpoint.id, status=status)
    clock.advance(seconds=1)
    await settle(runtime)

    [delivery] = await deliveries(runtime)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.last_error == f"endpoint is {status}"
    assert receiver.hits["/hook"] == 1


# --------------------------------------------------------------------------- probe


async def test_probe_sends_exactly_one_signed_maintenance_event_and_stores_nothing(
    receiver, make_runtime, clock
):
    runtime = await make_runtime(clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", respond(200)), events=["message.sent"])
    )
    result = await asyncio.wait_for(probe_endpoint(runtime, endpoint.id), HANG_GUARD)

    assert result.success is True
    assert result.endpoint_id == endpoint.id
    assert result.url == endpoint.url
    assert result.http_status == 200
    assert result.error is None
    assert result.response_time_ms >= 0
    assert result.tested_at == T0
    [request] = receiver.received
    event = verify(request.body, request.headers, endpoint.secret, now=T0.timestamp())
    assert event.type is WebhookEventType.SYSTEM_MAINTENANCE
    assert json.loads(request.body)["type"] == "system.maintenance"
    assert await deliveries(runtime) == []
    assert (await runtime.stats()).deliveries.total == 0


async def test_a_failing_probe_is_not_retried(receiver, make_runtime, clock):
    runtime = await make_runtime(clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", respond(503)), events=["message.sent"])
    )
    result = await runtime.probe_endpoint(endpoint.id, data={"ping": 1})
    clock.advance(seconds=60)
    await settle(runtime)
    assert result.success is False
    assert result.http_status == 503
    assert result.error is not None and "503" in result.error
    assert receiver.hits["/hook"] == 1
    assert json.loads(receiver.received[0].body)["data"] == {"ping": 1}
    assert await deliveries(runtime) == []


async def test_probe_of_an_unreachable_endpoint_reports_the_error(make_runtime):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runtime = await make_runtime()
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=f"http://127.0.0.1:{port}/hook", events=["message.sent"], active=False)
    )
    result = await runtime.probe_endpoint(endpoint.id)  # probes ignore the status
    assert result.success is False
    assert result.http_status is None
    assert result.error


# --------------------------------------------------------------------------- deliveries API


async def test_list_deliveries_filters_and_pages_newest_first(
    receiver, make_runtime, make_event, clock
):
    runtime = await make_runtime(clock=clock, dispatch=False)
    a = await runtime.add_endpoint(EndpointInput(url=receiver.url("/a"), events=["message.sent"]))
    b = await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/b"), events=["message.sent", "message.read"])
    )
    for i in range(5):
        await runtime.emit(make_event(f"sent_{i}"))
        clock.advance(seconds=1)
    await runtime.emit(make_event("read_0", type="message.read"))

    everything = await deliveries(runtime)
    assert len(everything) == 11
    assert [d.created_at for d in everything] == sorted(
        (d.created_at for d in everything), reverse=True
    )
    assert {d.endpoint_id for d in await deliveries(runtime, endpoint_id=a.id)} == {a.id}
    assert len(await deliveries(runtime, endpoint_id=b.id)) == 6
    [read] = await deliveries(runtime, event_type=WebhookEventType.MESSAGE_READ)
    assert read.event_id == "read_0" and read.endpoint_id == b.id
    assert len(await deliveries(runtime, event_id="sent_3")) == 2
    assert len(await deliveries(runtime, statuses=(DeliveryStatus.PENDING,))) == 11
    assert await deliveries(runtime, statuses=(DeliveryStatus.SUCCESS,)) == []
    window = await deliveries(
        runtime, created_after=T0 + timedelta(seconds=1), created_before=T0 + timedelta(seconds=3)
    )
    assert {d.event_id for d in window} == {"sent_1", "sent_2"}

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await runtime.list_deliveries(limit=4, cursor=cursor)
        assert len(page.items) <= 4
        seen.extend(d.id for d in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [d.id for d in everything]
    assert (await runtime.list_deliveries(limit=0)).items == ()


async def test_get_and_retry_delivery(receiver, make_runtime, make_event, clock):
    runtime = await make_runtime(clock=clock)
    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", respond(400, 200)), events=["message.sent"])
    )
    await runtime.emit(make_event())
    await settle(runtime)
    [failed] = await deliveries(runtime)
    assert failed.status is DeliveryStatus.FAILED
    assert await runtime.get_delivery(failed.id) == failed
    assert await runtime.get_delivery("dlv_missing") is None
    with pytest.raises(DeliveryNotFoundError):
        await runtime.retry_delivery("dlv_missing")

    clock.advance(seconds=30)
    queued = await runtime.retry_delivery(failed.id)
    assert queued.status is DeliveryStatus.PENDING
    assert queued.next_attempt_at == T0 + timedelta(seconds=30)
    assert queued.attempt_count == 1  # history kept
    await settle(runtime)
    done = await runtime.get_delivery(failed.id)
    assert done is not None
    assert done.status is DeliveryStatus.SUCCESS
    assert done.attempt_count == 2
    assert [a.http_status for a in done.attempts] == [400, 200]
    assert receiver.hits["/hook"] == 2


async def test_replay_requeues_failed_and_exhausted_only(receiver, make_runtime, make_event, clock):
    runtime = await make_runtime(WebhookConfig(jitter=False, max_retries=0), clock=clock)
    answers = {"evt_ok": [200], "evt_bad": [422, 200], "evt_down": [503, 200], "evt_wait": [429]}

    async def by_event(request: web.Request, n: int) -> web.StreamResponse:
        event_id = json.loads(await request.read())["id"]
        script = answers[event_id]
        return web.Response(status=script.pop(0) if len(script) > 1 else script[0])

    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", by_event), events=["message.sent"])
    )
    pending_endpoint = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/slow", respond(503)),
            events=["message.read"],
            retry_config=RetryConfig(max_retries=5, retry_delay_ms=3_600_000),
        )
    )
    for event_id in ("evt_ok", "evt_bad", "evt_down"):
        await runtime.emit(make_event(event_id))
    await runtime.emit(make_event("evt_later", type="message.read"))
    await settle(runtime)

    def status_of(rows: list[WebhookDelivery]) -> dict[str, DeliveryStatus]:
        return {d.event_id: d.status for d in rows}

    assert status_of(await deliveries(runtime)) == {
        "evt_ok": DeliveryStatus.SUCCESS,
        "evt_bad": DeliveryStatus.FAILED,
        "evt_down": DeliveryStatus.EXHAUSTED,
        "evt_later": DeliveryStatus.PENDING,
    }
    assert await runtime.replay(since=T0 + timedelta(seconds=1)) == 0
    assert await runtime.replay(since=T0, endpoint_id=pending_endpoint.id) == 0

    assert await runtime.replay(since=T0) == 2
    await settle(runtime)
    rows = await deliveries(runtime)
    assert status_of(rows) == {
        "evt_ok": DeliveryStatus.SUCCESS,
        "evt_bad": DeliveryStatus.SUCCESS,
        "evt_down": DeliveryStatus.SUCCESS,
        "evt_later": DeliveryStatus.PENDING,
    }
    attempts = {d.event_id: d.attempt_count for d in rows}
    assert attempts == {"evt_ok": 1, "evt_bad": 2, "evt_down": 2, "evt_later": 1}
    assert receiver.hits["/hook"] == 5


async def test_stats_count_deliveries_and_endpoints(receiver, make_runtime, make_event, clock):
    runtime = await make_runtime(WebhookConfig(jitter=False, max_retries=0), clock=clock)
    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/ok", respond(200)), events=["message.sent"])
    )
    await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/bad", respond(400)), events=["message.sent", "message.read"]
        )
    )
    await runtime.add_endpoint(
        EndpointInput(url=receiver.url("/off"), events=["message.sent"], active=False)
    )
    await runtime.emit(make_event("evt_1"))
    await runtime.emit(make_event("evt_2", type="message.read"))
    await settle(runtime)

    stats = await runtime.stats()
    assert stats.total_endpoints == 3
    assert stats.active_endpoints == 2
    d = stats.deliveries
    assert (d.total, d.success, d.failed, d.exhausted, d.pending) == (3, 1, 2, 0, 0)
    assert d.total_attempts == 3
    assert dict(d.by_event_type) == {"message.sent": 2, "message.read": 1}
    assert d.success_rate == pytest.approx(100 / 3)
    assert d.average_latency_ms >= 0
    only_read = await runtime.stats(DeliveryFilter(event_type=WebhookEventType.MESSAGE_READ))
    assert only_read.deliveries.total == 1


async def test_purge_deletes_old_finished_deliveries_only(
    receiver, make_runtime, make_event, clock
):
    runtime = await make_runtime(clock=clock)
    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/ok", respond(200)), events=["message.sent"])
    )
    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/bad", respond(404)), events=["message.sent"])
    )
    await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/later", respond(503)),
            events=["message.sent"],
            retry_config=RetryConfig(retry_delay_ms=86_400_000),
        )
    )
    await runtime.emit(make_event("evt_old"))
    await settle(runtime)
    clock.advance(seconds=3 * 3600)
    await runtime.emit(make_event("evt_new", type="message.sent"))
    await settle(runtime)

    assert await runtime.purge(older_than=timedelta(hours=1)) == 2  # old success + old failure
    left = await deliveries(runtime)
    assert {(d.event_id, d.status) for d in left} == {
        ("evt_old", DeliveryStatus.PENDING),
        ("evt_new", DeliveryStatus.SUCCESS),
        ("evt_new", DeliveryStatus.FAILED),
        ("evt_new", DeliveryStatus.PENDING),
    }
    assert await runtime.purge(older_than=clock.now() + timedelta(seconds=1)) == 2
    assert len(await deliveries(runtime)) == 2
