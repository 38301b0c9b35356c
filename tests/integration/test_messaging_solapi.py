"""SolapiProvider against a local fake SOLAPI server that verifies the HMAC header."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kmsg_webhook.messaging import (
    AlimTalkSendOptions,
    BinaryInput,
    DeliveryStatus,
    DeliveryStatusQuery,
    Fail,
    FailoverOptions,
    FaxOptions,
    FaxSendOptions,
    FriendTalkSendOptions,
    KakaoOptions,
    KMsgErrorCode,
    MessageButton,
    MessageMedia,
    MessageStatus,
    MessageType,
    NsaSendOptions,
    Ok,
    ProviderConfigError,
    RcsOptions,
    RcsTemplateSendOptions,
    RcsTextSendOptions,
    SendOptions,
    SendWarningCode,
    SmsSendOptions,
    SolapiConfig,
    SolapiProvider,
    VoiceSendOptions,
    solapi_authorization,
)
from kmsg_webhook.messaging.solapi import map_solapi_delivery_status
from support.fakes.base import Reply
from support.fakes.fixtures import provider_fixtures
from support.fakes.solapi import FakeSolapi
from support.fakes.util import RecordingSleep

SEND = "/messages/v4/send"


def make(fake: FakeSolapi, sleep: RecordingSleep, **overrides: Any) -> SolapiProvider:
    settings: dict[str, Any] = {
        "api_key": fake.api_key,
        "api_secret": fake.api_secret,
        "default_from": "010-0000-0000",
        "kakao_pf_id": "PF_DEFAULT",
        "base_url": fake.url,
    }
    extra = {k: overrides.pop(k) for k in ("clock", "salt") if k in overrides}
    settings.update(overrides)
    return SolapiProvider(SolapiConfig(**settings), sleep=sleep, **extra)


fake, sleep, provider, once = provider_fixtures(FakeSolapi, make)


def test_signature_is_hex_hmac_of_date_and_salt() -> None:
    header = solapi_authorization("KEY", "SECRET", "2026-01-01T00:00:00.000Z", "abc")
    expected = hmac.new(b"SECRET", b"2026-01-01T00:00:00.000Zabc", hashlib.sha256).hexdigest()
    assert header == (
        f"HMAC-SHA256 apiKey=KEY, date=2026-01-01T00:00:00.000Z, salt=abc, signature={expected}"
    )


async def test_sms_send_is_signed_and_normalised(
    fake: FakeSolapi, provider: SolapiProvider
) -> None:
    outcome = await provider.send(
        SmsSendOptions(to=" 010-1234-5678 ", text="hello", message_id="m1", country="+82")
    )
    assert isinstance(outcome, Ok), outcome
    assert outcome.value.status is MessageStatus.SENT
    assert outcome.value.provider_message_id == "M4V00000000000000001"
    assert outcome.value.to == " 010-1234-5678 "
    request = fake.hits(SEND)[0]
    assert request.content_type.startswith("application/json")
    assert request.json == {
        "message": {
            "to": "01012345678",
            "type": "SMS",
            "country": "82",
            "from": "01000000000",
            "text": "hello",
        }
    }
    assert len(fake.seen_salts) == 1
    assert all(len(s) == 32 and s.isalnum() for s in fake.seen_salts)


async def test_fresh_salt_per_request(fake: FakeSolapi, provider: SolapiProvider) -> None:
    for _ in range(3):
        assert isinstance(await provider.send(SmsSendOptions(to="01012345678", text="x")), Ok)
    assert len(fake.seen_salts) == 3


async def test_wrong_secret_and_stale_date_are_rejected(
    fake: FakeSolapi, sleep: RecordingSleep
) -> None:
    wrong = make(fake, sleep, api_secret="not-the-secret")
    stale = make(fake, sleep, clock=lambda: datetime.now(UTC) - timedelta(hours=1))
    try:
        for p in (wrong, stale):
            outcome = await p.send(SmsSendOptions(to="01012345678", text="x"))
            assert isinstance(outcome, Fail)
            assert outcome.error.code is KMsgErrorCode.AUTHENTICATION_FAILED
            assert outcome.error.http_status == 401
        assert len(fake.hits(SEND)) == 2  # auth failures are not retried
    finally:
        await wrong.aclose()
        await stale.aclose()


async def test_reused_salt_is_rejected(fake: FakeSolapi, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, salt=lambda: "SAMESALT")
    try:
        assert isinstance(await p.send(SmsSendOptions(to="01012345678", text="x")), Ok)
        second = await p.send(SmsSendOptions(to="01012345678", text="x"))
        assert isinstance(second, Fail)
        assert second.error.provider_error_code == "DuplicatedSignature"
    finally:
        await p.aclose()


async def test_alimtalk_variables_and_failover(fake: FakeSolapi, provider: SolapiProvider) -> None:
    outcome = await provider.send(
        AlimTalkSendOptions(
            to="+82 10-1234-5678",
            template_id="KA01TP1",
            variables={"name": "홍길동", "#{code}": 1234, "at": None},
            kakao=KakaoOptions(buttons=(MessageButton("보기", url_mobile="https://m"),)),
            failover=FailoverOptions(
                enabled=True, fallback_content=" 대체 문자 ", fallback_title="대체"
            ),
        )
    )
    assert isinstance(outcome, Ok), outcome
    (warning,) = outcome.value.warnings
    assert warning.code == SendWarningCode.FAILOVER_PARTIAL_PROVIDER
    assert warning.mapped_fields == ("kakao.disableSms", "text", "subject")
    message = fake.hits(SEND)[0].json["message"]
    assert message["to"] == "+821012345678"
    assert message["type"] == "ATA"
    assert message["text"] == "대체 문자"
    assert message["subject"] == "대체"
    assert message["kakaoOptions"] == {
        "pfId": "PF_DEFAULT",
        "templateId": "KA01TP1",
        "variables": {"#{name}": "홍길동", "#{code}": "1234", "#{at}": ""},
        "disableSms": False,
        "buttons": [{"buttonName": "보기", "buttonType": "WL", "linkMo": "https://m"}],
    }


async def test_alimtalk_failover_disabled_turns_sms_off(
    fake: FakeSolapi, provider: SolapiProvider
) -> None:
    outcome = await provider.send(
        AlimTalkSendOptions(
            to="01012345678",
            template_id="T",
            variables={},
            failover=FailoverOptions(enabled=False),
        )
    )
    assert isinstance(outcome, Ok)
    assert outcome.value.warnings == ()
    assert fake.hits(SEND)[0].json["message"]["kakaoOptions"]["disableSms"] is True


async def test_alimtalk_validation(fake: FakeSolapi, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, kakao_pf_id=None)
    try:
        no_pf = await p.send(AlimTalkSendOptions(to="01012345678", template_id="T", variables={}))
        dotted = await p.send(
            AlimTalkSendOptions(
                to="01012345678",
                template_id="T",
                variables={"a.b": 1},
                kakao=KakaoOptions(profile_id="PF"),
            )
        )
        assert isinstance(no_pf, Fail) and isinstance(dotted, Fail)
        assert "profileId" in no_pf.error.message
        assert dotted.error.code is KMsgErrorCode.INVALID_REQUEST
        assert fake.hits(SEND) == []
    finally:
        await p.aclose()


async def test_sender_required_for_sms(fake: FakeSolapi, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, default_from=None)
    try:
        outcome = await p.send(SmsSendOptions(to="01012345678", text="x"))
        assert isinstance(outcome, Fail)
        assert "from is required" in outcome.error.message
        # ...but optional for AlimTalk
        ok = await p.send(AlimTalkSendOptions(to="01012345678", template_id="T", variables={}))
        assert isinstance(ok, Ok)
        assert "from" not in fake.hits(SEND)[0].json["message"]
    finally:
        await p.aclose()


async def test_mms_uploads_image_first(
    fake: FakeSolapi, provider: SolapiProvider, tmp_path: Path
) -> None:
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"\xff\xd8jpeg")
    outcome = await provider.send(
        SmsSendOptions(
            type=MessageType.MMS,
            to="01012345678",
            text="사진",
            subject="제목",
            media=MessageMedia(image=BinaryInput(ref=str(image))),
        )
    )
    assert isinstance(outcome, Ok), outcome
    upload = fake.hits("/storage/v1/files")[0].json
    assert base64.b64decode(upload["file"]) == b"\xff\xd8jpeg"
    assert upload["type"] == "MMS" and upload["name"] == "photo.jpg"
    message = fake.hits(SEND)[0].json["message"]
    assert message["imageId"].startswith("ST01FILE")
    assert message["subject"] == "제목"


async def test_friendtalk_image_and_buttons(fake: FakeSolapi, provider: SolapiProvider) -> None:
    outcome = await provider.send(
        FriendTalkSendOptions(
            to="01012345678",
            text="친구톡",
            media=MessageMedia(image=BinaryInput(data=b"png", filename="a.png")),
            buttons=(
                MessageButton("웹", "WL", url_mobile="https://m.example"),
                MessageButton("앱", "AL", url_mobile="app://x"),
            ),
        )
    )
    assert isinstance(outcome, Ok), outcome
    upload = fake.hits("/storage/v1/files")[0].json
    assert upload["type"] == "KAKAO" and upload["link"] == "https://m.example"
    message = fake.hits(SEND)[0].json["message"]
    assert message["type"] == "CTI"
    assert message["kakaoOptions"]["buttons"] == [
        {"buttonName": "웹", "buttonType": "WL", "linkMo": "https://m.example"}
    ]


async def test_other_types_build_their_options(fake: FakeSolapi, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, rcs_brand_id="BR1", naver_talk_id="TALK1")
    try:
        sends: list[SendOptions] = [
            NsaSendOptions(to="01012345678", template_id="N1", variables={"a": 1}),
            VoiceSendOptions(to="01012345678", text="음성"),
            FaxSendOptions(to="0212345678", fax=FaxOptions(file_ids=("F1",))),
            RcsTextSendOptions(type=MessageType.RCS_LMS, to="01012345678", text="rcs", subject="s"),
            RcsTemplateSendOptions(
                to="01012345678", template_id="R1", variables={}, rcs=RcsOptions(mms_type="M3")
            ),
        ]
        for options in sends:
            outcome = await p.send(options)
            assert isinstance(outcome, Ok), (options.type, outcome)
        nsa, voice, fax, rcs_text, rcs_tpl = (r.json["message"] for r in fake.hits(SEND))
        assert nsa["naverOptions"] == {
            "talkId": "TALK1",
            "templateId": "N1",
            "variables": {"a": "1"},
        }
        assert voice["voiceOptions"] == {"voiceType": "FEMALE"}
        assert fax["faxOptions"] == {"fileIds": ["F1"]}
        assert rcs_text["rcsOptions"] == {"brandId": "BR1"}
        assert rcs_text["subject"] == "s"
        assert rcs_tpl["rcsOptions"] == {"brandId": "BR1", "mmsType": "M3", "templateId": "R1"}
        missing = await p.send(FaxSendOptions(to="0212345678", fax=FaxOptions()))
        assert isinstance(missing, Fail)
    finally:
        await p.aclose()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            {"errorCode": "ValidationError", "errorMessage": "bad"},
            KMsgErrorCode.INVALID_REQUEST,
        ),
        (404, {"errorCode": "NotFound", "errorMessage": "nope"}, KMsgErrorCode.INVALID_REQUEST),
        (
            401,
            {"errorCode": "InvalidAPIKey", "errorMessage": "x"},
            KMsgErrorCode.AUTHENTICATION_FAILED,
        ),
        (403, {"errorCode": "Forbidden", "errorMessage": "x"}, KMsgErrorCode.AUTHENTICATION_FAILED),
        (429, {"errorCode": "TooMany", "errorMessage": "x"}, KMsgErrorCode.RATE_LIMIT_EXCEEDED),
        (500, {"errorCode": "InternalError", "errorMessage": "x"}, KMsgErrorCode.PROVIDER_ERROR),
        (503, None, KMsgErrorCode.PROVIDER_ERROR),
    ],
)
async def test_http_error_mapping(
    fake: FakeSolapi,
    once: SolapiProvider,
    status: int,
    body: dict[str, str] | None,
    expected: KMsgErrorCode,
) -> None:
    fake.script(SEND, Reply(status, body) if body else Reply(status, raw="gateway"))
    outcome = await once.send(SmsSendOptions(to="01012345678", text="x"))
    assert isinstance(outcome, Fail)
    error = outcome.error
    assert error.code is expected
    assert error.http_status == status
    assert error.provider_error_code == (body["errorCode"] if body else f"HTTP_{status}")


async def test_refused_message_and_malformed_reply(
    fake: FakeSolapi, provider: SolapiProvider
) -> None:
    fake.script(
        SEND,
        Reply(200, {"messageId": "M1", "statusCode": "1062", "statusMessage": "발신번호 미등록"}),
        Reply(200, raw="<<not json>>"),
    )
    refused = await provider.send(SmsSendOptions(to="01012345678", text="x"))
    malformed = await provider.send(SmsSendOptions(to="01012345678", text="x"))
    assert isinstance(refused, Fail) and isinstance(malformed, Fail)
    assert refused.error.code is KMsgErrorCode.PROVIDER_ERROR
    assert refused.error.provider_error_code == "1062"
    assert refused.error.retryable is False
    assert malformed.error.code is KMsgErrorCode.PROVIDER_ERROR
    assert malformed.error.retryable is False
    assert len(fake.hits(SEND)) == 2  # neither was retried


async def test_server_errors_are_retried(
    fake: FakeSolapi, provider: SolapiProvider, sleep: RecordingSleep
) -> None:
    fake.script(SEND, Reply(503, raw="busy"), Reply(500, {"errorCode": "E", "errorMessage": "x"}))
    outcome = await provider.send(SmsSendOptions(to="01012345678", text="x"))
    assert isinstance(outcome, Ok)
    assert len(fake.hits(SEND)) == 3
    assert len(sleep.delays) == 2
    # every attempt is signed afresh
    assert len({r.headers["Authorization"] for r in fake.hits(SEND)}) == 3


async def test_timeout(fake: FakeSolapi, sleep: RecordingSleep) -> None:
    p = make(fake, sleep, timeout=0.2)
    try:
        fake.script(SEND, Reply(200, {"messageId": "M"}, delay=1.0))
        outcome = await p.send(SmsSendOptions(to="01012345678", text="x"))
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.NETWORK_TIMEOUT
    finally:
        await p.aclose()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (None, DeliveryStatus.UNKNOWN),
        ("2000", DeliveryStatus.PENDING),
        ("3000", DeliveryStatus.SENT),
        ("4000", DeliveryStatus.DELIVERED),
        ("3104", DeliveryStatus.FAILED),
        ("1062", DeliveryStatus.FAILED),
        ("2130", DeliveryStatus.FAILED),
        ("5000", DeliveryStatus.UNKNOWN),
        ("abc", DeliveryStatus.UNKNOWN),
    ],
)
def test_delivery_status_mapping(code: str | None, expected: DeliveryStatus) -> None:
    assert map_solapi_delivery_status(code) is expected


async def test_get_delivery_status(fake: FakeSolapi, provider: SolapiProvider) -> None:
    query = DeliveryStatusQuery("M4V1", MessageType.ALIMTALK, "01012345678", datetime.now(UTC))
    assert await provider.get_delivery_status(query) == Ok(None)
    fake.statuses["M4V1"] = {
        "statusCode": "3104",
        "statusMessage": "카카오톡 미사용자",
        "dateSent": "2026-03-02T01:00:00.000Z",
    }
    outcome = await provider.get_delivery_status(query)
    assert isinstance(outcome, Ok) and outcome.value is not None
    assert outcome.value.status is DeliveryStatus.FAILED
    assert outcome.value.status_code == "3104"
    assert outcome.value.sent_at == datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    request = fake.hits("/messages/v4/list")[-1]
    assert request.query == {"messageId": "M4V1", "limit": "1", "dateType": "CREATED"}


async def test_balance(fake: FakeSolapi, provider: SolapiProvider) -> None:
    outcome = await provider.get_balance()
    assert isinstance(outcome, Ok)
    assert outcome.value.amount == 5000
    fake.balance = {"point": "12.5"}
    assert (await provider.get_balance()) == Ok(outcome.value.__class__("solapi", 12.5))
    fake.balance = {"balance": "lots"}
    broken = await provider.get_balance()
    assert isinstance(broken, Fail)
    assert broken.error.code is KMsgErrorCode.UNKNOWN_ERROR


def test_from_env() -> None:
    with pytest.raises(ProviderConfigError) as info:
        SolapiProvider.from_env({"SOLAPI_API_KEY": "k"})
    assert info.value.missing == ("SOLAPI_API_SECRET",)
    p = SolapiProvider.from_env(
        {"SOLAPI_API_KEY": "k", "SOLAPI_API_SECRET": "s", "SOLAPI_KAKAO_PF_ID": "PF"}
    )
    assert len(p.supported_types) == 14


async def test_unreachable_api_is_network_error(sleep: RecordingSleep) -> None:
    async with FakeSolapi() as server:
        url = server.url
    p = SolapiProvider(
        SolapiConfig(api_key="k", api_secret="s", default_from="0100", base_url=url), sleep=sleep
    )
    try:
        outcome = await p.send(SmsSendOptions(to="01012345678", text="x"))
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.NETWORK_ERROR
        assert outcome.error.attempt == 3
    finally:
        await p.aclose()
