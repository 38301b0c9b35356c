"""The receiver steers delivery with the ``webhook-delivery`` response header: ``disable`` stops
the endpoint (as 410 does, with the reason), ``abort-message`` ends the delivery ``failed``
without retries. Both on any response, from a real local receiver."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from kmsg_webhook import (
    DeliveryFilter,
    DeliveryHooks,
    DeliveryStatus,
    EndpointChange,
    EndpointInput,
    EndpointStatus,
    EndpointStatusEvent,
    HealthPolicy,
    OperationalWebhook,
    WebhookConfig,
    WebhookDelivery,
    generate_secret,
)
from support.runtime import BOTH_TRANSPORTS

pytestmark = BOTH_TRANSPORTS

HANG_GUARD = 15


def answer(*script: tuple[int, str | None]) -> Any:
    """Respond with the n-th (status, webhook-delivery value) of ``script`` (the last repeats)."""

    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        status, control = script[min(n, len(script)) - 1]
        headers = {} if control is None else {"webhook-delivery": control}
        return web.Response(status=status, headers=headers)

    return behaviour


async def deliveries(runtime: Any) -> list[WebhookDelivery]:
    return list((await runtime.list_deliveries(DeliveryFilter(), limit=100)).items)


async def settle(runtime: Any) -> None:
    await asyncio.wait_for(runtime.flush(), HANG_GUARD)


@pytest.mark.parametrize("status", [200, 503, 400])
async def test_disable_stops_the_endpoint_with_the_reason_on_any_response(
    receiver, make_runtime, make_event, status
):
    runtime = await make_runtime(WebhookConfig(jitter=False, max_retries=3))
    endpoint = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/hook", answer((status, "disable"))), events=["message.sent"]
        )
    )
    await runtime.emit(make_event("evt_1"))
    await settle(runtime)
    [delivery] = await deliveries(runtime)
    expected = DeliveryStatus.SUCCESS if status == 200 else DeliveryStatus.FAILED
    assert delivery.status is expected and delivery.attempt_count == 1
    disabled = await runtime.get_endpoint(endpoint.id)
    assert disabled is not None and disabled.status is EndpointStatus.ERROR
    assert disabled.disabled_reason is not None
    assert "webhook-delivery: disable" in disabled.disabled_reason
    await runtime.emit(make_event("evt_2"))
    await settle(runtime)
    assert receiver.hits["/hook"] == 1  # nothing more is sent to a disabled endpoint


async def test_abort_message_ends_the_delivery_failed_without_retries(
    receiver, make_runtime, make_event
):
    runtime = await make_runtime(
        WebhookConfig(jitter=False, max_retries=5, health=HealthPolicy(max_consecutive_failures=1))
    )
    endpoint = await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/hook", answer((500, "abort-message"), (200, None))),
            events=["message.sent"],
        )
    )
    await runtime.emit(make_event("evt_aborted"))
    await settle(runtime)
    [delivery] = await deliveries(runtime)
    assert delivery.status is DeliveryStatus.FAILED and delivery.attempt_count == 1
    assert delivery.next_attempt_at is None
    assert delivery.last_error is not None and "abort-message" in delivery.last_error
    # The receiver's own choice: the endpoint stays healthy (the health policy would have
    # disabled it after one failure) and gets the next message.
    after = await runtime.get_endpoint(endpoint.id)
    assert after is not None and after.status is EndpointStatus.ACTIVE
    assert after.consecutive_failures == 0
    await runtime.emit(make_event("evt_next"))
    await settle(runtime)
    statuses = {d.event_id: d.status for d in await deliveries(runtime)}
    assert statuses == {"evt_aborted": DeliveryStatus.FAILED, "evt_next": DeliveryStatus.SUCCESS}


async def test_abort_message_on_a_success_changes_nothing(receiver, make_runtime, make_event):
    runtime = await make_runtime()
    await runtime.add_endpoint(
        EndpointInput(
            url=receiver.on("/hook", answer((200, "abort-message"))), events=["message.sent"]
        )
    )
    [delivery] = await runtime.emit_sync(make_event())
    assert delivery.status is DeliveryStatus.SUCCESS and delivery.last_error is None


@pytest.mark.parametrize(
    ("control", "status", "endpoint_status"),
    [
        (" Abort-Message ", DeliveryStatus.FAILED, EndpointStatus.ACTIVE),
        ("abort-message, disable", DeliveryStatus.FAILED, EndpointStatus.ERROR),
        ("DISABLE", DeliveryStatus.FAILED, EndpointStatus.ERROR),
        ("pause-please", DeliveryStatus.PENDING, EndpointStatus.ACTIVE),  # unknown: ignored
        ("", DeliveryStatus.PENDING, EndpointStatus.ACTIVE),
    ],
)
async def test_values_are_read_case_insensitively_as_a_list(
    receiver, make_runtime, make_event, control, status, endpoint_status
):
    runtime = await make_runtime(WebhookConfig(jitter=False, max_retries=2))
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", answer((503, control))), events=["message.sent"])
    )
    [delivery] = await runtime.emit_sync(make_event())
    assert delivery.status is status
    await settle(runtime)
    after = await runtime.get_endpoint(endpoint.id)
    assert after is not None and after.status is endpoint_status


async def test_a_410_still_disables_with_its_own_reason(receiver, make_runtime, make_event):
    runtime = await make_runtime()
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", answer((410, None))), events=["message.sent"])
    )
    await runtime.emit(make_event())
    await settle(runtime)
    after = await runtime.get_endpoint(endpoint.id)
    assert after is not None and after.status is EndpointStatus.ERROR
    assert after.disabled_reason is not None and after.disabled_reason.startswith("410 Gone")


async def test_disable_reaches_the_hooks_and_the_operational_webhook_as_a_410_does(
    receiver, make_runtime, make_event, wait_until
):
    secret = generate_secret()
    changes: list[EndpointStatusEvent] = []
    config = WebhookConfig(
        jitter=False,
        operational_webhook=OperationalWebhook(url=receiver.url("/ops"), secret=secret),
    )
    runtime = await make_runtime(config, hooks=DeliveryHooks(on_endpoint_status=changes.append))
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/hook", answer((200, "disable"))), events=["message.sent"])
    )
    await runtime.emit(make_event("evt_1"))
    await wait_until(lambda: len(receiver.at("/ops")) == 1, within=HANG_GUARD, what="a message")
    [change] = changes
    assert change.change is EndpointChange.DISABLED and change.endpoint_id == endpoint.id
    assert change.status is EndpointStatus.ERROR
    assert change.reason is not None and "webhook-delivery: disable" in change.reason
    [request] = receiver.at("/ops")
    message = Webhook(secret).verify(request.body, request.headers)
    assert message["type"] == "endpoint.disabled"
    assert message["data"] == {
        "endpoint_id": endpoint.id,
        "url": endpoint.url,
        "status": "error",
        "reason": change.reason,
    }
