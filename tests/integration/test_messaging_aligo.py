"""AligoProvider against a local fake Aligo server."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from kmsg_webhook.messaging import (
    AligoConfig,
    AligoProvider,
    AlimTalkSendOptions,
    BinaryInput,
    Fail,
    FailoverOptions,
    FallbackChannel,
    FriendTalkSendOptions,
    KakaoOptions,
    KMsgErrorCode,
    MessageButton,
    MessageMedia,
    MessageStatus,
    MessageType,
    Ok,
    ProviderConfigError,
    SendWarningCode,
    SmsSendOptions,
)
from support.fakes.aligo import FakeAligo, aligo_provider
from support.fakes.base import Reply
from support.fakes.fixtures import provider_fixtures
from support.fakes.util import RecordingSleep

SMS = "/sms/send/"
ALIMTALK = "/kakao/akv10/alimtalk/send/"
FRIENDTALK = "/kakao/akv10/friendtalk/send/"


def make(fake: FakeAligo, sleep: RecordingSleep, **overrides: Any) -> AligoProvider:
    settings: dict[str, Any] = {
        "sender": "010-0000-0000",
        "sender_key": "SENDERKEY1",
        "test_mode": False,
    }
    return aligo_provider(fake, sleep, **settings | overrides)


fake, sleep, provider, once = provider_fixtures(FakeAligo, make)


async def test_sms_form_fields(fake: FakeAligo, provider: AligoProvider) -> None:
    outcome = await provider.send(
        SmsSendOptions(
            type=MessageType.LMS,
            to="010-1234-5678",
            text="본문",
            subject="제목",
            message_id="m1",
            scheduled_at=datetime(2030, 5, 1, 15, 5, tzinfo=UTC),
        )
    )
    assert isinstance(outcome, Ok)
    assert outcome.value.status is MessageStatus.PENDING  # Aligo always queues
    assert outcome.value.provider_message_id == "7001"
    request = fake.hits(SMS)[0]
    assert request.content_type.startswith("multipart/form-data")
    assert request.form == {
        "key": fake.api_key,
        "user_id": fake.user_id,
        "sender": "010-0000-0000",  # Aligo numbers are sent as given
        "receiver": "010-1234-5678",
        "msg": "본문",
        "msg_type": "LMS",
        "testmode_yn": "N",
        "title": "제목",
        "rdate": "20300502",  # KST
        "rtime": "0005",
    }


async def test_mms_needs_image_reference(fake: FakeAligo, provider: AligoProvider) -> None:
    ok = await provider.send(
        SmsSendOptions(
            type=MessageType.MMS, to="01012345678", text="t", image_url=" https://cdn/x.jpg "
        )
    )
    assert isinstance(ok, Ok)
    assert fake.hits(SMS)[0].form["image"] == "https://cdn/x.jpg"
    for media in (None, MessageMedia(image=BinaryInput(data=b"bytes"))):
        outcome = await provider.send(
            SmsSendOptions(type=MessageType.MMS, to="01012345678", text="t", media=media)
        )
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.INVALID_REQUEST
    assert len(fake.hits(SMS)) == 1


async def test_sender_is_required(fake: FakeAligo, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, sender=None)
    try:
        outcome = await p.send(SmsSendOptions(to="01012345678", text="t"))
        assert isinstance(outcome, Fail)
        assert "from is required" in outcome.error.message
        assert not (await p.health_check()).healthy
    finally:
        await p.aclose()


async def test_alimtalk_renders_template_and_maps_failover(
    fake: FakeAligo, provider: AligoProvider
) -> None:
    outcome = await provider.send(
        AlimTalkSendOptions(
            to="01012345678",
            template_id="TPL1",
            variables={"name": "홍길동", "code": 1234},
            provider_options={"templateContent": "#{name}님 인증번호는 #{code}입니다"},
            failover=FailoverOptions(
                enabled=True,
                fallback_channel=FallbackChannel.SMS,
                fallback_content="대체 문자",
                fallback_title="대체 제목",
            ),
        )
    )
    assert isinstance(outcome, Ok)
    (warning,) = outcome.value.warnings
    assert warning.code == SendWarningCode.FAILOVER_PARTIAL_PROVIDER
    assert warning.mapped_fields == ("failover", "fmessage_1", "fsubject_1")
    assert warning.unsupported_fields == ("fallbackChannel",)
    form = fake.hits(ALIMTALK)[0].form
    assert form["apikey"] == fake.api_key and form["userid"] == fake.user_id
    assert form["senderkey"] == "SENDERKEY1"
    assert form["tpl_code"] == "TPL1"
    assert form["subject_1"] == "알림톡"
    assert form["message_1"] == "홍길동님 인증번호는 1234입니다"
    assert form["failover"] == "Y"
    assert form["fmessage_1"] == "대체 문자"
    assert form["fsubject_1"] == "대체 제목"


async def test_alimtalk_text_fallbacks(fake: FakeAligo, provider: AligoProvider) -> None:
    await provider.send(
        AlimTalkSendOptions(to="01012345678", template_id="T", variables={"a": "x", "b": 2})
    )
    await provider.send(
        AlimTalkSendOptions(
            to="01012345678",
            template_id="T",
            variables={"_full_text": "전체 본문", "a": "x"},
            kakao=KakaoOptions(profile_id="OTHERKEY"),
            failover=FailoverOptions(enabled=False),
        )
    )
    first, second = fake.hits(ALIMTALK)
    assert first.form["message_1"] == "x\n2"
    assert "failover" not in first.form
    assert second.form["message_1"] == "전체 본문"
    assert second.form["senderkey"] == "OTHERKEY"
    assert second.form["failover"] == "N"


async def test_alimtalk_missing_template_variable(fake: FakeAligo, provider: AligoProvider) -> None:
    outcome = await provider.send(
        AlimTalkSendOptions(
            to="01012345678",
            template_id="T",
            variables={"name": "x"},
            provider_options={"templateContent": "#{name} #{code}"},
        )
    )
    assert isinstance(outcome, Fail)
    assert outcome.error.code is KMsgErrorCode.INVALID_REQUEST
    assert "code" in outcome.error.message
    assert fake.hits(ALIMTALK) == []


async def test_alimtalk_needs_sender_key(fake: FakeAligo, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, sender_key=None)
    try:
        outcome = await p.send(AlimTalkSendOptions(to="01012345678", template_id="T", variables={}))
        assert isinstance(outcome, Fail)
        assert "profileId" in outcome.error.message
    finally:
        await p.aclose()


async def test_friendtalk_fields(fake: FakeAligo, provider: AligoProvider) -> None:
    outcome = await provider.send(
        FriendTalkSendOptions(
            to="01012345678",
            text="친구톡 본문",
            image_url="https://cdn/img.png",
            buttons=(MessageButton("열기", "WL", url_mobile="https://m", url_pc="https://p"),),
        )
    )
    assert isinstance(outcome, Ok)
    form = fake.hits(FRIENDTALK)[0].form
    assert form["subject_1"] == "친구톡"
    assert form["message_1"] == "친구톡 본문"
    assert form["image_1"] == "https://cdn/img.png"
    assert json.loads(form["button_1"]) == {
        "button": [{"name": "열기", "linkType": "WL", "linkMo": "https://m", "linkPc": "https://p"}]
    }


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("-100", KMsgErrorCode.AUTHENTICATION_FAILED),
        ("-101", KMsgErrorCode.AUTHENTICATION_FAILED),
        ("-102", KMsgErrorCode.INSUFFICIENT_BALANCE),
        ("-201", KMsgErrorCode.INSUFFICIENT_BALANCE),
        ("-103", KMsgErrorCode.INVALID_REQUEST),
        ("-105", KMsgErrorCode.INVALID_REQUEST),
        ("-501", KMsgErrorCode.TEMPLATE_NOT_FOUND),
        ("-999", KMsgErrorCode.PROVIDER_ERROR),
    ],
)
async def test_error_mapping(
    fake: FakeAligo, once: AligoProvider, code: str, expected: KMsgErrorCode
) -> None:
    fake.script(SMS, Reply(200, {"result_code": code, "message": "거절"}))
    outcome = await once.send(SmsSendOptions(to="01012345678", text="t"))
    assert isinstance(outcome, Fail)
    assert outcome.error.code is expected
    assert outcome.error.message == f"거절 (code: {code})"
    assert outcome.error.provider_error_code == code
    assert outcome.error.details["resultCode"] == code


async def test_missing_result_code_is_provider_error(fake: FakeAligo, once: AligoProvider) -> None:
    fake.script(SMS, Reply(200, {"msg": "뭔가 이상함"}))
    outcome = await once.send(SmsSendOptions(to="01012345678", text="t"))
    assert isinstance(outcome, Fail)
    assert outcome.error.code is KMsgErrorCode.PROVIDER_ERROR
    assert outcome.error.message == "뭔가 이상함 (code: UNKNOWN)"


async def test_wrong_credentials_are_rejected_by_vendor(
    fake: FakeAligo, sleep: RecordingSleep
) -> None:
    p = make(fake, sleep, api_key="wrong")
    try:
        outcome = await p.send(SmsSendOptions(to="01012345678", text="t"))
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.AUTHENTICATION_FAILED
        assert len(fake.hits(SMS)) == 1  # not retried
    finally:
        await p.aclose()


async def test_kakao_success_with_code_zero_shape(fake: FakeAligo, provider: AligoProvider) -> None:
    fake.script(ALIMTALK, Reply(200, {"code": 0, "message": "성공", "info": {"mid": 5}}))
    outcome = await provider.send(
        AlimTalkSendOptions(to="01012345678", template_id="T", variables={})
    )
    assert isinstance(outcome, Ok)


async def test_http_error_is_retryable_network_error(
    fake: FakeAligo, provider: AligoProvider, sleep: RecordingSleep
) -> None:
    fake.script(SMS, Reply(500, raw="down"), Reply(502, raw="down"))
    outcome = await provider.send(SmsSendOptions(to="01012345678", text="t"))
    assert isinstance(outcome, Ok)
    assert len(fake.hits(SMS)) == 3
    assert len(sleep.delays) == 2

    fake.script(SMS, *(Reply(500, raw="down") for _ in range(3)))
    failed = await provider.send(SmsSendOptions(to="01012345678", text="t"))
    assert isinstance(failed, Fail)
    assert failed.error.code is KMsgErrorCode.NETWORK_ERROR
    assert failed.error.message == "HTTP error! status: 500"


async def test_malformed_json_is_not_retried(fake: FakeAligo, provider: AligoProvider) -> None:
    fake.script(SMS, Reply(200, raw="{not json"))
    outcome = await provider.send(SmsSendOptions(to="01012345678", text="t"))
    assert isinstance(outcome, Fail)
    assert outcome.error.code is KMsgErrorCode.PROVIDER_ERROR
    assert outcome.error.retryable is False
    assert len(fake.hits(SMS)) == 1


async def test_timeout(fake: FakeAligo, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, timeout=0.2)
    try:
        fake.script(SMS, Reply(200, {"result_code": "1"}, delay=1.0))
        outcome = await p.send(SmsSendOptions(to="01012345678", text="t"))
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.NETWORK_TIMEOUT
    finally:
        await p.aclose()


async def test_unsupported_type(provider: AligoProvider) -> None:
    from kmsg_webhook.messaging import VoiceSendOptions

    outcome = await provider.send(VoiceSendOptions(to="01012345678", text="t"))
    assert isinstance(outcome, Fail)
    assert outcome.error.code is KMsgErrorCode.INVALID_REQUEST


def test_from_env_names_every_missing_variable() -> None:
    with pytest.raises(ProviderConfigError) as info:
        AligoProvider.from_env({})
    assert info.value.missing == ("ALIGO_API_KEY", "ALIGO_USER_ID")
    assert "ALIGO_API_KEY" in str(info.value) and "ALIGO_USER_ID" in str(info.value)


async def test_from_env_test_mode(fake: FakeAligo) -> None:
    env = {
        "ALIGO_API_KEY": fake.api_key,
        "ALIGO_USER_ID": fake.user_id,
        "ALIGO_SENDER": "0100",
        "ALIGO_SMS_BASE_URL": fake.sms_url,
    }
    dev = AligoProvider.from_env(env)
    prod = AligoProvider.from_env({**env, "NODE_ENV": "production"})
    explicit = AligoProvider.from_env({**env, "NODE_ENV": "production", "ALIGO_TEST_MODE": "Y"})
    try:
        for p in (dev, prod, explicit):
            assert isinstance(await p.send(SmsSendOptions(to="01012345678", text="t")), Ok)
        modes = [r.form["testmode_yn"] for r in fake.hits(SMS)]
        assert modes == ["Y", "N", "Y"]
    finally:
        for p in (dev, prod, explicit):
            await p.aclose()


def test_constructor_requires_credentials() -> None:
    with pytest.raises(ProviderConfigError) as info:
        AligoProvider(AligoConfig(api_key="", user_id=""))
    assert info.value.missing == ("api_key", "user_id")
