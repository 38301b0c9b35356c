"""The KMsg facade: normalisation, routing, batching, hooks and the webhook feed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kmsg_webhook.errors import ConfigError
from kmsg_webhook.events import WebhookEventType
from kmsg_webhook.messaging import (
    AlimTalkSendOptions,
    Fail,
    FailoverOptions,
    FinalOutcome,
    HookContext,
    KakaoOptions,
    KMsg,
    KMsgDefaults,
    KMsgError,
    KMsgErrorCode,
    KMsgHooks,
    MessageStatus,
    MessageType,
    MockProvider,
    MockStep,
    Ok,
    RoutingConfig,
    RoutingStrategy,
    SendOptions,
    SendResult,
    SmsSendOptions,
    WebhookFeed,
    WebhookFeedConfig,
)
from kmsg_webhook.messaging.result import Result
from support.fakes.util import FlakySink, RecordingSleep

SMS_ONLY = (MessageType.SMS, MessageType.LMS)


def providers(*ids: str, types: tuple[MessageType, ...] | None = None) -> list[MockProvider]:
    return [MockProvider(id=i, supported_types=types) if types else MockProvider(id=i) for i in ids]


async def sent_by(kmsg: KMsg, message: dict[str, Any]) -> str:
    outcome = await kmsg.send(message)
    assert isinstance(outcome, Ok), outcome
    return outcome.value.provider_id


async def error_of(kmsg: KMsg, message: Any) -> KMsgError:
    outcome = await kmsg.send(message)
    assert isinstance(outcome, Fail), outcome
    error: KMsgError = outcome.error
    return error


# --------------------------------------------------------------------------- construction


def test_constructor_validates_providers() -> None:
    with pytest.raises(ConfigError):
        KMsg([])
    with pytest.raises(ConfigError, match="Duplicate provider id: a"):
        KMsg(providers("a", "a"))


# --------------------------------------------------------------------------- SMS / LMS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a" * 90, MessageType.SMS),  # exactly 90 bytes stays SMS
        ("a" * 91, MessageType.LMS),
        ("가" * 45, MessageType.SMS),  # Hangul counts 2
        ("가" * 45 + "a", MessageType.LMS),
        ("😀" * 22 + "aa", MessageType.SMS),  # astral characters count 4
        ("😀" * 23, MessageType.LMS),
        ("é" * 46, MessageType.LMS),
    ],
)
async def test_sms_to_lms_auto_switch(text: str, expected: MessageType) -> None:
    mock = MockProvider()
    outcome = await KMsg([mock]).send({"to": "01012345678", "text": text})
    assert isinstance(outcome, Ok)
    assert outcome.value.type is expected
    assert mock.calls[0].type is expected


async def test_auto_switch_uses_filled_text_and_custom_threshold() -> None:
    kmsg = KMsg([MockProvider()], defaults=KMsgDefaults(auto_lms_bytes=10))
    short = await kmsg.send({"to": "01012345678", "text": "#{n}", "variables": {"n": "0123456789"}})
    long = await kmsg.send({"to": "01012345678", "text": "#{n}", "variables": {"n": "01234567890"}})
    assert isinstance(short, Ok) and isinstance(long, Ok)
    assert (short.value.type, long.value.type) == (MessageType.SMS, MessageType.LMS)


async def test_explicit_type_is_never_switched() -> None:
    mock = MockProvider()
    kmsg = KMsg([mock])
    outcome = await kmsg.send({"type": "SMS", "to": "01012345678", "text": "a" * 200})
    typed = await kmsg.send(SmsSendOptions(to="01012345678", text="a" * 200))
    assert isinstance(outcome, Ok) and isinstance(typed, Ok)
    assert outcome.value.type is MessageType.SMS and typed.value.type is MessageType.SMS


async def test_content_alias_interpolation_and_message_id() -> None:
    mock = MockProvider()
    kmsg = KMsg([mock], id_factory=lambda: "generated-1")
    outcome = await kmsg.send(
        {
            "to": "01012345678",
            "content": "안녕 #{name}, #{n}",
            "variables": {"name": "철수", "n": 2.0},
        }
    )
    assert isinstance(outcome, Ok)
    assert outcome.value.message_id == "generated-1"
    sent = mock.calls[0]
    assert isinstance(sent, SmsSendOptions)
    assert sent.text == "안녕 철수, 2"
    assert sent.message_id == "generated-1"


# --------------------------------------------------------------------------- routing


async def test_routing_order() -> None:
    a, b, c = providers("a", "b", "c")
    c_sms_only = MockProvider(id="d", supported_types=SMS_ONLY)
    kmsg = KMsg(
        [a, b, c, c_sms_only],
        routing=RoutingConfig(
            default_provider_id="d",
            by_type={MessageType.ALIMTALK: "c", MessageType.VOICE: ("ghost", "b")},
        ),
    )
    # 1. explicit provider id wins over everything
    assert await sent_by(kmsg, {"to": "01012345678", "text": "x", "providerId": "b"}) == "b"
    # 2. by_type (string, and a list whose unknown ids are skipped)
    alimtalk = {"type": "ALIMTALK", "to": "01012345678", "templateId": "T", "variables": {}}
    assert await sent_by(kmsg, alimtalk) == "c"
    assert await sent_by(kmsg, {"type": "VOICE", "to": "01012345678", "text": "x"}) == "b"
    # 3. default provider when it supports the type
    assert await sent_by(kmsg, {"to": "01012345678", "text": "x"}) == "d"
    # 4. otherwise the first provider that supports it
    assert (
        await sent_by(kmsg, {"type": "FAX", "to": "0212345678", "fax": {"fileIds": ["f"]}}) == "a"
    )


async def test_by_type_list_of_only_unknown_ids_falls_through() -> None:
    kmsg = KMsg(
        providers("a", "b"),
        routing=RoutingConfig(default_provider_id="b", by_type={MessageType.SMS: ["x", "y"]}),
    )
    assert await sent_by(kmsg, {"to": "01012345678", "text": "x"}) == "b"


async def test_round_robin() -> None:
    kmsg = KMsg(
        providers("a", "b", "c"),
        routing=RoutingConfig(
            by_type={MessageType.SMS: ["a", "c"]}, strategy=RoutingStrategy.ROUND_ROBIN
        ),
    )
    picks = [await sent_by(kmsg, {"to": "01012345678", "text": "x"}) for _ in range(5)]
    assert picks == ["a", "c", "a", "c", "a"]
    # Another type has its own counter (and here no by_type entry: first provider).
    assert await sent_by(kmsg, {"type": "LMS", "to": "01012345678", "text": "x"}) == "a"


async def test_routing_failures() -> None:
    kmsg = KMsg(
        providers("a", types=SMS_ONLY),
        routing=RoutingConfig(by_type={MessageType.LMS: "ghost"}),
    )
    unknown = await error_of(kmsg, {"to": "01012345678", "text": "x", "providerId": "zzz"})
    unsupported = await error_of(
        kmsg, {"type": "MMS", "to": "01012345678", "text": "x", "providerId": "a"}
    )
    routed_to_ghost = await error_of(kmsg, {"type": "LMS", "to": "01012345678", "text": "x"})
    nobody = await error_of(kmsg, {"type": "VOICE", "to": "01012345678", "text": "x"})
    assert unknown.message == "Provider not found: zzz"
    assert unsupported.message == "Provider a does not support type MMS"
    assert routed_to_ghost.message == "Provider not found: ghost"
    assert nobody.message == "No provider available for type VOICE"
    for error in (unknown, unsupported, routed_to_ghost, nobody):
        assert error.code is KMsgErrorCode.INVALID_REQUEST


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ({"text": "no recipient"}, "to is required"),
        ({"to": "  ", "text": "x"}, "to is required"),
        ({"to": "010-12", "text": "x"}, "invalid phone number"),
        ({"to": "010-1234-567a", "text": "x"}, "invalid phone number"),
        ({"to": "01012345678"}, "text is required"),
        (
            {"to": "01012345678", "text": "hi #{name}", "variables": {}},
            "missing template variables: name",
        ),
        (
            {"to": "01012345678", "text": "#{a}#{b}", "variables": {"a": 1}},
            "missing template variables: b",
        ),
        ({"type": "ALIMTALK", "to": "01012345678", "variables": {}}, "templateId is required"),
        ({"type": "ALIMTALK", "to": "01012345678", "templateId": "T"}, "variables is required"),
        ({"type": "PIGEON", "to": "01012345678", "text": "x"}, "Unknown message type"),
        ({"to": "01012345678", "text": 5}, "text must be a string"),
        ({"to": "01012345678", "text": "x", "options": {"scheduledAt": "soon"}}, "scheduledAt"),
    ],
)
async def test_bad_input_is_invalid_request(message: dict[str, Any], fragment: str) -> None:
    mock = MockProvider()
    error = await error_of(KMsg([mock]), message)
    assert error.code is KMsgErrorCode.INVALID_REQUEST
    assert fragment in error.message
    assert mock.calls == []


async def test_non_mapping_input_and_mismatched_typed_options() -> None:
    kmsg = KMsg([MockProvider()])
    assert (await error_of(kmsg, 42)).code is KMsgErrorCode.INVALID_REQUEST
    wrong = AlimTalkSendOptions(
        to="01012345678", template_id="T", variables={}, type=MessageType.SMS
    )
    assert (await error_of(kmsg, wrong)).code is KMsgErrorCode.INVALID_REQUEST


class ExplodingProvider:
    id = "boom"
    name = "Boom"
    supported_types = frozenset({MessageType.SMS})

    async def send(self, options: SendOptions) -> Result[SendResult, KMsgError]:
        raise RuntimeError("bug in provider")


async def test_provider_that_raises_becomes_unknown_error() -> None:
    error = await error_of(KMsg([ExplodingProvider()]), {"to": "01012345678", "text": "x"})
    assert error.code is KMsgErrorCode.UNKNOWN_ERROR
    assert error.provider_id == "boom"


async def test_vendor_failure_is_tagged_with_provider_and_request_id() -> None:
    mock = MockProvider()
    mock.script(MockStep.failure(KMsgErrorCode.INSUFFICIENT_BALANCE, provider_error_code="-102"))
    error = await error_of(KMsg([mock]), {"to": "01012345678", "text": "x", "requestId": "req-7"})
    assert error.code is KMsgErrorCode.INSUFFICIENT_BALANCE
    assert error.provider_id == "mock"
    assert error.request_id == "req-7"
    assert error.provider_error_code == "-102"


async def test_plus_id_policy_for_alimtalk() -> None:
    # SOLAPI's onboarding spec requires a plusId for ALIMTALK (it cannot infer one).
    solapi_like = MockProvider(id="solapi")
    message = {"type": "ALIMTALK", "to": "01012345678", "templateId": "T", "variables": {}}
    error = await error_of(KMsg([solapi_like]), message)
    assert "plusId" in error.message
    assert solapi_like.calls == []
    kmsg = KMsg([solapi_like], defaults=KMsgDefaults(kakao_plus_id="@brand", kakao_profile_id="PF"))
    assert await sent_by(kmsg, message) == "solapi"
    sent = solapi_like.calls[0]
    assert isinstance(sent, AlimTalkSendOptions)
    assert sent.kakao == KakaoOptions(profile_id="PF", plus_id="@brand")


# --------------------------------------------------------------------------- hooks


class HookLog:
    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or set()

    def _record(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise RuntimeError(f"hook {name} broke")

    def hooks(self) -> KMsgHooks:
        async def final(ctx: HookContext, outcome: FinalOutcome) -> None:
            self._record(f"final:{outcome.outcome.value}")

        return KMsgHooks(
            on_before_send=lambda ctx: self._record("before"),
            on_success=lambda ctx, result: self._record("success"),
            on_error=lambda ctx, error: self._record("error"),
            on_queued=lambda ctx, result: self._record("queued"),
            on_final=final,
        )


async def test_hook_order() -> None:
    log = HookLog()
    mock = MockProvider()
    kmsg = KMsg([mock], hooks=log.hooks())
    await kmsg.send({"to": "01012345678", "text": "x"})
    mock.fail_next()
    await kmsg.send({"to": "01012345678", "text": "x"})
    await kmsg.send({"to": "bad", "text": "x"})
    assert log.calls == [
        "before", "success", "final:success",
        "before", "error", "final:failure",
        "before", "error", "final:failure",
    ]  # fmt: skip


async def test_queued_hook_for_pending_results() -> None:
    class Queueing(MockProvider):
        async def send(self, options: SendOptions) -> Result[SendResult, KMsgError]:
            outcome = await super().send(options)
            assert isinstance(outcome, Ok)
            from dataclasses import replace

            return Ok(replace(outcome.value, status=MessageStatus.PENDING))

    log = HookLog()
    await KMsg([Queueing()], hooks=log.hooks()).send({"to": "01012345678", "text": "x"})
    assert log.calls == ["before", "queued", "success", "final:success"]


async def test_raising_hooks_never_fail_a_send() -> None:
    log = HookLog(fail={"before", "success", "final:success"})
    mock = MockProvider()
    kmsg = KMsg([mock], hooks=[log.hooks(), HookLog().hooks()])
    outcome = await kmsg.send({"to": "01012345678", "text": "x"})
    assert isinstance(outcome, Ok)
    assert len(mock.calls) == 1  # a broken on_before_send does not stop the send
    assert log.calls == ["before", "success", "final:success"]  # on_final still ran


# --------------------------------------------------------------------------- batch


class CountingProvider(MockProvider):
    """Tracks how many sends run at once."""

    def __init__(self, id: str, max_batch_size: int | None = None) -> None:
        super().__init__(id=id, max_batch_size=max_batch_size)
        self.in_flight = 0
        self.peak = 0

    async def send(self, options: SendOptions) -> Result[SendResult, KMsgError]:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        self.in_flight -= 1
        return await super().send(options)


async def test_batch_chunks_of_fifty_and_input_order() -> None:
    big = CountingProvider("big")
    small = CountingProvider("small", max_batch_size=2)
    kmsg = KMsg([big, small])
    messages: list[dict[str, Any]] = [
        {"to": "01012345678", "text": f"m{i}", "messageId": f"id-{i}",
         "providerId": "small" if i % 10 == 0 else "big"}
        for i in range(130)
    ]  # fmt: skip
    messages.insert(5, {"to": "nope", "text": "bad", "messageId": "bad-1"})
    batch = await kmsg.send(messages)
    assert batch.total == 131
    ids = [r.value.message_id if isinstance(r, Ok) else r.error.message for r in batch.results]
    assert ids[5].startswith("invalid phone number")
    assert [i for n, i in enumerate(ids) if n != 5] == [f"id-{i}" for i in range(130)]
    assert big.peak == 50
    assert small.peak == 2
    assert len(big.calls) == 117 and len(small.calls) == 13


async def test_batch_round_robin_and_custom_chunk_size() -> None:
    a, b = CountingProvider("a"), CountingProvider("b")
    kmsg = KMsg(
        [a, b],
        routing=RoutingConfig(
            by_type={MessageType.SMS: ["a", "b"]}, strategy=RoutingStrategy.ROUND_ROBIN
        ),
        chunk_size=3,
    )
    batch = await kmsg.send([{"to": "01012345678", "text": "x"}] * 10)
    assert [r.value.provider_id for r in batch.results if isinstance(r, Ok)] == ["a", "b"] * 5
    assert a.peak == 3 and b.peak == 3


# --------------------------------------------------------------------------- webhook feed


async def test_send_emits_masked_message_sent() -> None:
    sink = FlakySink()
    mock = MockProvider()
    kmsg = KMsg([mock], webhooks=sink)
    outcome = await kmsg.send(
        {
            "type": "ALIMTALK",
            "to": "010-1234-5678",
            "from": "0212345678",
            "templateId": "AUTH_OTP",
            "variables": {"code": "1"},
            "messageId": "order-42",
            "requestId": "corr-1",
            "failover": {"enabled": True, "fallbackContent": "sms"},
        }
    )
    assert isinstance(outcome, Ok)
    (event,) = sink.events
    assert event.id == "order-42:message.sent"
    assert event.type is WebhookEventType.MESSAGE_SENT
    assert event.metadata.provider_id == "mock"
    assert event.metadata.template_id == "AUTH_OTP"
    assert event.metadata.message_id == "order-42"
    assert event.metadata.correlation_id == "corr-1"
    data: dict[str, Any] = dict(event.data)
    assert data["to"] == "010-****-5678"
    assert data["from"] == "021-***-5678"
    assert data["status"] == "SENT" and data["type"] == "ALIMTALK"
    assert data["warnings"][0]["code"] == "FAILOVER_UNSUPPORTED_PROVIDER"
    assert "01012345678" not in event.to_json()


async def test_failures_emit_message_failed_and_provider_error() -> None:
    sink = FlakySink()
    mock = MockProvider()
    kmsg = KMsg([mock], webhooks=sink)
    mock.script(MockStep.failure(KMsgErrorCode.NETWORK_ERROR, http_status=502))
    await kmsg.send({"to": "01012345678", "text": "x", "messageId": "m1"})
    await kmsg.send({"to": "nope", "text": "x", "messageId": "m2"})
    ids = [e.id for e in sink.events]
    assert ids == ["m1:system.provider_error", "m1:message.failed", "m2:message.failed"]
    failed = sink.stored["m1:message.failed"]
    assert failed.metadata.provider_id == "mock"
    assert failed.data["error"] == {
        "code": "NETWORK_ERROR",
        "message": "Mock failure (NETWORK_ERROR)",
        "retryable": True,
        "httpStatus": 502,
    }
    invalid = sink.stored["m2:message.failed"]
    assert invalid.metadata.provider_id is None
    assert invalid.to_wire()["data"]["error"]["code"] == "INVALID_REQUEST"


async def test_event_ids_are_deterministic_and_safe() -> None:
    sink = FlakySink()
    kmsg = KMsg([MockProvider()], webhooks=sink)
    for _ in range(2):
        await kmsg.send({"to": "01012345678", "text": "x", "messageId": "same"})
    await kmsg.send({"to": "01012345678", "text": "x", "messageId": "주문 1"})
    await kmsg.send(
        {"to": "01012345678", "text": "x", "messageId": "same", "providerOptions": {"attempt": 2}}
    )
    ids = [e.id for e in sink.events]
    assert ids[0] == "same:message.sent"
    assert sink.calls == 4 and len(ids) == 3  # the repeat overwrote the same id
    assert ids[1].startswith("h") and ids[1].endswith(":message.sent")
    assert ids[2] == "same:message.sent:a2"


async def test_store_outage_never_fails_the_send() -> None:
    sink = FlakySink(failures=3)
    sleep = RecordingSleep()
    errors: list[int] = []
    feed = WebhookFeed(sink, sleep=sleep, on_emit_error=lambda event, exc, n: errors.append(n))
    kmsg = KMsg([MockProvider()], webhooks=feed)
    outcome = await kmsg.send({"to": "01012345678", "text": "x", "messageId": "m"})
    assert isinstance(outcome, Ok)
    assert sink.events == []
    await feed.drain()
    assert [e.id for e in sink.events] == ["m:message.sent"]
    assert errors == [1, 2, 3]
    assert sleep.delays == [1.0, 2.0, 4.0]
    assert feed.stats.emitted == 1 and feed.stats.pending == 0


async def test_broken_sink_is_contained() -> None:
    class Broken:
        async def emit(self, event: object) -> None:
            raise TypeError("sink bug")

    dropped: list[str] = []
    feed = WebhookFeed(
        Broken(),
        config=WebhookFeedConfig(max_attempts=1),
        on_drop=lambda event, reason: dropped.append(reason),
    )
    outcome = await KMsg([MockProvider()], webhooks=feed).send({"to": "01012345678", "text": "x"})
    assert isinstance(outcome, Ok)
    assert dropped == ["attempts_exhausted"]


async def test_health_check_and_close() -> None:
    class Sick(MockProvider):
        async def health_check(self) -> Any:
            from kmsg_webhook.messaging import ProviderHealth

            return ProviderHealth(healthy=False, issues=("no sender",))

    kmsg = KMsg([MockProvider(), Sick(id="sick")], webhooks=FlakySink())
    health = await kmsg.health_check()
    assert not health.healthy
    assert health.issues == ("sick: no sender",)
    await kmsg.aclose()
    assert kmsg.feed is not None
    await kmsg.send({"to": "01012345678", "text": "x"})
    assert kmsg.feed.stats.dropped == 1  # closed feed: reported, not raised


async def test_send_or_raise() -> None:
    mock = MockProvider()
    kmsg = KMsg([mock])
    result = await kmsg.send_or_raise({"to": "01012345678", "text": "x"})
    assert result.provider_id == "mock"
    mock.fail_next(code=KMsgErrorCode.AUTHENTICATION_FAILED)
    with pytest.raises(KMsgError) as info:
        await kmsg.send_or_raise({"to": "01012345678", "text": "x"})
    assert info.value.code is KMsgErrorCode.AUTHENTICATION_FAILED


async def test_failover_request_reaches_provider_unchanged() -> None:
    mock = MockProvider()
    failover = FailoverOptions(enabled=True, fallback_content="대체")
    await KMsg([mock]).send(
        AlimTalkSendOptions(to="01012345678", template_id="T", variables={}, failover=failover)
    )
    sent = mock.calls[0]
    assert isinstance(sent, AlimTalkSendOptions)
    assert sent.failover == failover


async def test_malformed_typed_options_do_not_raise() -> None:
    broken = SmsSendOptions(to="01012345678", text="#{a}", variables=42)  # type: ignore[arg-type]
    error = await error_of(KMsg([MockProvider()]), broken)
    assert error.code is KMsgErrorCode.INVALID_REQUEST
