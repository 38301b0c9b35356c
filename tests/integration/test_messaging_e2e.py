"""End to end: kmsg.send → vendor (fake IWINV) → webhook runtime → a real local receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from kmsg_webhook import (
    EndpointInput,
    SecurityOptions,
    WebhookConfig,
    WebhookEventType,
    WebhookRuntimeService,
    create_in_memory_persistence,
    verify,
)
from kmsg_webhook.messaging import IWINVConfig, IWINVProvider, KMsg, Ok
from support.fakes.base import FakeServer, webhook_receiver
from support.fakes.iwinv import FakeIwinv

standardwebhooks = pytest.importorskip("standardwebhooks")


@pytest.fixture
async def iwinv() -> AsyncIterator[FakeIwinv]:
    async with FakeIwinv() as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[FakeServer]:
    async with webhook_receiver("/hooks/kmsg") as server:
        yield server


async def test_send_delivers_signed_message_sent(iwinv: FakeIwinv, receiver: FakeServer) -> None:
    runtime = WebhookRuntimeService(
        WebhookConfig(jitter=False),
        persistence=create_in_memory_persistence(),
        security=SecurityOptions(allow_private_hosts=True),
    )
    provider = IWINVProvider(
        IWINVConfig(
            api_key=iwinv.api_key,
            sender_number="0212345678",
            base_url=iwinv.alimtalk_url,
            sms_base_url=iwinv.sms_url,
        )
    )
    kmsg = KMsg([provider], webhooks=runtime)
    try:
        endpoint = await runtime.add_endpoint(
            EndpointInput(
                url=receiver.url + "/hooks/kmsg",
                events=[WebhookEventType.MESSAGE_SENT, WebhookEventType.MESSAGE_FAILED],
            )
        )
        assert endpoint.secret is not None
        outcome = await kmsg.send(
            {
                "type": "ALIMTALK",
                "to": "010-1234-5678",
                "templateId": "AUTH_OTP",
                "variables": {"code": "123456"},
                "messageId": "order-1001",
                "requestId": "checkout-77",
            }
        )
        assert isinstance(outcome, Ok), outcome
        await runtime.flush()
        for _ in range(100):  # hang guard; flush normally returns after the attempt
            if receiver.hits("/hooks/kmsg"):
                break
            await asyncio.sleep(0.05)

        (request,) = receiver.hits("/hooks/kmsg")
        event = verify(request.raw, request.headers, endpoint.secret)
        assert event.id == "order-1001:message.sent"
        assert event.type is WebhookEventType.MESSAGE_SENT
        assert event.metadata.provider_id == "iwinv"
        assert event.metadata.template_id == "AUTH_OTP"
        assert event.metadata.correlation_id == "checkout-77"
        assert event.data["to"] == "010-****-5678"
        assert event.data["providerMessageId"] == "1001"

        # An independent Standard Webhooks implementation accepts the signature too.
        payload = standardwebhooks.Webhook(endpoint.secret).verify(
            request.raw.decode(), dict(request.headers)
        )
        assert payload["id"] == "order-1001:message.sent"
        assert "01012345678" not in json.dumps(payload)
    finally:
        await kmsg.aclose()
        await runtime.shutdown()
