"""Delivery tracking: backoff schedule, delivered/failed events, the API-level fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from kmsg_webhook.messaging import (
    ApiAttemptStatus,
    ApiFailoverConfig,
    DeliveryStatus,
    DeliveryStatusResult,
    DeliveryTrackingService,
    Fail,
    FallbackContext,
    KMsg,
    KMsgDefaults,
    KMsgError,
    KMsgErrorCode,
    MessageStatus,
    MessageType,
    MockProvider,
    NonKakaoUserRule,
    Ok,
    PollingConfig,
    SendResult,
    SendWarning,
    SendWarningCode,
    SmsSendOptions,
    SolapiConfig,
    SolapiProvider,
    TrackableMockProvider,
    TrackingRecord,
    is_non_kakao_user_failure,
)
from kmsg_webhook.messaging.kmsg import HookContext
from kmsg_webhook.messaging.result import Result
from kmsg_webhook.messaging.tracking import UnsupportedProviderStrategy
from support.fakes.solapi import FakeSolapi
from support.fakes.util import FlakySink, ManualClock, RecordingSleep


class Rig:
    """KMsg + tracking sharing one mock provider, one manual clock and one sink."""

    def __init__(self, provider: Any = None, **tracking: Any) -> None:
        self.clock = ManualClock()
        self.sink = FlakySink()
        self.provider = provider or TrackableMockProvider()
        self.tracking = DeliveryTrackingService(
            [self.provider], webhooks=self.sink, clock=self.clock, **tracking
        )
        self.kmsg = KMsg(
            [self.provider], hooks=self.tracking.hooks(), webhooks=self.sink, clock=self.clock
        )

    async def send(self, **message: Any) -> SendResult:
        message.setdefault("to", "01012345678")
        if "type" not in message:
            message.setdefault("text", "hello")
        outcome = await self.kmsg.send(message)
        assert isinstance(outcome, Ok), outcome
        return outcome.value

    async def record(self, message_id: str) -> TrackingRecord:
        record = await self.tracking.get_record(message_id)
        assert record is not None
        return record

    def answer(self, result: SendResult, status: DeliveryStatus, **kw: Any) -> None:
        assert result.provider_message_id is not None
        self.provider.set_delivery_status(
            result.provider_message_id,
            Ok(DeliveryStatusResult(result.provider_id, result.provider_message_id, status, **kw)),
        )


async def test_backoff_schedule_then_delivered_event() -> None:
    rig = Rig()
    result = await rig.send(messageId="m1")
    start = rig.clock.now
    record = await rig.record("m1")
    assert record.status is DeliveryStatus.SENT
    assert record.next_check_at == start + timedelta(seconds=30)
    assert await rig.tracking.run_once() == 0  # not due yet

    gaps = []
    for _ in range(6):
        rig.clock.now = (await rig.record("m1")).next_check_at
        assert await rig.tracking.run_once() == 1  # vendor does not know it yet
        record = await rig.record("m1")
        gaps.append(record.next_check_at - rig.clock.now)
    assert gaps == [
        timedelta(seconds=30),
        timedelta(minutes=2),
        timedelta(minutes=10),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=2),
    ]
    assert record.attempt_count == 6

    rig.answer(result, DeliveryStatus.DELIVERED, status_code="4000")
    rig.clock.now = record.next_check_at
    assert await rig.tracking.run_once() == 1
    record = await rig.record("m1")
    assert record.status is DeliveryStatus.DELIVERED
    delivered = rig.sink.stored["m1:message.delivered"]
    assert delivered.data["status"] == "DELIVERED"
    assert delivered.data["statusCode"] == "4000"
    assert delivered.data["to"] == "010-****-5678"
    assert delivered.metadata.provider_id == "mock"
    rig.clock.advance(hours=3)
    assert await rig.tracking.run_once() == 0  # terminal: no more polling


async def test_failed_status_emits_message_failed() -> None:
    rig = Rig()
    result = await rig.send(messageId="m2")
    rig.answer(result, DeliveryStatus.FAILED, status_code="E1", status_message="결번")
    rig.clock.advance(seconds=30)
    await rig.tracking.run_once()
    event = rig.sink.stored["m2:message.failed"]
    assert event.data["statusMessage"] == "결번"
    assert (await rig.record("m2")).status is DeliveryStatus.FAILED


async def test_errors_back_off_or_give_up() -> None:
    rig = Rig()
    flaky = await rig.send(messageId="flaky")
    broken = await rig.send(messageId="broken")
    assert flaky.provider_message_id and broken.provider_message_id
    rig.provider.set_delivery_status(
        flaky.provider_message_id, Fail(KMsgError(KMsgErrorCode.NETWORK_ERROR, "down"))
    )
    rig.provider.set_delivery_status(
        broken.provider_message_id, Fail(KMsgError(KMsgErrorCode.AUTHENTICATION_FAILED, "no"))
    )
    rig.clock.advance(seconds=30)
    assert await rig.tracking.run_once() == 2
    flaky_record, broken_record = await rig.record("flaky"), await rig.record("broken")
    assert flaky_record.status is DeliveryStatus.SENT
    assert flaky_record.last_error is not None and flaky_record.last_error.code == "NETWORK_ERROR"
    assert broken_record.status is DeliveryStatus.UNKNOWN
    assert broken_record.last_error is not None
    assert broken_record.last_error.code == "AUTHENTICATION_FAILED"


async def test_tracking_window_ends_after_24_hours() -> None:
    rig = Rig()
    await rig.send(messageId="slow")
    rig.clock.advance(hours=24, seconds=1)
    await rig.tracking.run_once()
    record = await rig.record("slow")
    assert record.status is DeliveryStatus.UNKNOWN
    assert record.last_error is not None and record.last_error.code == "TRACKING_TIMEOUT"
    assert "slow:message.failed" not in rig.sink.stored


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (UnsupportedProviderStrategy.SKIP, DeliveryStatus.SENT),
        (UnsupportedProviderStrategy.UNKNOWN, DeliveryStatus.UNKNOWN),
    ],
)
async def test_provider_without_status_api(
    strategy: UnsupportedProviderStrategy, expected: DeliveryStatus
) -> None:
    rig = Rig(MockProvider(), polling=PollingConfig(unsupported_provider=strategy))
    await rig.send(messageId="x")
    rig.clock.advance(seconds=30)
    await rig.tracking.run_once()
    record = await rig.record("x")
    assert record.status is expected
    assert record.last_error is not None and record.last_error.code == "UNSUPPORTED_PROVIDER"


async def test_scheduled_send_waits_for_grace_period() -> None:
    rig = Rig()
    when = rig.clock.now + timedelta(hours=1)
    await rig.send(messageId="later", options={"scheduledAt": when})
    record = await rig.record("later")
    assert record.status is DeliveryStatus.PENDING
    assert record.next_check_at == when + timedelta(minutes=2)


async def test_missing_provider_message_id_is_unknown_at_once() -> None:
    rig = Rig()
    ctx = HookContext(message_id="n", options=None, timestamp=rig.clock.now)
    result = SendResult("n", "mock", MessageStatus.SENT, MessageType.SMS, "01012345678")
    record = await rig.tracking.record_send(ctx, result)
    assert record.status is DeliveryStatus.UNKNOWN
    assert record.last_error is not None
    assert record.last_error.code == "MISSING_PROVIDER_MESSAGE_ID"


async def test_background_loop_uses_injected_sleep() -> None:
    sleep = RecordingSleep()
    rig = Rig(sleep=sleep)
    rig.tracking.start()
    for _ in range(5):
        await asyncio.sleep(0)
    await rig.tracking.stop()
    assert sleep.delays and set(sleep.delays) == {5.0}


# --------------------------------------------------------------------------- API fallback

K105 = {"mock": NonKakaoUserRule(status_codes=("K105",))}


def fallback_rig(**failover: Any) -> Rig:
    holder: dict[str, KMsg] = {}

    async def sender(
        options: SmsSendOptions, ctx: FallbackContext
    ) -> Result[SendResult, KMsgError]:
        return await holder["kmsg"].send(options)

    settings: dict[str, Any] = {"sender": sender, "rules_by_provider_id": K105}
    settings.update(failover)
    rig = Rig(api_failover=ApiFailoverConfig(**settings))
    holder["kmsg"] = rig.kmsg
    return rig


async def alimtalk_that_fails(
    rig: Rig,
    *,
    status_code: str = "K105",
    failover: dict[str, Any] | None = None,
) -> TrackingRecord:
    result = await rig.send(
        type="ALIMTALK",
        messageId="at1",
        templateId="T",
        variables={},
        **{"from": "0212345678"},
        failover=failover
        if failover is not None
        else {
            "enabled": True,
            "fallbackChannel": "lms",
            "fallbackContent": "카카오톡 대신 문자로 보냅니다",
            "fallbackTitle": "안내",
        },
    )
    rig.answer(result, DeliveryStatus.FAILED, status_code=status_code, status_message="실패")
    rig.clock.advance(seconds=30)
    await rig.tracking.run_once()
    return await rig.record("at1")


async def test_api_fallback_sends_lms_once() -> None:
    rig = fallback_rig()
    record = await alimtalk_that_fails(rig)
    assert record.failover is not None
    assert record.failover.send_warning_codes == (SendWarningCode.FAILOVER_UNSUPPORTED_PROVIDER,)
    assert record.failover.attempted
    assert record.failover.status is ApiAttemptStatus.SENT
    assert record.failover.fallback_message_id == "at1:api-fallback"
    fallback = rig.provider.calls[-1]
    assert isinstance(fallback, SmsSendOptions)
    assert fallback.type is MessageType.LMS
    assert fallback.text == "카카오톡 대신 문자로 보냅니다"
    assert fallback.subject == "안내"
    assert fallback.from_ == "0212345678"
    assert "at1:message.failed" in rig.sink.stored
    assert "at1:api-fallback:message.sent" in rig.sink.stored
    calls = len(rig.provider.calls)
    rig.clock.advance(hours=1)
    await rig.tracking.run_once()
    assert len(rig.provider.calls) == calls  # at most once


@pytest.mark.parametrize(
    ("kwargs", "failover_options", "status_code", "expected", "warning"),
    [
        ({}, None, "OTHER", ApiAttemptStatus.NOT_ATTEMPTED, None),
        ({}, {"enabled": False, "fallbackContent": "x"}, "K105",
         ApiAttemptStatus.NOT_ATTEMPTED, None),
        ({"enabled": False}, None, "K105", ApiAttemptStatus.NOT_ATTEMPTED, None),
        ({"sender": None}, None, "K105", ApiAttemptStatus.SKIPPED, "API_FAILOVER_SENDER_MISSING"),
        ({}, {"enabled": True, "fallbackContent": "  "}, "K105", ApiAttemptStatus.SKIPPED,
         "FALLBACK_CONTENT_MISSING"),
        ({"classify_non_kakao_user": lambda q: q.status_code == "OTHER"}, None, "OTHER",
         ApiAttemptStatus.SENT, None),
        ({"classify_non_kakao_user": lambda q: 1 / 0}, None, "K105",
         ApiAttemptStatus.NOT_ATTEMPTED, None),
    ],
)  # fmt: skip
async def test_api_fallback_conditions(
    kwargs: dict[str, Any],
    failover_options: dict[str, Any] | None,
    status_code: str,
    expected: ApiAttemptStatus,
    warning: str | None,
) -> None:
    rig = fallback_rig(**kwargs)
    record = await alimtalk_that_fails(rig, status_code=status_code, failover=failover_options)
    assert record.status is DeliveryStatus.FAILED
    assert record.failover is not None
    assert record.failover.status is expected
    assert record.failover.warning_code == warning


async def test_fallback_sender_exception_is_recorded() -> None:
    async def explode(options: SmsSendOptions, ctx: FallbackContext) -> Any:
        raise RuntimeError("sender broke")

    rig = Rig(api_failover=ApiFailoverConfig(sender=explode, rules_by_provider_id=K105))
    record = await alimtalk_that_fails(rig)
    assert record.failover is not None
    assert record.failover.status is ApiAttemptStatus.FAILED
    assert record.failover.error_code == "API_FAILOVER_SEND_EXCEPTION"


async def test_no_fallback_without_failover_warning() -> None:
    # IWINV maps failover natively and returns no warning, so it never qualifies.
    rig = fallback_rig()
    ctx = HookContext(message_id="iw", options=None, timestamp=rig.clock.now)
    result = SendResult("iw", "mock", MessageStatus.SENT, MessageType.ALIMTALK, "0101", "P")
    await rig.tracking.record_send(ctx, result)
    rig.answer(result, DeliveryStatus.FAILED, status_code="K105")
    rig.clock.advance(seconds=30)
    await rig.tracking.run_once()
    record = await rig.record("iw")
    assert record.failover is None
    assert len(rig.provider.calls) == 0


@pytest.mark.parametrize(
    ("provider", "code", "message", "expected"),
    [
        ("solapi", "3104", None, True),
        ("solapi", "3107", None, True),
        ("solapi", "3105", "카카오톡 미사용자", True),
        ("solapi", "3105", "기타", False),
        ("iwinv", "K105", "카카오톡 미사용 번호", True),
        ("iwinv", "K105", "미사용", False),
        ("aligo", "3104", "미사용자", False),
    ],
)
def test_builtin_non_kakao_user_rules(
    provider: str, code: str, message: str | None, expected: bool
) -> None:
    assert is_non_kakao_user_failure(provider, code, message) is expected


@pytest.fixture
async def fake_solapi() -> AsyncIterator[FakeSolapi]:
    async with FakeSolapi() as server:
        yield server


async def test_solapi_end_to_end_fallback(fake_solapi: FakeSolapi) -> None:
    solapi = SolapiProvider(
        SolapiConfig(
            api_key=fake_solapi.api_key,
            api_secret=fake_solapi.api_secret,
            default_from="0212345678",
            kakao_pf_id="PF1",
            base_url=fake_solapi.url,
        )
    )
    clock = ManualClock()
    sink = FlakySink()
    holder: dict[str, KMsg] = {}

    async def sender(options: SmsSendOptions, ctx: FallbackContext) -> Any:
        return await holder["kmsg"].send(options)

    tracking = DeliveryTrackingService(
        [solapi], webhooks=sink, clock=clock, api_failover=ApiFailoverConfig(sender=sender)
    )
    kmsg = KMsg(
        [solapi],
        hooks=tracking.hooks(),
        webhooks=sink,
        clock=clock,
        defaults=KMsgDefaults(kakao_plus_id="@brand"),
    )
    holder["kmsg"] = kmsg
    try:
        outcome = await kmsg.send(
            {
                "type": "ALIMTALK",
                "to": "010-1234-5678",
                "templateId": "KA01",
                "variables": {"name": "홍길동"},
                "messageId": "order-9",
                "failover": {"enabled": True, "fallbackContent": "문자로 대신 안내드립니다"},
            }
        )
        assert isinstance(outcome, Ok), outcome
        assert outcome.value.warnings[0] == SendWarning(
            SendWarningCode.FAILOVER_PARTIAL_PROVIDER,
            outcome.value.warnings[0].message,
            provider_id="solapi",
            mapped_fields=("kakao.disableSms", "text", "subject"),
            unsupported_fields=("fallbackChannel",),
        )
        assert outcome.value.provider_message_id is not None
        fake_solapi.statuses[outcome.value.provider_message_id] = {
            "statusCode": "3104",
            "statusMessage": "카카오톡 미사용자",
        }
        clock.advance(seconds=30)
        await tracking.run_once()
        record = await tracking.get_record("order-9")
        assert record is not None and record.failover is not None
        assert record.status is DeliveryStatus.FAILED
        assert record.failover.status is ApiAttemptStatus.SENT
        sends = [r.json["message"] for r in fake_solapi.hits("/messages/v4/send")]
        assert [m["type"] for m in sends] == ["ATA", "SMS"]
        assert sends[1]["text"] == "문자로 대신 안내드립니다"
        assert set(sink.stored) >= {
            "order-9:message.sent",
            "order-9:message.failed",
            "order-9:api-fallback:message.sent",
        }
    finally:
        await kmsg.aclose()
