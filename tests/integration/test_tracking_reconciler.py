"""The reconciler on a shared store: leases keep two reconcilers off one record, a fallback left
``attempting`` by a dead worker is resumed once, and one already tracked is never sent again."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from kmsg_webhook.crypto.fields import FieldCrypto
from kmsg_webhook.messaging import (
    ApiAttemptStatus,
    ApiFailoverConfig,
    DeliveryStatus,
    DeliveryStatusResult,
    DeliveryTrackingService,
    FailoverOptions,
    FailoverState,
    FallbackContext,
    MessageStatus,
    MessageType,
    NonKakaoUserRule,
    Ok,
    PollingConfig,
    SendResult,
    SmsSendOptions,
    TrackableMockProvider,
    TrackingRecord,
)
from support.crypto_keys import config
from support.fakes.util import FlakySink, ManualClock
from support.stores import TrackingBackend, open_tracking_backend

K105 = {"mock": NonKakaoUserRule(status_codes=("K105",))}
LEASE = timedelta(minutes=2)


class Sender:
    """A fallback sender that counts its calls and can be held mid-send."""

    def __init__(self) -> None:
        self.calls: list[SmsSendOptions] = []
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, options: SmsSendOptions, ctx: FallbackContext) -> Any:
        self.calls.append(options)
        self.entered.set()
        await self.gate.wait()
        assert options.message_id is not None
        return Ok(
            SendResult(
                options.message_id, "mock", MessageStatus.SENT, options.type, options.to, "FB1"
            )
        )


@pytest.fixture(params=["memory", "sqlite+crypto"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[TrackingBackend]:
    opened = await open_tracking_backend(request.param)
    try:
        yield opened
    finally:
        await opened.close()


def service(
    backend: TrackingBackend,
    provider: TrackableMockProvider,
    clock: ManualClock,
    sender: Sender,
    name: str,
) -> DeliveryTrackingService:
    return DeliveryTrackingService(
        [provider],
        store=backend.store,
        polling=PollingConfig(lease=LEASE),
        api_failover=ApiFailoverConfig(sender=sender, rules_by_provider_id=K105),
        webhooks=FlakySink(),
        clock=clock,
        worker_id=name,
    )


def alimtalk(clock: ManualClock, **changes: Any) -> TrackingRecord:
    failover = FailoverState(
        request=FailoverOptions(enabled=True, fallback_content="문자로 안내드립니다"),
        send_warning_codes=("FAILOVER_UNSUPPORTED_PROVIDER",),
    )
    fields: dict[str, Any] = {
        "message_id": "at1",
        "provider_id": "mock",
        "provider_message_id": "P1",
        "type": MessageType.ALIMTALK,
        "to": "01012345678",
        "from_": "0212345678",
        "requested_at": clock.now,
        "status": DeliveryStatus.SENT,
        "status_updated_at": clock.now,
        "next_check_at": clock.now,
        "failover": failover,
        **changes,
    }
    return TrackingRecord(**fields)


def failing_provider() -> TrackableMockProvider:
    provider = TrackableMockProvider()
    provider.set_delivery_status(
        "P1", Ok(DeliveryStatusResult("mock", "P1", DeliveryStatus.FAILED, status_code="K105"))
    )
    return provider


async def test_a_leased_record_is_left_to_its_holder(backend: TrackingBackend) -> None:
    clock, sender, provider = ManualClock(), Sender(), failing_provider()
    first = service(backend, provider, clock, sender, "w1")
    second = service(backend, provider, clock, sender, "w2")
    await backend.store.upsert(alimtalk(clock))
    sender.gate.clear()
    holding = asyncio.create_task(first.run_once())
    await asyncio.wait_for(sender.entered.wait(), 10)  # w1 is mid-fallback, holding the lease
    marked = await backend.store.get("at1")
    assert marked is not None and marked.failover is not None
    assert marked.failover.status is ApiAttemptStatus.ATTEMPTING
    clock.advance(seconds=90)  # within the lease
    assert await second.run_once() == 0
    sender.gate.set()
    assert await holding == 1
    done = await backend.store.get("at1")
    assert done is not None and done.failover is not None
    assert done.failover.status is ApiAttemptStatus.SENT
    assert done.failover.fallback_message_id == "at1:api-fallback"
    clock.advance(hours=1)
    assert await second.run_once() == 0
    assert len(sender.calls) == 1


async def test_a_fallback_left_attempting_is_resumed_once(backend: TrackingBackend) -> None:
    clock, sender, provider = ManualClock(), Sender(), failing_provider()
    dead = alimtalk(clock, status=DeliveryStatus.FAILED)
    assert dead.failover is not None
    dead_state = FailoverState(
        request=dead.failover.request,
        send_warning_codes=dead.failover.send_warning_codes,
        attempted=True,
        status=ApiAttemptStatus.ATTEMPTING,
        attempted_at=clock.now,
    )
    await backend.store.upsert(dataclasses.replace(dead, failover=dead_state))
    heir = service(backend, provider, clock, sender, "heir")
    assert await heir.run_once() == 1
    assert [c.message_id for c in sender.calls] == ["at1:api-fallback"]
    assert sender.calls[0].to == "01012345678"
    clock.advance(hours=1)
    assert await heir.run_once() == 0
    record = await backend.store.get("at1")
    assert record is not None and record.failover is not None
    assert record.failover.status is ApiAttemptStatus.SENT
    assert len(sender.calls) == 1


async def test_a_fallback_already_tracked_is_not_sent_again(backend: TrackingBackend) -> None:
    clock, sender, provider = ManualClock(), Sender(), failing_provider()
    dead = alimtalk(clock, status=DeliveryStatus.FAILED)
    assert dead.failover is not None
    attempting = FailoverState(
        request=dead.failover.request,
        attempted=True,
        status=ApiAttemptStatus.ATTEMPTING,
        send_warning_codes=dead.failover.send_warning_codes,
    )
    await backend.store.upsert(dataclasses.replace(dead, failover=attempting))
    # The dead worker's send got as far as being tracked.
    await backend.store.upsert(
        alimtalk(
            clock,
            message_id="at1:api-fallback",
            provider_id="other",
            type=MessageType.SMS,
            failover=None,
        )
    )
    heir = service(backend, provider, clock, sender, "heir")
    await heir.run_once()
    assert sender.calls == []
    record = await backend.store.get("at1")
    assert record is not None and record.failover is not None
    assert record.failover.status is ApiAttemptStatus.SENT
    assert record.failover.fallback_provider_id == "other"


async def test_a_record_sealed_under_another_key_does_not_hold_up_the_reconciler(
    backend: TrackingBackend,
) -> None:
    clock, sender, provider = ManualClock(), Sender(), TrackableMockProvider()
    provider.set_delivery_status(
        "P2", Ok(DeliveryStatusResult("mock", "P2", DeliveryStatus.DELIVERED))
    )
    foreign, _ = backend.reopen(FieldCrypto(config("C")))
    await foreign.upsert(alimtalk(clock))  # due first
    good = alimtalk(clock, message_id="at2", provider_message_id="P2", failover=None)
    await backend.store.upsert(dataclasses.replace(good, next_check_at=clock.now + LEASE / 4))
    clock.advance(minutes=1)
    reconciler = service(backend, provider, clock, sender, "w1")
    assert await reconciler.run_once() == 1
    checked = await backend.store.get("at2")
    assert checked is not None and checked.status is DeliveryStatus.DELIVERED
    clock.advance(hours=1)  # past every lease: the unreadable record is not claimed again
    assert await reconciler.run_once() == 0
    refused = await foreign.get("at1")
    assert refused is not None and refused.status is DeliveryStatus.FAILED
    assert refused.last_error is not None and refused.last_error.message.startswith("refused: ")
    assert sender.calls == []
