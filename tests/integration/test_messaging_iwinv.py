"""IWINVProvider against a local fake IWINV server."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kmsg_webhook.errors import ConfigError
from kmsg_webhook.messaging import (
    AlimTalkSendOptions,
    BalanceQuery,
    BinaryInput,
    DeliveryStatus,
    DeliveryStatusQuery,
    Fail,
    FailoverOptions,
    FallbackChannel,
    IWINVConfig,
    IWINVProvider,
    KMsgErrorCode,
    MessageMedia,
    MessageStatus,
    MessageType,
    Ok,
    ProviderConfigError,
    RetryPolicy,
    SmsSendOptions,
)
from support.fakes.base import Reply
from support.fakes.fixtures import provider_fixtures
from support.fakes.iwinv import FakeIwinv
from support.fakes.util import RecordingSleep

SEND = "/alimtalk/api/v2/send/"
SMS_SEND = "/sms/api/v2/send/"


def make(fake: FakeIwinv, sleep: RecordingSleep, **overrides: Any) -> IWINVProvider:
    settings: dict[str, Any] = {
        "api_key": fake.api_key,
        "sms_api_key": fake.sms_api_key,
        "sms_auth_key": fake.sms_auth_key,
        "sms_company_id": "COMPANY1",
        "sender_number": "010-0000-0000",
        "base_url": fake.alimtalk_url,
        "sms_base_url": fake.sms_url,
    }
    settings.update(overrides)
    return IWINVProvider(IWINVConfig(**settings), sleep=sleep)


fake, sleep, provider, once = provider_fixtures(FakeIwinv, make)


def alimtalk(**kw: Any) -> AlimTalkSendOptions:
    base: dict[str, Any] = {
        "to": "010-1234-5678",
        "template_id": "AUTH_OTP",
        "variables": {"name": "홍길동", "code": 123456},
        "message_id": "m-1",
    }
    base.update(kw)
    return AlimTalkSendOptions(**base)


# --------------------------------------------------------------------------- AlimTalk


async def test_alimtalk_send_wire_format(fake: FakeIwinv, provider: IWINVProvider) -> None:
    outcome = await provider.send(alimtalk())
    assert isinstance(outcome, Ok)
    result = outcome.value
    assert result.status is MessageStatus.SENT
    assert result.provider_message_id == "1001"
    assert result.to == "010-1234-5678"  # echoed as given
    assert result.warnings == ()
    (request,) = fake.hits(SEND)
    assert base64.b64decode(request.headers["AUTH"]).decode() == fake.api_key
    assert request.content_type.lower() == "application/json;charset=utf-8"
    body = request.json
    assert body["templateCode"] == "AUTH_OTP"
    assert body["reserve"] == "N"
    assert body["list"] == [{"phone": "01012345678", "templateParam": ["홍길동", "123456"]}]
    # A sender is configured, so the original's rule turns reSend on.
    assert body["reSend"] == "Y"
    assert body["resendCallback"] == "01000000000"


async def test_template_param_override_and_empty_params(
    fake: FakeIwinv, provider: IWINVProvider
) -> None:
    await provider.send(alimtalk(provider_options={"templateParam": ["a", 1, None]}))
    await provider.send(alimtalk(variables={}))
    first, second = fake.hits(SEND)
    assert first.json["list"][0]["templateParam"] == ["a", "1", ""]
    assert "templateParam" not in second.json["list"][0]


async def test_scheduled_alimtalk_is_pending_with_kst_send_date(
    fake: FakeIwinv, provider: IWINVProvider
) -> None:
    outcome = await provider.send(alimtalk(scheduled_at=datetime(2030, 1, 1, 0, 30, tzinfo=UTC)))
    assert isinstance(outcome, Ok)
    assert outcome.value.status is MessageStatus.PENDING
    body = fake.hits(SEND)[0].json
    assert body["reserve"] == "Y"
    assert body["sendDate"] == "2030-01-01 09:30:00"


async def test_failover_maps_to_native_fields_without_warning(
    fake: FakeIwinv, provider: IWINVProvider
) -> None:
    failover = FailoverOptions(
        enabled=True,
        fallback_channel=FallbackChannel.LMS,
        fallback_content="대체 문자",
        fallback_title=" 제목 ",
    )
    outcome = await provider.send(alimtalk(failover=failover, from_="02-123-4567"))
    assert isinstance(outcome, Ok)
    assert outcome.value.warnings == ()
    body = fake.hits(SEND)[0].json
    assert body["reSend"] == "Y"
    assert body["resendCallback"] == "021234567"
    assert body["resendType"] == "Y"
    assert body["resendTitle"] == "제목"
    assert body["resendContent"] == "대체 문자"


async def test_failover_disabled_and_provider_option_precedence(
    fake: FakeIwinv, provider: IWINVProvider
) -> None:
    await provider.send(alimtalk(failover=FailoverOptions(enabled=False)))
    await provider.send(
        alimtalk(
            failover=FailoverOptions(enabled=False, fallback_channel=FallbackChannel.SMS),
            provider_options={"reSend": "y", "resendCallback": "010-9999-8888"},
        )
    )
    first, second = fake.hits(SEND)
    assert first.json["reSend"] == "N"
    assert second.json["reSend"] == "Y"
    assert second.json["resendCallback"] == "01099998888"
    assert second.json["resendType"] == "N"


async def test_resend_without_any_sender_is_invalid(fake: FakeIwinv, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, sender_number=None)
    try:
        plain = await p.send(alimtalk())
        assert isinstance(plain, Ok)
        assert fake.hits(SEND)[0].json["reSend"] == "N"
        outcome = await p.send(alimtalk(failover=FailoverOptions(enabled=True)))
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.INVALID_REQUEST
        assert "resendCallback" in outcome.error.message
        assert len(fake.hits(SEND)) == 1
    finally:
        await p.aclose()


async def test_invalid_resend_type_option(fake: FakeIwinv, provider: IWINVProvider) -> None:
    outcome = await provider.send(alimtalk(provider_options={"resendType": "X"}))
    assert isinstance(outcome, Fail)
    assert outcome.error.code is KMsgErrorCode.INVALID_REQUEST
    assert fake.hits(SEND) == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (201, KMsgErrorCode.AUTHENTICATION_FAILED),
        (206, KMsgErrorCode.AUTHENTICATION_FAILED),
        (401, KMsgErrorCode.AUTHENTICATION_FAILED),
        (403, KMsgErrorCode.AUTHENTICATION_FAILED),
        (429, KMsgErrorCode.RATE_LIMIT_EXCEEDED),
        (519, KMsgErrorCode.INSUFFICIENT_BALANCE),
        (404, KMsgErrorCode.TEMPLATE_NOT_FOUND),
        (501, KMsgErrorCode.TEMPLATE_NOT_FOUND),
        (502, KMsgErrorCode.INVALID_REQUEST),
        (505, KMsgErrorCode.INVALID_REQUEST),
        (508, KMsgErrorCode.INVALID_REQUEST),
        (517, KMsgErrorCode.INVALID_REQUEST),
        (540, KMsgErrorCode.INVALID_REQUEST),
        (518, KMsgErrorCode.PROVIDER_ERROR),
        (550, KMsgErrorCode.PROVIDER_ERROR),
        (300, KMsgErrorCode.INVALID_REQUEST),
    ],
)
async def test_alimtalk_error_mapping(
    fake: FakeIwinv, once: IWINVProvider, code: int, expected: KMsgErrorCode
) -> None:
    fake.script(SEND, Reply(200, {"code": code, "message": f"vendor says {code}"}))
    outcome = await once.send(alimtalk())
    assert isinstance(outcome, Fail)
    error = outcome.error
    assert error.code is expected
    assert error.provider_error_code == str(code)
    assert error.details["originalCode"] == code
    assert error.provider_id == "iwinv"
    assert error.message == f"vendor says {code}"


async def test_alimtalk_odd_bodies(fake: FakeIwinv, once: IWINVProvider) -> None:
    fake.script(
        SEND,
        Reply(200, raw="501"),  # bare numeric body: that number is the code
        Reply(200, {"message": "no code"}),  # object without code
        Reply(200, raw="<html>oops</html>"),  # malformed JSON on HTTP 200
        Reply(503, raw="<html>unavailable</html>"),  # malformed body on 503: HTTP status
    )
    results = [await once.send(alimtalk()) for _ in range(4)]
    errors = [r.error for r in results if isinstance(r, Fail)]
    assert [e.code for e in errors] == [
        KMsgErrorCode.TEMPLATE_NOT_FOUND,
        KMsgErrorCode.INVALID_REQUEST,
        KMsgErrorCode.PROVIDER_ERROR,
        KMsgErrorCode.PROVIDER_ERROR,
    ]
    assert errors[2].retryable is False  # the vendor answered; do not resend blindly
    assert errors[3].retryable is True


async def test_retryable_errors_are_retried_with_backoff(
    fake: FakeIwinv, provider: IWINVProvider, sleep: RecordingSleep
) -> None:
    fake.script(SEND, Reply(503, raw="busy"), Reply(200, {"code": 518, "message": "retry"}))
    outcome = await provider.send(alimtalk())
    assert isinstance(outcome, Ok)
    assert len(fake.hits(SEND)) == 3
    assert len(sleep.delays) == 2
    assert 1.0 <= sleep.delays[0] <= 1.1
    assert 2.0 <= sleep.delays[1] <= 2.2


async def test_non_retryable_error_is_not_retried(
    fake: FakeIwinv, provider: IWINVProvider, sleep: RecordingSleep
) -> None:
    fake.script(SEND, Reply(200, {"code": 206, "message": "등록하지 않은 IP"}))
    outcome = await provider.send(alimtalk())
    assert isinstance(outcome, Fail)
    assert outcome.error.code is KMsgErrorCode.AUTHENTICATION_FAILED
    assert outcome.error.retryable is False
    assert len(fake.hits(SEND)) == 1
    assert sleep.delays == []


async def test_retries_exhausted_report_last_attempt(
    fake: FakeIwinv, provider: IWINVProvider
) -> None:
    fake.script(SEND, *(Reply(429, {"code": 429, "message": "slow down"}) for _ in range(3)))
    outcome = await provider.send(alimtalk())
    assert isinstance(outcome, Fail)
    assert outcome.error.code is KMsgErrorCode.RATE_LIMIT_EXCEEDED
    assert outcome.error.attempt == 3
    assert len(fake.hits(SEND)) == 3


async def test_retry_after_header_is_honoured(
    fake: FakeIwinv, provider: IWINVProvider, sleep: RecordingSleep
) -> None:
    fake.script(SEND, Reply(429, {"code": 429}, headers={"Retry-After": "7"}))
    outcome = await provider.send(alimtalk())
    assert isinstance(outcome, Ok)
    assert sleep.delays == [7.0]


async def test_timeout_is_not_retried_by_default(fake: FakeIwinv, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, timeout=0.2)
    try:
        fake.script(SEND, Reply(200, {"code": 200}, delay=1.0))
        outcome = await p.send(alimtalk())
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.NETWORK_TIMEOUT
        assert outcome.error.retryable is True  # the caller may decide to resend
        assert len(fake.hits(SEND)) == 1
    finally:
        await p.aclose()


async def test_timeout_retried_when_policy_allows(fake: FakeIwinv, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, timeout=0.2, retry=RetryPolicy(retry_timeouts=True))
    try:
        fake.script(SEND, Reply(200, {"code": 200}, delay=1.0))
        outcome = await p.send(alimtalk())
        assert isinstance(outcome, Ok)
        assert len(fake.hits(SEND)) == 2
    finally:
        await p.aclose()


async def test_unreachable_server_is_network_error(sleep: RecordingSleep) -> None:
    async with FakeIwinv() as server:
        url = server.url
    p = IWINVProvider(IWINVConfig(api_key="k", base_url=url), sleep=sleep)
    try:
        outcome = await p.send(alimtalk())
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.NETWORK_ERROR
        assert outcome.error.retryable is True
        assert len(sleep.delays) == 2  # three attempts
    finally:
        await p.aclose()


async def test_extra_headers_and_forwarded_for(fake: FakeIwinv, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, x_forwarded_for="203.0.113.7", extra_headers={"X-Trace": "t1"})
    try:
        assert isinstance(await p.send(alimtalk()), Ok)
        headers = fake.hits(SEND)[0].headers
        assert headers["X-Forwarded-For"] == "203.0.113.7"
        assert headers["X-Trace"] == "t1"
    finally:
        await p.aclose()


# --------------------------------------------------------------------------- SMS v2


async def test_sms_and_lms_wire_format(fake: FakeIwinv, provider: IWINVProvider) -> None:
    sms = await provider.send(SmsSendOptions(to="010 1234 5678", text="hi", message_id="s1"))
    lms = await provider.send(
        SmsSendOptions(
            type=MessageType.LMS, to="01012345678", text="긴 본문 " * 20, message_id="l1"
        )
    )
    assert isinstance(sms, Ok) and isinstance(lms, Ok)
    assert sms.value.provider_message_id is not None
    assert sms.value.provider_message_id.startswith("REQ")
    first, second = fake.hits(SMS_SEND)
    secret = base64.b64decode(first.headers["secret"]).decode()
    assert secret == f"{fake.sms_api_key}&{fake.sms_auth_key}"
    assert first.json == {
        "version": "1.0",
        "from": "01000000000",
        "to": ["01012345678"],
        "text": "hi",
        "msgType": "SMS",
    }
    assert second.json["title"] == ("긴 본문 " * 20)[:20]
    assert "msgType" not in second.json


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("1", 200, KMsgErrorCode.PROVIDER_ERROR),
        ("11", 200, KMsgErrorCode.PROVIDER_ERROR),
        ("12", 500, KMsgErrorCode.NETWORK_ERROR),
        ("13", 200, KMsgErrorCode.INVALID_REQUEST),
        ("14", 200, KMsgErrorCode.AUTHENTICATION_FAILED),
        ("15", 200, KMsgErrorCode.AUTHENTICATION_FAILED),
        ("21", 200, KMsgErrorCode.INVALID_REQUEST),
        ("22", 200, KMsgErrorCode.INVALID_REQUEST),
        ("23", 200, KMsgErrorCode.INVALID_REQUEST),
        ("31", 200, KMsgErrorCode.INVALID_REQUEST),
        ("32", 200, KMsgErrorCode.INVALID_REQUEST),
        ("33", 200, KMsgErrorCode.INVALID_REQUEST),
        ("41", 200, KMsgErrorCode.INVALID_REQUEST),
        ("42", 200, KMsgErrorCode.INVALID_REQUEST),
        ("43", 200, KMsgErrorCode.INVALID_REQUEST),
        ("44", 200, KMsgErrorCode.INVALID_REQUEST),
        ("50", 200, KMsgErrorCode.INSUFFICIENT_BALANCE),
        ("202", 200, KMsgErrorCode.AUTHENTICATION_FAILED),
        ("206", 200, KMsgErrorCode.AUTHENTICATION_FAILED),
        ("99", 200, KMsgErrorCode.PROVIDER_ERROR),
        ("99", 502, KMsgErrorCode.NETWORK_ERROR),
    ],
)
async def test_sms_error_mapping(
    fake: FakeIwinv, once: IWINVProvider, code: str, status: int, expected: KMsgErrorCode
) -> None:
    fake.script(SMS_SEND, Reply(status, {"resultCode": int(code)}))
    outcome = await once.send(SmsSendOptions(to="01012345678", text="hi"))
    assert isinstance(outcome, Fail)
    assert outcome.error.code is expected
    assert outcome.error.provider_error_code == code
    assert outcome.error.message  # built-in text when the vendor sends none


async def test_sms_bare_string_body_is_result_code(fake: FakeIwinv, once: IWINVProvider) -> None:
    fake.script(SMS_SEND, Reply(200, raw="202"))
    outcome = await once.send(SmsSendOptions(to="01012345678", text="hi"))
    assert isinstance(outcome, Fail)
    assert outcome.error.code is KMsgErrorCode.AUTHENTICATION_FAILED


async def test_sms_needs_sender_and_text(fake: FakeIwinv, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, sender_number=None)
    try:
        no_from = await p.send(SmsSendOptions(to="01012345678", text="hi"))
        no_text = await p.send(SmsSendOptions(to="01012345678", text=" ", from_="0101"))
        assert isinstance(no_from, Fail) and isinstance(no_text, Fail)
        assert "from is required" in no_from.error.message
        assert "text is required" in no_text.error.message
        assert fake.hits(SMS_SEND) == []
    finally:
        await p.aclose()


async def test_sms_types_only_with_sms_keys(fake: FakeIwinv, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, sms_api_key=None, sms_auth_key=None)
    try:
        assert p.supported_types == frozenset({MessageType.ALIMTALK})
        outcome = await p.send(SmsSendOptions(to="01012345678", text="hi"))
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.INVALID_REQUEST
    finally:
        await p.aclose()


async def test_legacy_single_sms_key_secret(sleep: RecordingSleep) -> None:
    async with FakeIwinv(api_key="main", sms_api_key="main", sms_auth_key="only-auth") as server:
        p = IWINVProvider(
            IWINVConfig(
                api_key="main",
                sms_auth_key="only-auth",
                sender_number="0100",
                base_url=server.alimtalk_url,
                sms_base_url=server.sms_url,
            ),
            sleep=sleep,
        )
        try:
            assert MessageType.SMS in p.supported_types
            assert isinstance(await p.send(SmsSendOptions(to="01012345678", text="x")), Ok)
        finally:
            await p.aclose()


async def test_mms_multipart(fake: FakeIwinv, provider: IWINVProvider) -> None:
    image = BinaryInput(data=b"\x89PNG fake", content_type="image/png")
    outcome = await provider.send(
        SmsSendOptions(
            type=MessageType.MMS,
            to="01012345678",
            text="사진",
            subject="제목",
            media=MessageMedia(image=image),
        )
    )
    assert isinstance(outcome, Ok)
    request = fake.hits(SMS_SEND)[0]
    assert request.content_type.startswith("multipart/form-data")
    assert request.form["title"] == "제목"
    assert request.form["to"] == "01012345678"
    filename, content_type, data = request.files["image"]
    assert (filename, content_type, data) == ("image.png", "image/png", b"\x89PNG fake")


async def test_mms_image_rules(fake: FakeIwinv, provider: IWINVProvider) -> None:
    too_big = BinaryInput(data=b"x" * (100 * 1024 + 1))
    cases = [
        SmsSendOptions(type=MessageType.MMS, to="01012345678", text="t"),
        SmsSendOptions(
            type=MessageType.MMS, to="01012345678", text="t", image_url="https://x/y.jpg"
        ),
        SmsSendOptions(
            type=MessageType.MMS, to="01012345678", text="t", media=MessageMedia(image=too_big)
        ),
    ]
    for options in cases:
        outcome = await provider.send(options)
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.INVALID_REQUEST
    assert fake.hits(SMS_SEND) == []


# --------------------------------------------------------------------------- status and balance


def query(kind: MessageType, provider_message_id: str = "1001") -> DeliveryStatusQuery:
    return DeliveryStatusQuery(
        provider_message_id=provider_message_id,
        type=kind,
        to="010-1234-5678",
        requested_at=datetime.now(UTC) - timedelta(minutes=5),
    )


async def test_alimtalk_delivery_status(fake: FakeIwinv, provider: IWINVProvider) -> None:
    assert await provider.get_delivery_status(query(MessageType.ALIMTALK)) == Ok(None)
    fake.alimtalk_history = [
        {"seqNo": 999, "statusCode": "OK", "statusCodeName": "성공"},
        {
            "seqNo": 1001,
            "statusCode": "K105",
            "statusCodeName": "카카오톡 미사용자",
            "sendDate": "2026-03-02 10:00:00",
        },
    ]
    failed = await provider.get_delivery_status(query(MessageType.ALIMTALK))
    assert isinstance(failed, Ok) and failed.value is not None
    assert failed.value.status is DeliveryStatus.FAILED
    assert failed.value.status_message == "카카오톡 미사용자"
    assert failed.value.failed_at == datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    body = fake.hits("/alimtalk/api/history/")[-1].json
    assert body["seqNo"] == 1001 and body["phone"] == "01012345678"

    fake.alimtalk_history = [
        {
            "seqNo": 1001,
            "statusCode": "OK",
            "statusCodeName": "발송 성공",
            "sendDate": "2026-03-02 10:00:00",
            "receiveDate": "2026-03-02 10:00:03",
        }
    ]
    delivered = await provider.get_delivery_status(query(MessageType.ALIMTALK))
    assert isinstance(delivered, Ok) and delivered.value is not None
    assert delivered.value.status is DeliveryStatus.DELIVERED
    assert delivered.value.delivered_at == datetime(2026, 3, 2, 1, 0, 3, tzinfo=UTC)

    fake.alimtalk_history = [{"seqNo": 1001, "statusCode": "", "statusCodeName": "대기"}]
    pending = await provider.get_delivery_status(query(MessageType.ALIMTALK))
    assert isinstance(pending, Ok) and pending.value is not None
    assert pending.value.status is DeliveryStatus.PENDING


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"sendStatusCode": "06"}, DeliveryStatus.DELIVERED),
        ({"sendStatusCode": "1000"}, DeliveryStatus.DELIVERED),
        ({"sendStatusMsg": "전송 성공"}, DeliveryStatus.DELIVERED),
        ({"sendStatusMsg": "전송 대기"}, DeliveryStatus.PENDING),
        ({"sendStatusCode": "01"}, DeliveryStatus.PENDING),
        ({}, DeliveryStatus.UNKNOWN),
        ({"sendStatusCode": "17", "sendStatusMsg": "결번"}, DeliveryStatus.FAILED),
    ],
)
async def test_sms_delivery_status(
    fake: FakeIwinv, provider: IWINVProvider, item: dict[str, Any], expected: DeliveryStatus
) -> None:
    fake.sms_history = [{"requestNo": "REQ1", **item}]
    outcome = await provider.get_delivery_status(query(MessageType.SMS, "REQ1"))
    assert isinstance(outcome, Ok) and outcome.value is not None
    assert outcome.value.status is expected
    assert fake.hits("/sms/api/history/")[0].json["companyid"] == "COMPANY1"


async def test_sms_delivery_status_needs_company_id(fake: FakeIwinv, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, sms_company_id=None)
    try:
        outcome = await p.get_delivery_status(query(MessageType.SMS, "REQ1"))
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.INVALID_REQUEST
    finally:
        await p.aclose()


async def test_balance(fake: FakeIwinv, provider: IWINVProvider) -> None:
    alimtalk_balance = await provider.get_balance()
    sms_balance = await provider.get_balance(BalanceQuery(MessageType.SMS))
    assert isinstance(alimtalk_balance, Ok) and isinstance(sms_balance, Ok)
    assert alimtalk_balance.value.amount == 12345
    assert alimtalk_balance.value.currency == "KRW"
    assert sms_balance.value.channel is MessageType.SMS
    fake.charge = "not a number"
    broken = await provider.get_balance()
    assert isinstance(broken, Fail)
    assert broken.error.code is KMsgErrorCode.PROVIDER_ERROR
    unsupported = await provider.get_balance(BalanceQuery(MessageType.FAX))
    assert isinstance(unsupported, Fail)


# --------------------------------------------------------------------------- config


def test_constructor_rejects_bad_config() -> None:
    with pytest.raises(ProviderConfigError):
        IWINVProvider(IWINVConfig(api_key=" "))
    with pytest.raises(ConfigError):
        IWINVProvider(IWINVConfig(api_key="k", base_url="ftp://nope"))


def test_from_env_names_missing_variable() -> None:
    with pytest.raises(ProviderConfigError) as info:
        IWINVProvider.from_env({"IWINV_SMS_API_KEY": "x"})
    assert info.value.missing == ("IWINV_API_KEY",)
    assert "IWINV_API_KEY" in str(info.value)


async def test_from_env_reads_sms_settings() -> None:
    p = IWINVProvider.from_env(
        {
            "IWINV_API_KEY": "k",
            "IWINV_SMS_API_KEY": "s",
            "IWINV_SMS_AUTH_KEY": "a",
            "IWINV_SMS_SENDER_NUMBER": "0101112222",
            "IWINV_BASE_URL": "http://127.0.0.1:1/",
        }
    )
    assert p.supported_types == frozenset(
        {MessageType.ALIMTALK, MessageType.SMS, MessageType.LMS, MessageType.MMS}
    )
    health = await p.health_check()
    assert health.healthy and health.data["baseUrl"] == "http://127.0.0.1:1"
    assert p.get_onboarding_spec().provider_id == "iwinv"
