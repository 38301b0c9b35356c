"""The hooks seam (on_attempt, on_settled, on_endpoint_status), the log lines built on it, the
wake-up when a retry falls due, and operational webhooks to an operator's URL."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook

from kmsg_webhook import (
    AttemptEvent,
    ConfigError,
    DeliveryFilter,
    DeliveryHooks,
    DeliveryStatus,
    EndpointChange,
    EndpointInput,
    EndpointStatus,
    EndpointStatusEvent,
    EndpointUrlError,
    HealthPolicy,
    OperationalWebhook,
    SecurityOptions,
    SettledEvent,
    WebhookConfig,
    WebhookRuntimeService,
    generate_secret,
)
from support.runtime import BOTH_TRANSPORTS, EventFactory, RuntimeFactory, WaitUntil
from support.servers import Receiver

pytestmark = BOTH_TRANSPORTS


def respond(*statuses: int) -> Any:
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=statuses[min(n, len(statuses)) - 1])

    return behaviour


class Recorder:
    def __init__(self) -> None:
        self.attempts: list[AttemptEvent] = []
        self.settled: list[SettledEvent] = []
        self.endpoints: list[EndpointStatusEvent] = []
        self.hooks = DeliveryHooks(
            on_attempt=self.attempts.append,
            on_settled=self.settled.append,
            on_endpoint_status=self.endpoints.append,
        )


def broken(event: object) -> None:
    raise RuntimeError("a monitoring system is down")


async def test_hooks_see_each_attempt_and_settlement_and_a_failing_hook_breaks_nothing(
    make_runtime: RuntimeFactory,
    receiver: Receiver,
    make_event: EventFactory,
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    failing = DeliveryHooks(on_attempt=broken, on_settled=broken, on_endpoint_status=broken)
    # A 60 s poll: the retry 50 ms later is claimed by the timer set when it was recorded.
    config = WebhookConfig(jitter=False, retry_delay_ms=50, poll_interval_ms=60_000)
    runtime = await make_runtime(config, hooks=[failing, recorder.hooks])
    endpoint = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/flaky", respond(503, 200)), events=["message.sent"])
    )
    with caplog.at_level(logging.INFO, logger="kmsg_webhook"):
        await runtime.emit(make_event())
        await wait_until(lambda: recorder.settled, within=20, what="the retry was sent when due")
    retry, success = recorder.attempts
    assert (retry.status, retry.http_status, retry.attempt_number) == (
        DeliveryStatus.PENDING,
        503,
        1,
    )
    assert retry.next_attempt_at is not None and retry.endpoint_id == endpoint.id
    assert (success.status, success.http_status, success.attempt_number) == (
        DeliveryStatus.SUCCESS,
        200,
        2,
    )
    (settled,) = recorder.settled
    assert settled.status is DeliveryStatus.SUCCESS and settled.attempts == 2 and settled.sent
    assert settled.event_type == "message.sent" and settled.completed_at >= settled.created_at
    delivery = await runtime.get_delivery(settled.delivery_id)
    assert delivery is not None and delivery.status is DeliveryStatus.SUCCESS
    assert sum("a delivery hook" in r.message for r in caplog.records) == 3
    lines = [r for r in caplog.records if r.name == "kmsg_webhook.delivery"]
    assert [(r.levelname, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("INFO", "pending"),
        ("INFO", "success"),
    ]
    assert lines[0].delivery_id == settled.delivery_id  # type: ignore[attr-defined]


async def test_every_scheduled_retry_wakes_the_claimer_not_only_the_earliest(
    make_runtime: RuntimeFactory,
    receiver: Receiver,
    make_event: EventFactory,
    wait_until: WaitUntil,
) -> None:
    recorder = Recorder()
    # A 60 s poll: only the timers set when the retries were recorded can send them in time.
    config = WebhookConfig(jitter=False, retry_delay_ms=50, poll_interval_ms=60_000)
    runtime = await make_runtime(config, hooks=recorder.hooks)

    async def later(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=503, headers={"Retry-After": "1"} if n == 1 else None)

    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/later", later), events=["message.sent"])
    )
    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/sooner", respond(503, 200)), events=["message.failed"])
    )
    # The retry due in 1 s is recorded first, then one due in 50 ms.
    await runtime.emit(make_event())
    await wait_until(lambda: recorder.attempts, within=20, what="the first attempt")
    await runtime.emit(make_event(type="message.failed"))
    await wait_until(
        lambda: len(recorder.attempts) >= 4, within=20, what="both retries were sent when due"
    )
    assert receiver.hits == {"/later": 2, "/sooner": 2}


async def test_endpoint_disabled_recovered_and_enabled_reach_the_hooks(
    make_runtime: RuntimeFactory,
    receiver: Receiver,
    make_event: EventFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    config = WebhookConfig(
        jitter=False, max_retries=0, health=HealthPolicy(max_consecutive_failures=2)
    )
    runtime = await make_runtime(config, hooks=recorder.hooks)
    flaky = await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/flaky", respond(500, 200)), events=["message.sent"])
    )
    with caplog.at_level(logging.WARNING, logger="kmsg_webhook"):
        await runtime.emit(make_event())
        await runtime.flush()
        await runtime.emit(make_event())
        await runtime.flush()
    (recovered,) = recorder.endpoints
    assert recovered.change is EndpointChange.RECOVERED and recovered.endpoint_id == flaky.id
    assert recovered.status is EndpointStatus.ACTIVE
    assert "after 1 failed deliveries" in (recovered.reason or "")

    await runtime.update_endpoint(flaky.id, status="inactive")
    await runtime.add_endpoint(
        EndpointInput(url=receiver.on("/gone", respond(410)), events=["message.sent"])
    )
    with caplog.at_level(logging.WARNING, logger="kmsg_webhook"):
        await runtime.emit(make_event())
        await runtime.flush()
    disabled = recorder.endpoints[-1]
    assert disabled.change is EndpointChange.DISABLED and disabled.status is EndpointStatus.ERROR
    assert "410" in (disabled.reason or "")
    exhausted = [s for s in recorder.settled if s.status is not DeliveryStatus.SUCCESS]
    assert [s.status for s in exhausted] == [DeliveryStatus.EXHAUSTED, DeliveryStatus.FAILED]

    await runtime.update_endpoint(disabled.endpoint_id, status="active")
    enabled = recorder.endpoints[-1]
    assert enabled.change is EndpointChange.ENABLED and enabled.status is EndpointStatus.ACTIVE
    assert enabled.reason is not None and enabled.reason.startswith("was error (410 Gone")
    warnings = [r for r in caplog.records if r.name == "kmsg_webhook.endpoint"]
    changes = [r.change for r in warnings]  # type: ignore[attr-defined]
    assert changes == ["recovered", "disabled", "enabled"]
    assert all(r.levelname == "WARNING" for r in warnings)
    # Log lines name the receiver's origin only: a path or query may carry its token.
    assert {r.url for r in warnings} == {f"{receiver.base_url}/…"}  # type: ignore[attr-defined]
    assert disabled.url == receiver.url("/gone")  # the hooks get the whole URL


async def test_refusals_without_a_request_are_settled_and_logged(
    make_runtime: RuntimeFactory,
    receiver: Receiver,
    make_event: EventFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    writer = await make_runtime(dispatch=False)
    endpoint = await writer.add_endpoint(
        EndpointInput(url=receiver.url("/later"), events=["message.sent"])
    )
    await writer.emit(make_event())
    await writer.flush()
    await writer.update_endpoint(endpoint.id, status="inactive")
    runtime = await make_runtime(persistence=writer.persistence, hooks=recorder.hooks)
    with caplog.at_level(logging.WARNING, logger="kmsg_webhook.delivery"):
        await runtime.flush()
    (settled,) = recorder.settled
    assert settled.status is DeliveryStatus.FAILED and not settled.sent and settled.attempts == 0
    assert recorder.attempts == []
    (line,) = caplog.records
    assert line.levelname == "WARNING" and "without a request" in line.getMessage()
    assert "endpoint is inactive" in line.getMessage()


async def test_operational_webhooks_are_signed_and_name_what_happened(
    receiver: Receiver, make_event: EventFactory, wait_until: WaitUntil
) -> None:
    secret = generate_secret()
    operator = receiver.url("/ops")
    config = WebhookConfig(
        jitter=False,
        max_retries=1,
        retry_delay_ms=10,
        operational_webhook=OperationalWebhook(url=operator, secret=secret),
    )
    async with WebhookRuntimeService(
        config, security=SecurityOptions(allow_private_hosts=True)
    ) as runtime:
        down = await runtime.add_endpoint(
            EndpointInput(url=receiver.on("/down", respond(502)), events=["message.sent"])
        )
        gone = await runtime.add_endpoint(
            EndpointInput(url=receiver.on("/gone", respond(410)), events=["message.sent"])
        )
        await runtime.emit(make_event())
        await wait_until(lambda: len(receiver.at("/ops")) == 2, within=20, what="two messages")
        await runtime.update_endpoint(gone.id, status="active")
        await wait_until(lambda: len(receiver.at("/ops")) == 3, within=20, what="the third")
    messages = {}
    for request in receiver.at("/ops"):
        message = Webhook(secret).verify(request.body, request.headers)
        messages[message["type"]] = message
    assert set(messages) == {"endpoint.disabled", "delivery.exhausted", "endpoint.enabled"}
    exhausted = messages["delivery.exhausted"]["data"]
    assert exhausted["endpoint_id"] == down.id and exhausted["attempts"] == 2
    assert exhausted["event_type"] == "message.sent" and "502" in exhausted["error"]
    disabled = messages["endpoint.disabled"]["data"]
    assert disabled == {
        "endpoint_id": gone.id,
        "url": gone.url,
        "status": "error",
        "reason": "410 Gone: the receiver asked to stop deliveries",
    }
    assert messages["endpoint.enabled"]["data"]["status"] == "active"
    assert all(json.loads(r.body)["timestamp"] for r in receiver.at("/ops"))


def test_async_hooks_are_refused_since_nothing_would_await_them() -> None:
    async def on_settled(event: SettledEvent) -> None:
        raise AssertionError("never called")

    class AsyncCallable:
        async def __call__(self, event: AttemptEvent) -> None:
            raise AssertionError("never called")

    with pytest.raises(ConfigError, match="on_settled is a coroutine function"):
        DeliveryHooks(on_settled=on_settled)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="on_attempt is a coroutine function"):
        DeliveryHooks(on_attempt=AsyncCallable())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be callable"):
        DeliveryHooks(on_endpoint_status="log")  # type: ignore[arg-type]


def test_bad_hooks_and_operational_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="DeliveryHooks"):
        WebhookRuntimeService(hooks=[print])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="unknown"):
        OperationalWebhook(url="https://ops.example.com/in", secret="x", events={"endpoint.x"})
    with pytest.raises(ConfigError, match="secret"):
        OperationalWebhook(url="https://ops.example.com/in", secret="")
    # The operator URL passes the URL policy like any endpoint's.
    private = OperationalWebhook(url="http://10.0.0.5/ops", secret=generate_secret())
    with pytest.raises(EndpointUrlError):
        WebhookRuntimeService(WebhookConfig(operational_webhook=private))


async def test_an_empty_store_reports_an_empty_queue(make_runtime: RuntimeFactory) -> None:
    runtime = await make_runtime()
    assert (await runtime.queue_stats()).due == 0
    assert await runtime.endpoint_health() == []
    assert (await runtime.list_deliveries(DeliveryFilter())).items == ()
