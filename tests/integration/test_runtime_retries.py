"""Retries, backoff, Retry-After, terminal statuses, endpoint health and stored responses.

Retry timing runs on a ``ManualClock``: ``flush()`` sends what is due now and a scheduled retry
waits until the test moves the clock. Nothing here sleeps for a backoff.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryStatus,
    EndpointInput,
    EndpointStatus,
    HealthPolicy,
    ManualClock,
    RetryConfig,
    WebhookConfig,
    WebhookDelivery,
)
from support.runtime import BOTH_TRANSPORTS

pytestmark = BOTH_TRANSPORTS

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HANG_GUARD = 15


def ms(n: float) -> timedelta:
    return timedelta(milliseconds=n)


def respond(*statuses: int, headers: dict[str, str] | None = None) -> Any:
    """A behaviour answering hit n with statuses[n-1] (the last one repeats)."""

    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        status = statuses[min(n, len(statuses)) - 1]
        return web.Response(status=status, text=f"answer {n}", headers=headers)

    return behaviour


async def settle(runtime: Any) -> None:
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)


async def only_delivery(runtime: Any) -> WebhookDelivery:
    page = await runtime.list_deliveries(DeliveryFilter(), limit=10)
    [delivery] = page.items
    return delivery


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


# --------------------------------------------------------------------------- what is retried


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_status_is_rescheduled_in_the_store_then_succeeds(
    receiver, make_runtime, make_event, clock, status
):
    runtime = await make_runtime(clock=clock)
    url = receiver.on("/hook", respond(status, 200))
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    await runtime.emit(make_event())
    await settle(runtime)

    delivery = await only_delivery(runtime)
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.attempt_count == 1
    assert delivery.attempts[0].http_status == status
    assert delivery.last_error is not None and str(status) in delivery.last_error
    assert delivery.next_attempt_at == T0 + ms(1000)
    assert delivery.completed_at is None

    await settle(runtime)  # not due yet: nothing is sent
    assert receiver.hits["/hook"] == 1

    clock.advance(ms=1000)
    await settle(runtime)
    delivery = await only_delivery(runtime)
    assert delivery.status is DeliveryStatus.SUCCESS
    assert [a.http_status for a in delivery.attempts] == [status, 200]
    assert delivery.last_error is None
    assert receiver.hits["/hook"] == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_client_errors_fail_at_once(receiver, make_runtime, make_event, clock, status):
    runtime = await make_runtime(clock=clock)
    url = receiver.on("/hook", respond(status))
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    await runtime.emit(make_event())
    await settle(runtime)
    clock.advance(seconds=3600)
    await settle(runtime)

    delivery = await only_delivery(runtime)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.attempt_count == 1
    assert delivery.attempts[0].http_status == status
    assert delivery.next_attempt_at is None
    assert delivery.completed_at == T0
    assert delivery.last_error is not None and str(status) in delivery.last_error
    assert receiver.hits["/hook"] == 1


async def _abort_first(request: web.Request, n: int) -> web.StreamResponse:
    if n == 1:
        assert request.transport is not None
        request.transport.abort()  # connection reset mid-request
        await asyncio.sleep(0)
    return web.Response(text="ok")


async def test_connection_refused_is_retried(receiver, make_runtime, make_event, clock):
    runtime = await make_runtime(clock=clock)
    await runtime.add_endpoint(
        EndpointInput(url=f"http://127.0.0.1:{closed_port()}/hook", events=["message.sent"])
    )
    await runtime.emit(make_event())
    await settle(runtime)

    delivery = await only_delivery(runtime)
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.attempts[0].http_status is None
    assert delivery.last_error
    assert delivery.next_attempt_at == T0 + ms(1000)


async def test_connection_reset_is_retried(receiver, make_runtime, make_event, clock):
    runtime = await make_runtime(clock=clock)
    url = receiver.on("/hook", _abort_first)
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    await runtime.emit(make_event())
    await settle(runtime)

    delivery = await only_delivery(runtime)
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.attempts[0].http_status is None
    assert delivery.last_error
    assert delivery.next_attempt_at == T0 + ms(1000)

    clock.advance(ms=1000)
    await settle(runtime)
    assert (await only_delivery(runtime)).status is DeliveryStatus.SUCCESS
    assert receiver.hits["/hook"] == 2


async def test_timeout_is_retried(receiver, make_runtime, make_event, clock, gate):
    runtime = await make_runtime(WebhookConfig(jitter=False, timeout_ms=300), clock=clock)

    async def slow_first(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            await gate.wait()  # opened at teardown; the client gives up long before
        return web.Response(text="ok")

    url = receiver.on("/hook", slow_first)
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    await runtime.emit(make_event())
    await settle(runtime)

    delivery = await only_delivery(runtime)
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.attempts[0].http_status is None
    assert delivery.last_error == "timeout after 300 ms"
    assert delivery.next_attempt_at == T0 + ms(1000)

    clock.advance(ms=1000)
    await settle(runtime)
    assert (await only_delivery(runtime)).status is DeliveryStatus.SUCCESS


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_is_a_failure_and_never_followed(
    receiver, make_runtime, make_event, clock, status
):
    runtime = await make_runtime(clock=clock)
    target = receiver.url("/target")
    url = receiver.on("/hook", respond(status, headers={"Location": target}))
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    await runtime.emit(make_event())
    await settle(runtime)
    clock.advance(seconds=3600)
    await settle(runtime)

    delivery = await only_delivery(runtime)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.attempts[0].http_status == status
    assert receiver.hits["/hook"] == 1
    assert receiver.at("/target") == []


async def test_410_gone_fails_the_delivery_and_disables_the_endpoint(
    receiver, make_runtime, make_event, clock
):
    runtime = await make_runtime(clock=clock)

    async def gone_for_b(request: web.Request, n: int) -> web.StreamResponse:
        event_id = json.loads(await request.read())["id"]
        return web.Response(status=503 if event_id == "evt_a" else 410)

    url = receiver.on("/hook", gone_for_b)
    endpoint = await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    await runtime.emit(make_event("evt_a"))
    await settle(runtime)  # evt_a: 503, retry scheduled
    await runtime.emit(make_event("evt_b"))
    await settle(runtime)  # evt_b: 410

    [gone] = (await runtime.list_deliveries(DeliveryFilter(event_id="evt_b"))).items
    assert gone.status is DeliveryStatus.FAILED
    assert gone.attempts[0].http_status == 410
    disabled = await runtime.get_endpoint(endpoint.id)
    assert disabled is not None
    assert disabled.status is EndpointStatus.ERROR
    assert disabled.disabled_reason is not None and "410" in disabled.disabled_reason

    # The scheduled retry of evt_a ends failed without a request; new events are not stored.
    clock.advance(ms=1000)
    await runtime.emit(make_event("evt_c"))
    await settle(runtime)
    [stale] = (await runtime.list_deliveries(DeliveryFilter(event_id="evt_a"))).items
    assert stale.status is DeliveryStatus.FAILED
    assert stale.attempt_count == 1
    assert stale.last_error is not None and "endpoint is error" in stale.last_error
    assert "410" in stale.last_error
    assert (await runtime.list_deliveries(DeliveryFilter(event_id="evt_c"))).items == ()
    assert receiver.hits["/hook"] == 2


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("retry_after", "max_delay_ms", "expected_ms"),
    [
        ("30", 300_000, 30_000),  # seconds, longer than the 1 s backoff: honoured
        ("600", 60_000, 60_000),  # capped at max_delay_ms
        ("0", 300_000, 1_000),  # shorter than the backoff: the backoff stands
        ("soon", 300_000, 1_000),  # unparsable: ignored
        ("date+120", 300_000, 120_000),  # an HTTP date
        ("date+900", 60_000, 60_000),  # an HTTP date, capped
        ("date-60", 300_000, 1_000),  # a date in the past
    ],
)
async def test_retry_after_is_honoured_and_capped(
    receiver, make_runtime, make_event, clock, retry_after, max_delay_ms, expected_ms
):
    if retry_after.startswith("date"):
        retry_after = format_datetime(T0 + timedelta(seconds=int(retry_after[4:])), usegmt=True)
    runtime = await make_runtime(
        WebhookConfig(jitter=False, max_delay_ms=max_delay_ms), clock=clock
    )
    url = receiver.on("/hook", respond(429, headers={"Retry-After": retry_after}))
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    await runtime.emit(make_event())
    await settle(runtime)

    delivery = await only_delivery(runtime)
    assert delivery.status is DeliveryStatus.PENDING
    assert delivery.next_attempt_at == T0 + ms(expected_ms)


async def test_retry_after_on_503_is_honoured(receiver, make_runtime, make_event, clock):
    runtime = await make_runtime(clock=clock)
    url = receiver.on("/hook", respond(503, headers={"Retry-After": "45"}))
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    await runtime.emit(make_event())
    await settle(runtime)
    assert (await only_delivery(runtime)).next_attempt_at == T0 + ms(45_000)


# --------------------------------------------------------------------------- backoff


async def test_exponential_backoff_capped_then_exhausted(receiver, make_runtime, make_event, clock):
    config = WebhookConfig(
        jitter=False, max_retries=5, retry_delay_ms=1_000, backoff_multiplier=3, max_delay_ms=20_000
    )
    runtime = await make_runtime(config, clock=clock)
    url = receiver.on("/hook", respond(503))
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    await runtime.emit(make_event())
    await settle(runtime)

    expected_waits = [1_000, 3_000, 9_000, 20_000, 20_000]  # 27 000 is capped at 20 000
    for n, wait in enumerate(expected_waits, start=1):
        delivery = await only_delivery(runtime)
        assert delivery.status is DeliveryStatus.PENDING
        assert delivery.attempt_count == n
        assert delivery.next_attempt_at == clock.now() + ms(wait)
        clock.advance(ms=wait - 1)
        await settle(runtime)  # one millisecond early: still waiting
        assert receiver.hits["/hook"] == n
        clock.advance(ms=1)
        await settle(runtime)
        assert receiver.hits["/hook"] == n + 1

    delivery = await only_delivery(runtime)
    assert delivery.status is DeliveryStatus.EXHAUSTED  # max_retries + 1 attempts
    assert delivery.attempt_count == 6
    assert [a.attempt_number for a in delivery.attempts] == [1, 2, 3, 4, 5, 6]
    assert delivery.next_attempt_at is None
    assert delivery.completed_at == clock.now()
    clock.advance(seconds=3600)
    await settle(runtime)
    assert receiver.hits["/hook"] == 6


async def test_jitter_keeps_each_wait_within_half_to_full_backoff(
    receiver, make_runtime, make_event, clock
):
    config = WebhookConfig(
        jitter=True, max_retries=4, retry_delay_ms=1_000, backoff_multiplier=2, max_delay_ms=60_000
    )
    runtime = await make_runtime(config, clock=clock, rng=random.Random(20260101))
    url = receiver.on("/hook", respond(500))
    await runtime.add_endpoint(EndpointInput(url=url, events=["message.sent"]))
    for i in range(8):
        await runtime.emit(make_event(f"evt_{i}"))
    await settle(runtime)

    waits: list[float] = []
    for n in range(1, 5):
        page = await runtime.list_deliveries(DeliveryFilter(), limit=100)
        assert len(page.items) == 8
        nominal = 1_000 * 2 ** (n - 1)
        for delivery in page.items:
            assert delivery.attempt_count == n
            assert delivery.next_attempt_at is not None
            wait_ms = (delivery.next_attempt_at - clock.now()) / ms(1)
            assert 0.5 * nominal <= wait_ms <= nominal
            waits.append(wait_ms)
        clock.advance(ms=nominal)
        await settle(runtime)
    assert len(set(waits)) > 1  # jitter spreads them out
    page = await runtime.list_deliveries(DeliveryFilter(), limit=100)
    assert {d.status for d in page.items} == {DeliveryStatus.EXHAUSTED}


async def test_endpoint_retry_config_overrides_the_global_one(
    receiver, make_runtime, make_event, clock
):
    runtime = await make_runtime(WebhookConfig(jitter=False, max_retries=3), clock=clock)
    never = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/never", respond(503)),
            events=["message.sent"],
            retry_config=RetryConfig(max_retries=0),
        )
    )
    slower = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/slower", respond(503)),
            events=["message.sent"],
            retry_config=RetryConfig(retry_delay_ms=5_000, backoff_multiplier=4),
        )
    )
    await runtime.emit(make_event())
    await settle(runtime)

    [no_retry] = (await runtime.list_deliveries(DeliveryFilter(endpoint_id=never.id))).items
    assert no_retry.status is DeliveryStatus.EXHAUSTED  # 0 is honoured, not replaced by 3
    assert no_retry.attempt_count == 1
    [later] = (await runtime.list_deliveries(DeliveryFilter(endpoint_id=slower.id))).items
    assert later.next_attempt_at == T0 + ms(5_000)
    clock.advance(ms=5_000)
    await settle(runtime)
    [later] = (await runtime.list_deliveries(DeliveryFilter(endpoint_id=slower.id))).items
    assert later.next_attempt_at == clock.now() + ms(20_000)
    assert receiver.hits["/never"] == 1


# --------------------------------------------------------------------------- responses


async def test_response_body_is_stored_truncated(receiver, make_runtime, make_event):
    runtime = await make_runtime(WebhookConfig(jitter=False, max_response_body_bytes=64))

    async def big(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(text="x" * 100_000)

    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", big), events=["message.sent"])
    )
    await runtime.emit(make_event())
    await settle(runtime)
    delivery = await only_delivery(runtime)
    assert delivery.status is DeliveryStatus.SUCCESS
    assert delivery.attempts[0].response_body == "x" * 64


@pytest.mark.parametrize(("limit", "expected"), [(4_096, 60), (50, 50)])
async def test_a_response_streamed_in_pieces_is_stored_up_to_the_limit(
    receiver, make_runtime, make_event, limit, expected
):
    runtime = await make_runtime(WebhookConfig(jitter=False, max_response_body_bytes=limit))

    async def chunked(request: web.Request, n: int) -> web.StreamResponse:
        response = web.StreamResponse(status=500)
        response.content_type = "text/plain"
        await response.prepare(request)
        try:
            for part in "abc":
                await response.write(part.encode() * 20)
                await asyncio.sleep(0.05)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client stopped reading at its limit
        return response

    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", chunked), events=["message.sent"])
    )
    await runtime.emit(make_event())
    await settle(runtime)
    delivery = await only_delivery(runtime)
    assert delivery.attempts[0].response_body == ("a" * 20 + "b" * 20 + "c" * 20)[:expected]


# --------------------------------------------------------------------------- endpoint health


async def test_consecutive_final_failures_disable_the_endpoint(
    receiver, make_runtime, make_event, clock
):
    config = WebhookConfig(
        jitter=False, max_retries=0, health=HealthPolicy(max_consecutive_failures=3)
    )
    runtime = await make_runtime(config, clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", respond(400, 503)), events=["message.sent"])
    )
    await runtime.emit(make_event("evt_1"))  # 400: failed
    await settle(runtime)
    await runtime.emit(make_event("evt_2"))  # 503 with no retries left: exhausted
    await settle(runtime)

    current = await runtime.get_endpoint(endpoint.id)
    assert current is not None
    assert current.status is EndpointStatus.ACTIVE
    assert current.consecutive_failures == 2
    assert current.failing_since == T0

    await runtime.emit(make_event("evt_3"))
    await settle(runtime)
    current = await runtime.get_endpoint(endpoint.id)
    assert current is not None
    assert current.status is EndpointStatus.ERROR
    assert current.disabled_reason == "3 deliveries in a row failed"

    await runtime.emit(make_event("evt_4"))
    await settle(runtime)
    assert (await runtime.list_deliveries(DeliveryFilter(event_id="evt_4"))).items == ()
    assert receiver.hits["/hook"] == 3


async def test_a_success_resets_the_health_counters(receiver, make_runtime, make_event, clock):
    config = WebhookConfig(jitter=False, health=HealthPolicy(max_consecutive_failures=3))
    runtime = await make_runtime(config, clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/hook", respond(400, 400, 200, 400)), events=["message.sent"]
        )
    )
    for i in range(2):
        await runtime.emit(make_event(f"evt_{i}"))
        await settle(runtime)
    failing = await runtime.get_endpoint(endpoint.id)
    assert failing is not None and failing.consecutive_failures == 2

    clock.advance(seconds=10)
    await runtime.emit(make_event("evt_ok"))
    await settle(runtime)
    healthy = await runtime.get_endpoint(endpoint.id)
    assert healthy is not None
    assert healthy.consecutive_failures == 0
    assert healthy.failing_since is None
    assert healthy.last_success_at == T0 + timedelta(seconds=10)

    await runtime.emit(make_event("evt_again"))  # a failure after the reset counts from one
    await settle(runtime)
    again = await runtime.get_endpoint(endpoint.id)
    assert again is not None
    assert again.status is EndpointStatus.ACTIVE
    assert again.consecutive_failures == 1


async def test_failing_for_too_long_disables_on_a_final_failure(
    receiver, make_runtime, make_event, clock
):
    config = WebhookConfig(
        jitter=False,
        health=HealthPolicy(max_consecutive_failures=None, max_failing_ms=60_000),
    )
    runtime = await make_runtime(config, clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", respond(400)), events=["message.sent"])
    )
    await runtime.emit(make_event("evt_1"))
    await settle(runtime)
    clock.advance(seconds=59)
    await runtime.emit(make_event("evt_2"))
    await settle(runtime)
    still = await runtime.get_endpoint(endpoint.id)
    assert still is not None and still.status is EndpointStatus.ACTIVE

    clock.advance(seconds=1)
    await runtime.emit(make_event("evt_3"))
    await settle(runtime)
    disabled = await runtime.get_endpoint(endpoint.id)
    assert disabled is not None
    assert disabled.status is EndpointStatus.ERROR
    assert disabled.disabled_reason == "no successful delivery for 60s"


async def test_failing_for_too_long_disables_while_retries_are_still_scheduled(
    receiver, make_runtime, make_event, clock
):
    config = WebhookConfig(
        jitter=False,
        max_retries=10,
        retry_delay_ms=30_000,
        backoff_multiplier=1,
        health=HealthPolicy(max_consecutive_failures=None, max_failing_ms=60_000),
    )
    runtime = await make_runtime(config, clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", respond(503)), events=["message.sent"])
    )
    await runtime.emit(make_event())
    await settle(runtime)  # attempt 1 at T0: failing since T0
    for _ in range(2):  # attempts 2 and 3 at T0+30s and T0+60s, each scheduling a retry
        clock.advance(seconds=30)
        await settle(runtime)

    disabled = await runtime.get_endpoint(endpoint.id)
    assert disabled is not None
    assert disabled.status is EndpointStatus.ERROR
    assert disabled.disabled_reason == "no successful delivery for 60s"
    clock.advance(seconds=30)
    await settle(runtime)
    delivery = await only_delivery(runtime)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.attempt_count == 3
    assert receiver.hits["/hook"] == 3


async def test_reenabling_an_endpoint_clears_its_health(receiver, make_runtime, make_event, clock):
    config = WebhookConfig(
        jitter=False, max_retries=0, health=HealthPolicy(max_consecutive_failures=1)
    )
    runtime = await make_runtime(config, clock=clock)
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", respond(500, 200)), events=["message.sent"])
    )
    await runtime.emit(make_event("evt_1"))
    await settle(runtime)
    disabled = await runtime.get_endpoint(endpoint.id)
    assert disabled is not None and disabled.status is EndpointStatus.ERROR

    enabled = await runtime.update_endpoint(endpoint.id, status="active")
    assert enabled.status is EndpointStatus.ACTIVE
    assert enabled.disabled_reason is None
    assert enabled.consecutive_failures == 0
    assert enabled.failing_since is None
    assert await runtime.get_endpoint(endpoint.id) == enabled

    await runtime.emit(make_event("evt_2"))
    await settle(runtime)
    [delivered] = (await runtime.list_deliveries(DeliveryFilter(event_id="evt_2"))).items
    assert delivered.status is DeliveryStatus.SUCCESS
