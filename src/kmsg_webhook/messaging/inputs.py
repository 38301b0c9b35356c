"""Turn a mapping in the original's shape into a typed options object, at once.

Keys may be camelCase (as k-msg documents them: ``templateId``, ``providerOptions``,
``options.scheduledAt``) or snake_case (``template_id``, ``from_``). Aliases kept from the
original: ``content`` for ``text``, ``templateCode`` for ``templateId``, ``title`` for
``subject``. Unlike the original, a mapping without ``type`` keeps its other fields
(``scheduledAt``, ``providerOptions``, ``media``) instead of silently dropping them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from ..errors import InvalidEventError
from ..events import parse_timestamp
from .errors import KMsgError, invalid_request
from .result import Fail, Ok, Result
from .types import (
    AlimTalkSendOptions,
    BinaryInput,
    FailoverOptions,
    FallbackChannel,
    FaxOptions,
    FaxSendOptions,
    FriendTalkSendOptions,
    KakaoOptions,
    MessageButton,
    MessageMedia,
    MessageType,
    NaverOptions,
    NsaSendOptions,
    RcsAdditionalBody,
    RcsOptions,
    RcsTemplateSendOptions,
    RcsTextSendOptions,
    SendOptions,
    SmsSendOptions,
    Variables,
    VoiceOptions,
    VoiceSendOptions,
    VoiceType,
)


class _InputError(Exception):
    """Internal: a field has the wrong shape (becomes INVALID_REQUEST)."""


@dataclass(frozen=True, slots=True)
class ParsedInput:
    """A typed options object, and whether the caller left ``type`` out (SMS/LMS auto)."""

    options: SendOptions
    auto_type: bool


def parse_send_input(raw: Mapping[str, Any]) -> Result[ParsedInput, KMsgError]:
    """Convert one mapping; any malformed field becomes an INVALID_REQUEST failure."""
    try:
        return Ok(_parse(raw))
    except _InputError as exc:
        return Fail(invalid_request(str(exc)))


def _pick(raw: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in raw and raw[key] is not None:
            return raw[key]
    return None


def _typed(raw: Mapping[str, Any], keys: tuple[str, ...], kind: type, what: str) -> Any:
    """The first present value under ``keys``, which must be a ``kind``; errors name the
    first (documented) key."""
    value = _pick(raw, *keys)
    if value is not None and not isinstance(value, kind):
        raise _InputError(f"{keys[0]} must be {what}")
    return value


def _str(raw: Mapping[str, Any], *keys: str) -> str | None:
    return cast("str | None", _typed(raw, keys, str, "a string"))


def _bool(raw: Mapping[str, Any], *keys: str) -> bool | None:
    return cast("bool | None", _typed(raw, keys, bool, "a boolean"))


def _mapping(raw: Mapping[str, Any], *keys: str) -> Mapping[str, Any] | None:
    return cast("Mapping[str, Any] | None", _typed(raw, keys, Mapping, "an object"))


def _int(value: Any, name: str) -> int | None:
    # bool is an int subclass, but ``true`` is not a count
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _InputError(f"{name} must be an integer")
    return value


def _variables(raw: Mapping[str, Any], *keys: str) -> Variables | None:
    value = _mapping(raw, *keys)
    if value is None:
        return None
    for name, item in value.items():
        if not isinstance(name, str):
            raise _InputError("variable names must be strings")
        if item is not None and not isinstance(item, str | int | float | bool | datetime):
            raise _InputError(f"variable {name!r} must be a string, number, boolean or date")
    return dict(value)


def _datetime(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except InvalidEventError:
        raise _InputError(f"{name} must be a valid date") from None


def _buttons(value: Any) -> tuple[MessageButton, ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping) or not isinstance(value, Sequence) or isinstance(value, str):
        raise _InputError("buttons must be a list")
    out: list[MessageButton] = []
    for item in value:
        if isinstance(item, MessageButton):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise _InputError("each button must be an object")
        name = _str(item, "name", "buttonName")
        if not name:
            raise _InputError("button name is required")
        out.append(
            MessageButton(
                name=name,
                type=_str(item, "type", "buttonType") or "WL",
                url_pc=_str(item, "urlPc", "url_pc", "linkPc"),
                url_mobile=_str(item, "urlMobile", "url_mobile", "linkMo"),
            )
        )
    return tuple(out)


def _binary(value: Any) -> BinaryInput | None:
    if value is None or isinstance(value, BinaryInput):
        return value
    if isinstance(value, str):
        return BinaryInput(ref=value)
    if isinstance(value, bytes | bytearray):
        return BinaryInput(data=bytes(value))
    if not isinstance(value, Mapping):
        raise _InputError("media.image must be an object")
    data = _pick(value, "bytes", "data")
    if data is not None and not isinstance(data, bytes | bytearray):
        raise _InputError("media.image.bytes must be bytes")
    return BinaryInput(
        ref=_str(value, "ref"),
        data=bytes(data) if data is not None else None,
        filename=_str(value, "filename"),
        content_type=_str(value, "contentType", "content_type"),
    )


def _media(value: Any) -> MessageMedia | None:
    if value is None or isinstance(value, MessageMedia):
        return value
    if not isinstance(value, Mapping):
        raise _InputError("media must be an object")
    return MessageMedia(image=_binary(_pick(value, "image")))


def _kakao(value: Any) -> KakaoOptions | None:
    if value is None or isinstance(value, KakaoOptions):
        return value
    if not isinstance(value, Mapping):
        raise _InputError("kakao must be an object")
    return KakaoOptions(
        profile_id=_str(value, "profileId", "profile_id"),
        plus_id=_str(value, "plusId", "plus_id"),
        disable_sms=_bool(value, "disableSms", "disable_sms"),
        ad_flag=_bool(value, "adFlag", "ad_flag"),
        buttons=_buttons(_pick(value, "buttons")),
        image_id=_str(value, "imageId", "image_id"),
        image_link=_str(value, "imageLink", "image_link"),
    )


def _failover(value: Any) -> FailoverOptions | None:
    if value is None or isinstance(value, FailoverOptions):
        return value
    if not isinstance(value, Mapping):
        raise _InputError("failover must be an object")
    channel = _str(value, "fallbackChannel", "fallback_channel")
    if channel is not None and channel.lower() not in ("sms", "lms"):
        raise _InputError("failover.fallbackChannel must be 'sms' or 'lms'")
    return FailoverOptions(
        enabled=_bool(value, "enabled"),
        fallback_channel=FallbackChannel(channel.lower()) if channel else None,
        fallback_content=_str(value, "fallbackContent", "fallback_content"),
        fallback_title=_str(value, "fallbackTitle", "fallback_title"),
    )


def _naver(value: Any) -> NaverOptions | None:
    if value is None or isinstance(value, NaverOptions):
        return value
    if not isinstance(value, Mapping):
        raise _InputError("naver must be an object")
    return NaverOptions(
        talk_id=_str(value, "talkId", "talk_id"),
        template_id=_str(value, "templateId", "template_id"),
        disable_sms=_bool(value, "disableSms", "disable_sms"),
        variables=_variables(value, "variables"),
        buttons=_buttons(_pick(value, "buttons")),
    )


def _voice(value: Any) -> VoiceOptions | None:
    if value is None or isinstance(value, VoiceOptions):
        return value
    if not isinstance(value, Mapping):
        raise _InputError("voice must be an object")
    voice_type = _str(value, "voiceType", "voice_type")
    reply_range = _int(_pick(value, "replyRange", "reply_range"), "voice.replyRange")
    return VoiceOptions(
        voice_type=VoiceType.MALE if (voice_type or "").upper() == "MALE" else VoiceType.FEMALE,
        header_message=_str(value, "headerMessage", "header_message"),
        tail_message=_str(value, "tailMessage", "tail_message"),
        reply_range=reply_range,
        counselor_number=_str(value, "counselorNumber", "counselor_number"),
    )


def _str_tuple(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _InputError(f"{name} must be a list of strings")
    if not all(isinstance(item, str) for item in value):
        raise _InputError(f"{name} must be a list of strings")
    return tuple(value)


def _fax(value: Any) -> FaxOptions:
    if isinstance(value, FaxOptions):
        return value
    if not isinstance(value, Mapping):
        raise _InputError("fax is required for FAX")
    return FaxOptions(
        file_ids=_str_tuple(_pick(value, "fileIds", "file_ids"), "fax.fileIds"),
        file_urls=_str_tuple(_pick(value, "fileUrls", "file_urls"), "fax.fileUrls"),
    )


def _rcs(value: Any) -> RcsOptions | None:
    if value is None or isinstance(value, RcsOptions):
        return value
    if not isinstance(value, Mapping):
        raise _InputError("rcs must be an object")
    body = _mapping(value, "additionalBody", "additional_body")
    return RcsOptions(
        brand_id=_str(value, "brandId", "brand_id"),
        template_id=_str(value, "templateId", "template_id"),
        copy_allowed=_bool(value, "copyAllowed", "copy_allowed"),
        variables=_variables(value, "variables"),
        mms_type=_str(value, "mmsType", "mms_type"),
        commercial_type=_str(value, "commercialType", "commercial_type"),
        disable_sms=_bool(value, "disableSms", "disable_sms"),
        buttons=_buttons(_pick(value, "buttons")),
        additional_body=None
        if body is None
        else RcsAdditionalBody(
            title=_str(body, "title"),
            description=_str(body, "description"),
            image_id=_str(body, "imageId", "imaggeId", "image_id"),
            buttons=_buttons(_pick(body, "buttons")),
        ),
    )


def _common(raw: Mapping[str, Any]) -> dict[str, Any]:
    nested = _mapping(raw, "options") or {}
    custom = _mapping(nested, "customFields", "custom_fields") or _mapping(
        raw, "customFields", "custom_fields"
    )
    provider_options = _mapping(raw, "providerOptions", "provider_options") or {}
    attempt = _int(_pick(raw, "attempt"), "attempt")
    return {
        "to": _str(raw, "to") or "",
        "from_": _str(raw, "from", "from_"),
        "message_id": _str(raw, "messageId", "message_id"),
        "provider_id": _str(raw, "providerId", "provider_id"),
        "scheduled_at": _datetime(
            _pick(nested, "scheduledAt", "scheduled_at")
            or _pick(raw, "scheduledAt", "scheduled_at"),
            "scheduledAt",
        ),
        "country": _str(nested, "country") or _str(raw, "country"),
        "custom_fields": {str(k): str(v) for k, v in (custom or {}).items()},
        "provider_options": dict(provider_options),
        "request_id": _str(raw, "requestId", "request_id"),
        "attempt": attempt,
    }


def _parse(raw: Mapping[str, Any]) -> ParsedInput:
    if not isinstance(raw, Mapping):
        raise _InputError("send input must be an object")
    type_value = raw.get("type")
    common = _common(raw)
    text = _str(raw, "text", "content")
    subject = _str(raw, "subject", "title")
    media = _media(_pick(raw, "media"))
    image_url = _str(raw, "imageUrl", "image_url")
    variables = _variables(raw, "variables")
    template_id = _str(raw, "templateId", "template_id", "templateCode")
    # the body SMS/LMS/MMS and RCS text messages share
    body: dict[str, Any] = {
        "text": text or "",
        "subject": subject,
        "media": media,
        "image_url": image_url,
        "variables": variables,
    }

    if type_value is None:
        options: SendOptions = SmsSendOptions(**common, **body)
        return ParsedInput(options, auto_type=True)

    if isinstance(type_value, MessageType):
        msg_type = type_value
    elif isinstance(type_value, str) and type_value.strip().upper() in MessageType.__members__:
        msg_type = MessageType(type_value.strip().upper())
    else:
        raise _InputError(f"Unknown message type: {type_value!r}")

    if msg_type in SmsSendOptions.ALLOWED_TYPES:
        options = SmsSendOptions(**common, type=msg_type, **body)
    elif msg_type is MessageType.ALIMTALK:
        if variables is None:
            raise _InputError("variables is required for ALIMTALK")
        options = AlimTalkSendOptions(
            **common,
            template_id=template_id or "",
            variables=variables,
            kakao=_kakao(_pick(raw, "kakao")),
            failover=_failover(_pick(raw, "failover")),
        )
    elif msg_type is MessageType.FRIENDTALK:
        options = FriendTalkSendOptions(
            **common,
            text=text or "",
            media=media,
            image_url=image_url,
            buttons=_buttons(_pick(raw, "buttons")),
            variables=variables,
            kakao=_kakao(_pick(raw, "kakao")),
        )
    elif msg_type is MessageType.NSA:
        options = NsaSendOptions(
            **common,
            template_id=template_id or "",
            variables=variables or {},
            naver=_naver(_pick(raw, "naver")),
        )
    elif msg_type is MessageType.VOICE:
        options = VoiceSendOptions(
            **common, text=text or "", variables=variables, voice=_voice(_pick(raw, "voice"))
        )
    elif msg_type is MessageType.FAX:
        options = FaxSendOptions(**common, fax=_fax(_pick(raw, "fax")))
    elif msg_type in RcsTextSendOptions.ALLOWED_TYPES:
        options = RcsTextSendOptions(**common, type=msg_type, **body, rcs=_rcs(_pick(raw, "rcs")))
    else:
        options = RcsTemplateSendOptions(
            **common,
            type=msg_type,
            template_id=template_id or "",
            variables=variables or {},
            rcs=_rcs(_pick(raw, "rcs")),
        )
    return ParsedInput(options, auto_type=False)
