"""Core pieces: Result, KMsgError, statuses, phone rules, templates, input parsing, onboarding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from kmsg_webhook.errors import ConfigError, WebhookError
from kmsg_webhook.messaging import (
    KMSG_MESSAGE_TYPES,
    PROVIDER_ONBOARDING_SPECS,
    RETRYABLE_CODES,
    AlimTalkSendOptions,
    DeliveryStatus,
    Fail,
    FallbackChannel,
    FaxSendOptions,
    KMsgError,
    KMsgErrorCode,
    MessageStatus,
    MessageType,
    MockProvider,
    MockStep,
    Ok,
    ProviderConfigError,
    RcsTemplateSendOptions,
    RetryPolicy,
    SmsSendOptions,
    estimate_sms_bytes,
    fail,
    get_provider_onboarding_spec,
    is_valid_phone,
    list_provider_onboarding_specs,
    mask_phone,
    ok,
    parse_send_input,
)
from kmsg_webhook.messaging.result import UnwrapError
from kmsg_webhook.messaging.templates import interpolate, placeholders, stringify_variable
from support.fakes.util import RecordingSleep

# --------------------------------------------------------------------------- Result


def test_result_api() -> None:
    good = ok(2)
    bad = fail(KMsgError(KMsgErrorCode.NETWORK_ERROR))
    assert good.is_success and not good.is_failure
    assert bad.is_failure and not bad.is_success
    assert good.map(lambda v: v * 3) == Ok(6)
    assert bad.map(lambda v: v) is bad
    assert good.unwrap_or(0) == 2 and bad.unwrap_or(0) == 0
    assert bad.map_error(lambda e: e.code) == Fail(KMsgErrorCode.NETWORK_ERROR)
    with pytest.raises(KMsgError):
        bad.unwrap()
    with pytest.raises(UnwrapError, match="needed it") as info:
        bad.expect("needed it")
    assert isinstance(info.value.__cause__, KMsgError)
    with pytest.raises(UnwrapError):
        Fail("plain").unwrap()


# --------------------------------------------------------------------------- KMsgError


def test_error_codes_and_retryable_defaults() -> None:
    assert len(KMsgErrorCode) == 17
    assert all(code.value == code.name for code in KMsgErrorCode)
    assert {
        KMsgErrorCode.RATE_LIMIT_EXCEEDED,
        KMsgErrorCode.NETWORK_ERROR,
        KMsgErrorCode.NETWORK_TIMEOUT,
        KMsgErrorCode.NETWORK_SERVICE_UNAVAILABLE,
        KMsgErrorCode.PROVIDER_ERROR,
        KMsgErrorCode.UNKNOWN_ERROR,
    } == RETRYABLE_CODES
    for code in KMsgErrorCode:
        assert KMsgError(code).retryable is (code in RETRYABLE_CODES)
    assert KMsgError(KMsgErrorCode.PROVIDER_ERROR, retryable=False).retryable is False


def test_error_shape() -> None:
    error = KMsgError(
        KMsgErrorCode.RATE_LIMIT_EXCEEDED,
        provider_id="iwinv",
        http_status=429,
        retry_after_ms=1500.7,  # type: ignore[arg-type]
        details={"originalCode": 429},
    )
    assert isinstance(error, WebhookError)
    assert error.message == "Rate limit exceeded"
    assert error.localized_message() == "요청 한도를 넘었습니다"
    assert error.localized_message("en") == "Rate limit exceeded"
    assert error.retry_after_ms == 1500
    assert error.to_dict() == {
        "name": "KMsgError",
        "code": "RATE_LIMIT_EXCEEDED",
        "message": "Rate limit exceeded",
        "retryable": True,
        "providerId": "iwinv",
        "httpStatus": 429,
        "retryAfterMs": 1500,
        "details": {"originalCode": 429},
    }
    with pytest.raises(TypeError):
        error.details["x"] = 1  # type: ignore[index]
    assert error.with_attempt(2).attempt == 2
    assert error.with_provider("other").provider_id == "iwinv"


def test_provider_config_error_is_a_config_error() -> None:
    error = ProviderConfigError("bad", provider_id="aligo", missing=("ALIGO_API_KEY",))
    assert isinstance(error, ConfigError) and isinstance(error, KMsgError)
    assert error.code is KMsgErrorCode.INVALID_REQUEST


# --------------------------------------------------------------------------- statuses


def test_statuses() -> None:
    assert [t.value for t in KMSG_MESSAGE_TYPES][:5] == [
        "ALIMTALK",
        "FRIENDTALK",
        "SMS",
        "LMS",
        "MMS",
    ]
    assert len(KMSG_MESSAGE_TYPES) == 14
    assert MessageStatus.normalize(" sent ") is MessageStatus.SENT
    assert MessageStatus.normalize("QUEUED") is MessageStatus.PENDING
    assert MessageStatus.normalize(None) is MessageStatus.PENDING
    terminal = {s for s in DeliveryStatus if s.is_terminal}
    assert terminal == {
        DeliveryStatus.DELIVERED,
        DeliveryStatus.FAILED,
        DeliveryStatus.CANCELLED,
        DeliveryStatus.UNKNOWN,
    }
    assert DeliveryStatus.SENT.is_pollable and not DeliveryStatus.UNKNOWN.is_pollable


# --------------------------------------------------------------------------- phone


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("01012345678", "010-****-5678"),
        ("010-1234-5678", "010-****-5678"),
        ("0212345678", "021-***-5678"),
        ("+82 10-1234-5678", "+821-*****-5678"),
        ("15881234", "******34"),
        ("KMSG", "K***"),
        ("", ""),
    ],
)
def test_mask_phone(raw: str, masked: str) -> None:
    assert mask_phone(raw) == masked


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        ("01012345678", True),
        ("010-1234-5678", True),
        ("+82 (10) 1234.5678", True),
        ("1588-1234", True),
        ("1234567", False),
        ("0101234567890123", False),
        ("010-1234-567O", False),
        ("++821012345678", False),
    ],
)
def test_is_valid_phone(raw: str, valid: bool) -> None:
    assert is_valid_phone(raw) is valid


def test_sms_byte_estimate() -> None:
    assert estimate_sms_bytes("abc") == 3
    assert estimate_sms_bytes("한글") == 4
    assert estimate_sms_bytes("é") == 2
    assert estimate_sms_bytes("😀") == 4


# --------------------------------------------------------------------------- templates


def test_stringify_and_interpolate() -> None:
    kst = timezone(timedelta(hours=9))
    assert stringify_variable(None) == ""
    assert stringify_variable(True) == "true"
    assert stringify_variable(3.0) == "3" and stringify_variable(2.5) == "2.5"
    assert stringify_variable(datetime(2026, 1, 1, 9, 0, tzinfo=kst)) == "2026-01-01T00:00:00.000Z"
    assert interpolate("#{a}-#{b}-#{a}", {"a": 1, "b": None}) == "1--1"
    assert interpolate("#{a} #{zz}", {"a": "x"}) == "x #{zz}"
    assert interpolate("#{a}", None) == "#{a}"
    assert placeholders("#{b}#{a}#{b}") == ("b", "a")


# --------------------------------------------------------------------------- input parsing


def test_parse_mapping_camel_and_snake_case() -> None:
    parsed = parse_send_input(
        {
            "type": "alimtalk",
            "to": "01012345678",
            "templateCode": "T1",  # legacy alias
            "variables": {"a": 1},
            "kakao": {"profileId": "PF", "plus_id": "@x"},
            "failover": {"enabled": True, "fallbackChannel": "LMS", "fallback_content": "c"},
            "options": {"scheduledAt": "2030-01-01T00:00:00Z", "customFields": {"k": 1}},
            "providerOptions": {"reSend": "Y"},
            "from": "0212345678",
        }
    )
    assert isinstance(parsed, Ok)
    options = parsed.value.options
    assert isinstance(options, AlimTalkSendOptions)
    assert not parsed.value.auto_type
    assert options.template_id == "T1"
    assert options.kakao is not None and options.kakao.plus_id == "@x"
    assert options.failover is not None
    assert options.failover.fallback_channel is FallbackChannel.LMS
    assert options.scheduled_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert options.custom_fields == {"k": "1"}
    assert options.from_ == "0212345678"


def test_parse_default_sms_keeps_fields() -> None:
    parsed = parse_send_input(
        {"to": "0101", "content": "hi", "title": "s", "scheduled_at": 0, "imageUrl": "u"}
    )
    assert isinstance(parsed, Ok)
    options = parsed.value.options
    assert parsed.value.auto_type
    assert isinstance(options, SmsSendOptions)
    assert (options.text, options.subject, options.image_url) == ("hi", "s", "u")
    assert options.scheduled_at == datetime(1970, 1, 1, tzinfo=UTC)


def test_parse_other_types() -> None:
    fax = parse_send_input({"type": "FAX", "to": "02", "fax": {"fileUrls": ["https://f"]}})
    rcs = parse_send_input(
        {"type": "RCS_LTPL", "to": "0", "templateId": "R", "rcs": {"brandId": "B"}}
    )
    assert isinstance(fax, Ok) and isinstance(fax.value.options, FaxSendOptions)
    assert isinstance(rcs, Ok) and isinstance(rcs.value.options, RcsTemplateSendOptions)
    assert rcs.value.options.type is MessageType.RCS_LTPL
    bad: list[dict[str, Any]] = [
        {"type": "FAX", "to": "02"},
        {"to": "0", "text": "x", "variables": {"a": object()}},
        {
            "type": "ALIMTALK",
            "to": "0",
            "templateId": "T",
            "variables": {},
            "failover": {"fallbackChannel": "fax"},
        },
        {"to": "0", "type": "FRIENDTALK", "text": "x", "buttons": [{"type": "WL"}]},
    ]
    for message in bad:
        outcome = parse_send_input(message)
        assert isinstance(outcome, Fail)
        assert outcome.error.code is KMsgErrorCode.INVALID_REQUEST


# --------------------------------------------------------------------------- onboarding


def test_onboarding_registry() -> None:
    specs = list_provider_onboarding_specs()
    assert [s.provider_id for s in specs] == ["iwinv", "aligo", "solapi", "mock"]
    assert set(PROVIDER_ONBOARDING_SPECS) == {"iwinv", "aligo", "solapi", "mock"}
    table = {
        s.provider_id: (
            s.channel_onboarding.value,
            s.template_lifecycle_api.value,
            s.plus_id_policy.value,
            s.plus_id_inference.value,
            s.live_test_support.value,
        )
        for s in specs
    }
    assert table == {
        "iwinv": ("manual", "available", "optional", "unsupported", "supported"),
        "aligo": ("api", "available", "required_if_no_inference", "supported", "supported"),
        "solapi": ("none", "unavailable", "required_if_no_inference", "unsupported", "partial"),
        "mock": ("api", "available", "optional", "supported", "none"),
    }
    assert [s.provider_id for s in specs if s.requires_plus_id] == ["solapi"]
    assert get_provider_onboarding_spec("aligo").checks[0].config_keys == ("apiKey", "userId")
    with pytest.raises(KMsgError):
        get_provider_onboarding_spec("nope")


# --------------------------------------------------------------------------- retry policy, mock


def test_retry_policy() -> None:
    policy = RetryPolicy(jitter=0)
    assert [policy.delay_before(n) for n in (2, 3, 4, 10)] == [1.0, 2.0, 4.0, 30.0]
    assert policy.should_retry(KMsgError(KMsgErrorCode.PROVIDER_ERROR))
    assert not policy.should_retry(KMsgError(KMsgErrorCode.INVALID_REQUEST))
    assert not policy.should_retry(KMsgError(KMsgErrorCode.NETWORK_TIMEOUT))
    assert RetryPolicy(retry_timeouts=True).should_retry(KMsgError(KMsgErrorCode.NETWORK_TIMEOUT))
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


async def test_mock_script() -> None:
    sleep = RecordingSleep()
    mock = MockProvider(sleep=sleep)
    mock.script(
        MockStep.delay(2.5),
        MockStep.failure(KMsgErrorCode.CRYPTO_HASH_FAILED),
        MockStep.timeout(1.0),
        MockStep.success(),
    )
    options = SmsSendOptions(to="01012345678", text="x", message_id="m")
    results = [await mock.send(options) for _ in range(4)]
    assert isinstance(results[0], Fail)
    assert results[0].error.code is KMsgErrorCode.PROVIDER_ERROR  # crypto codes are not mocked
    assert isinstance(results[1], Fail)
    assert results[1].error.code is KMsgErrorCode.NETWORK_TIMEOUT
    assert results[1].error.provider_error_code == "TIMEOUT"
    assert isinstance(results[2], Ok) and isinstance(results[3], Ok)
    assert results[2].value.provider_message_id is not None
    assert results[2].value.provider_message_id.startswith("mock-")
    assert sleep.delays == [2.5, 1.0]
    assert len(mock.calls) == 4
    mock.clear_history()
    assert mock.calls == []
