"""IWINV: the AlimTalk API, plus the SMS v2 API when its separate key pair is configured.

Wire facts (see the providers spec §4.1):

* AlimTalk: ``POST {base_url}/api/v2/send/``, JSON, header ``AUTH: base64(api_key)``;
  success is HTTP 2xx with ``code == 200``; ``seqNo`` is the message id. Template variables
  are sent as ``templateParam``, a positional list of the values (names are ignored).
* SMS v2: ``POST {sms_base_url}/api/v2/send/``, JSON (multipart for MMS), header
  ``secret: base64("<sms_api_key>&<sms_auth_key>")``; success is ``resultCode == 0``.
* Every phone number has all non-digits removed. Schedule times are sent in KST.
* The standard failover maps natively (``reSend``, ``resendCallback``, ``resendType``,
  ``resendTitle``, ``resendContent``), so no warning is returned.

``provider_options`` keys read: ``templateParam`` (list), ``reSend``, ``resendCallback``,
``resendType``, ``resendTitle``, ``resendContent``, ``msgType`` (SMS only).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import aiohttp

from .errors import KMsgError, KMsgErrorCode, ProviderConfigError, fail_invalid_request
from .onboarding import ProviderOnboardingSpec, get_provider_onboarding_spec
from .phone import digits_only
from .provider import (
    HttpProviderBase,
    HttpResponse,
    MalformedResponse,
    RetryPolicy,
    SleepFn,
    env_value,
    join_url,
    malformed_response_error,
    now_utc,
    parse_json,
    parse_kst,
    require_env,
    to_kst,
    unexpected_error,
    validate_base_url,
)
from .result import Fail, Ok, Result
from .templates import (
    Template,
    TemplateButton,
    TemplateInput,
    TemplateStatus,
    TemplateUpdate,
    button_links,
    buttons_from_wire,
    find_template,
    placeholders,
    revised_template,
    stringify_variable,
    validate_template,
)
from .types import (
    AlimTalkSendOptions,
    BalanceQuery,
    BalanceResult,
    DeliveryStatus,
    DeliveryStatusQuery,
    DeliveryStatusResult,
    FallbackChannel,
    MessageStatus,
    MessageType,
    ProviderHealth,
    SendOptions,
    SendResult,
    SmsSendOptions,
)

PROVIDER_ID = "iwinv"
PROVIDER_NAME = "IWINV Messaging Provider"
DEFAULT_BASE_URL = "https://alimtalk.bizservice.iwinv.kr"
DEFAULT_SMS_BASE_URL = "https://sms.bizservice.iwinv.kr"
MAX_MMS_IMAGE_BYTES = 100 * 1024

_SMS_TYPES = frozenset({MessageType.SMS, MessageType.LMS, MessageType.MMS})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IWINVConfig:
    """IWINV settings. ``api_key`` is the AlimTalk key; the ``sms_*`` keys enable SMS/LMS/MMS."""

    api_key: str
    sms_api_key: str | None = None
    sms_auth_key: str | None = None
    sms_company_id: str | None = None
    sender_number: str | None = None
    sms_sender_number: str | None = None
    send_endpoint: str = "/api/v2/send/"
    x_forwarded_for: str | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    base_url: str = DEFAULT_BASE_URL
    sms_base_url: str = DEFAULT_SMS_BASE_URL
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


# --------------------------------------------------------------------------- error mapping


def map_iwinv_code(code: int | None) -> KMsgErrorCode:
    """IWINV AlimTalk/charge/history ``code`` → KMsgErrorCode."""
    if code in (201, 206, 401, 403):
        return KMsgErrorCode.AUTHENTICATION_FAILED
    if code == 429:
        return KMsgErrorCode.RATE_LIMIT_EXCEEDED
    if code == 519:
        return KMsgErrorCode.INSUFFICIENT_BALANCE
    if code in (404, 501):
        return KMsgErrorCode.TEMPLATE_NOT_FOUND
    if code is not None and (502 <= code <= 517 or code == 540):
        return KMsgErrorCode.INVALID_REQUEST
    if code is not None and code >= 500:
        return KMsgErrorCode.PROVIDER_ERROR
    return KMsgErrorCode.INVALID_REQUEST


_HTTP = "_fromHttpStatus"


def _map_http_status(status: int | None) -> KMsgErrorCode:
    if status in (401, 403):
        return KMsgErrorCode.AUTHENTICATION_FAILED
    if status == 429:
        return KMsgErrorCode.RATE_LIMIT_EXCEEDED
    if status is not None and status >= 500:
        return KMsgErrorCode.PROVIDER_ERROR
    return KMsgErrorCode.INVALID_REQUEST


# Our own short descriptions of the SMS v2 result codes.
SMS_RESULT_MESSAGES: Mapping[str, str] = {
    "0": "발송 성공",
    "1": "발송 실패",
    "11": "서비스 운영 중이 아님",
    "12": "충전 처리 중",
    "13": "등록되지 않은 발신번호",
    "14": "인증 요청이 올바르지 않음 (키 또는 secret 헤더 확인)",
    "15": "등록되지 않은 IP",
    "21": "LMS 본문은 2000바이트 이하",
    "22": "제목에 쓸 수 없는 문자",
    "23": "제목은 40바이트 이하",
    "31": "파일은 100KB 이하",
    "32": "허용되지 않는 파일 확장자",
    "33": "이미지 업로드 실패",
    "41": "수신번호 없음",
    "42": "예약할 수 없는 시간",
    "43": "날짜 형식 오류",
    "44": "한 번에 최대 1000건",
    "50": "자동 충전 한도 초과",
    "202": "SMS 인증 실패 또는 권한 없음",
    "206": "등록되지 않은 IP",
}

_SMS_INVALID = frozenset({"13", "21", "22", "23", "31", "32", "33", "41", "42", "43", "44"})
_SMS_AUTH = frozenset({"14", "15", "202", "206"})
_SMS_VENDOR_SIDE = frozenset({"1", "11", "12"})


def map_iwinv_sms_code(code: str, *, http_ok: bool) -> KMsgErrorCode:
    """IWINV SMS v2 ``resultCode`` → KMsgErrorCode."""
    if code in _SMS_INVALID:
        return KMsgErrorCode.INVALID_REQUEST
    if code in _SMS_AUTH:
        return KMsgErrorCode.AUTHENTICATION_FAILED
    if code == "50":
        return KMsgErrorCode.INSUFFICIENT_BALANCE
    if code in _SMS_VENDOR_SIDE:
        return KMsgErrorCode.PROVIDER_ERROR if http_ok else KMsgErrorCode.NETWORK_ERROR
    return KMsgErrorCode.PROVIDER_ERROR if http_ok else KMsgErrorCode.NETWORK_ERROR


# --------------------------------------------------------------------------- helpers


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _format_kst(moment: datetime) -> str:
    return to_kst(moment).strftime("%Y-%m-%d %H:%M:%S")


def _yn(value: Any) -> str | None:
    if isinstance(value, str) and value.strip().upper() in ("Y", "N"):
        return value.strip().upper()
    return None


def _opt_str(options: Mapping[str, Any], key: str) -> str | None:
    value = options.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _image_extension(content_type: str | None) -> str:
    kind = (content_type or "").lower()
    if "png" in kind:
        return ".png"
    if "gif" in kind:
        return ".gif"
    if "webp" in kind:
        return ".webp"
    return ".jpg"


# --------------------------------------------------------------------------- templates
_IWINV_STATUS = {
    "Y": TemplateStatus.APPROVED,
    "I": TemplateStatus.INSPECTION,
    "R": TemplateStatus.REJECTED,
}
_IWINV_STATUS_FILTER = {
    TemplateStatus.APPROVED: "Y",
    TemplateStatus.INSPECTION: "I",
    TemplateStatus.PENDING: "I",
    TemplateStatus.REJECTED: "R",
}
MAX_TEMPLATE_PAGE_SIZE = 1000


def _iwinv_buttons(buttons: tuple[TemplateButton, ...]) -> list[dict[str, str]]:
    return [{"type": b.type, "name": b.name, **button_links(b)} for b in buttons]


def _iwinv_template(item: Mapping[str, Any]) -> Template:
    code = str(item.get("templateCode") or "")
    content = str(item.get("templateContent") or "")
    status_code = str(item.get("templateStatus") or item.get("status") or "").strip().upper()
    buttons = buttons_from_wire(item.get("buttons"), "type")
    return Template(
        id=code,
        code=code,
        name=str(item.get("templateName") or ""),
        content=content,
        status=_IWINV_STATUS.get(status_code, TemplateStatus.PENDING),
        provider_id=PROVIDER_ID,
        buttons=buttons,
        variables=placeholders(content),
        created_at=parse_kst(item.get("createDate") or item.get("regDate")),
        updated_at=parse_kst(item.get("updateDate") or item.get("modDate")),
        raw=item,
    )


# --------------------------------------------------------------------------- provider


class IWINVProvider(HttpProviderBase):
    """IWINV AlimTalk (+ SMS/LMS/MMS when the SMS keys are set)."""

    max_batch_size: int | None = None

    def __init__(
        self,
        config: IWINVConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        if not isinstance(config.api_key, str) or not config.api_key.strip():
            raise ProviderConfigError(
                "iwinv: api_key is required", provider_id=PROVIDER_ID, missing=("api_key",)
            )
        super().__init__(
            PROVIDER_ID, timeout=config.timeout, retry=config.retry, session=session, sleep=sleep
        )
        self._config = config
        self._base_url = validate_base_url(config.base_url, "base_url", PROVIDER_ID)
        self._sms_base_url = validate_base_url(config.sms_base_url, "sms_base_url", PROVIDER_ID)
        endpoint = config.send_endpoint.strip() or "/api/v2/send/"
        self._send_endpoint = endpoint if endpoint.startswith("/") else "/" + endpoint
        self._sms_secret = self._build_sms_secret(config)
        types = {MessageType.ALIMTALK}
        if self._sms_secret:
            types |= _SMS_TYPES
        self._types = frozenset(types)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn = asyncio.sleep,
    ) -> IWINVProvider:
        """Build from ``IWINV_*`` variables (``IWINV_API_KEY`` is required).

        Also read: ``IWINV_SMS_API_KEY``, ``IWINV_SMS_AUTH_KEY``, ``IWINV_SMS_COMPANY_ID``,
        ``IWINV_SENDER_NUMBER`` (falls back to ``IWINV_SMS_SENDER_NUMBER``),
        ``IWINV_SMS_SENDER_NUMBER``, ``IWINV_SEND_ENDPOINT``, ``IWINV_X_FORWARDED_FOR``, and our
        additions ``IWINV_BASE_URL`` / ``IWINV_SMS_BASE_URL``.
        """
        source = os.environ if env is None else env
        required = require_env(source, PROVIDER_ID, "IWINV_API_KEY")
        sms_sender = env_value(source, "IWINV_SMS_SENDER_NUMBER")
        config = IWINVConfig(
            api_key=required["IWINV_API_KEY"],
            sms_api_key=env_value(source, "IWINV_SMS_API_KEY"),
            sms_auth_key=env_value(source, "IWINV_SMS_AUTH_KEY"),
            sms_company_id=env_value(source, "IWINV_SMS_COMPANY_ID"),
            sender_number=env_value(source, "IWINV_SENDER_NUMBER") or sms_sender,
            sms_sender_number=sms_sender,
            send_endpoint=env_value(source, "IWINV_SEND_ENDPOINT") or "/api/v2/send/",
            x_forwarded_for=env_value(source, "IWINV_X_FORWARDED_FOR"),
            base_url=env_value(source, "IWINV_BASE_URL") or DEFAULT_BASE_URL,
            sms_base_url=env_value(source, "IWINV_SMS_BASE_URL") or DEFAULT_SMS_BASE_URL,
        )
        return cls(config, session=session, sleep=sleep)

    @staticmethod
    def _build_sms_secret(config: IWINVConfig) -> str | None:
        api_key = (config.sms_api_key or "").strip()
        auth_key = (config.sms_auth_key or "").strip()
        if api_key and auth_key:
            return _b64(f"{api_key}&{auth_key}")
        # Legacy accounts: the AlimTalk key pairs with whichever SMS key is set.
        single = auth_key or api_key
        if single:
            return _b64(f"{config.api_key.strip()}&{single}")
        return None

    @property
    def id(self) -> str:
        return PROVIDER_ID

    @property
    def name(self) -> str:
        return PROVIDER_NAME

    @property
    def supported_types(self) -> frozenset[MessageType]:
        return self._types

    def get_onboarding_spec(self) -> ProviderOnboardingSpec:
        return get_provider_onboarding_spec(PROVIDER_ID)

    async def health_check(self) -> ProviderHealth:
        # Both URLs were validated at construction; IWINV has no cheap ping endpoint.
        return ProviderHealth(
            healthy=True,
            data={
                "provider": PROVIDER_ID,
                "baseUrl": self._base_url,
                "smsBaseUrl": self._sms_base_url,
            },
        )

    # headers -----------------------------------------------------------------------------

    def _common_headers(
        self, headers: dict[str, str], *, multipart: bool = False
    ) -> dict[str, str]:
        if self._config.x_forwarded_for:
            headers["X-Forwarded-For"] = self._config.x_forwarded_for
        for key, value in self._config.extra_headers.items():
            if multipart and key.lower() == "content-type":
                continue  # the multipart boundary must come from the form encoder
            headers[key] = value
        return headers

    def _alimtalk_headers(self) -> dict[str, str]:
        return self._common_headers(
            {
                "AUTH": _b64(self._config.api_key.strip()),
                "Content-Type": "application/json;charset=UTF-8",
            }
        )

    def _sms_headers(self, *, multipart: bool = False) -> dict[str, str]:
        headers = {"secret": self._sms_secret or ""}
        if not multipart:
            headers["Content-Type"] = "application/json;charset=UTF-8"
        return self._common_headers(headers, multipart=multipart)

    # send --------------------------------------------------------------------------------

    async def send(self, options: SendOptions) -> Result[SendResult, KMsgError]:
        try:
            if isinstance(options, AlimTalkSendOptions):
                return await self._send_alimtalk(options)
            if isinstance(options, SmsSendOptions) and options.type in _SMS_TYPES:
                if not self._sms_secret:
                    return fail_invalid_request(
                        "SMS v2 configuration missing (sms_api_key/sms_auth_key)",
                        provider_id=PROVIDER_ID,
                    )
                return await self._send_sms(options)
            return fail_invalid_request(
                f"IWINV does not support type {options.type.value}", provider_id=PROVIDER_ID
            )
        except Exception as exc:  # never raise out of send
            return Fail(unexpected_error(PROVIDER_ID, exc))

    def _sender(self, options: SendOptions, *, sms_first: bool) -> str:
        candidates = (
            (options.from_, self._config.sms_sender_number, self._config.sender_number)
            if sms_first
            else (options.from_, self._config.sender_number, self._config.sms_sender_number)
        )
        for candidate in candidates:
            if candidate and digits_only(candidate):
                return digits_only(candidate)
        return ""

    def build_alimtalk_body(
        self, options: AlimTalkSendOptions
    ) -> Result[dict[str, Any], KMsgError]:
        """The AlimTalk request body (exposed for inspection and tests)."""
        if not options.template_id.strip():
            return fail_invalid_request(
                "templateId is required for ALIMTALK", provider_id=PROVIDER_ID
            )
        phone = digits_only(options.to)
        if not phone:
            return fail_invalid_request("to is required", provider_id=PROVIDER_ID)
        extra = options.provider_options
        custom_params = extra.get("templateParam")
        if isinstance(custom_params, list | tuple):
            params = [stringify_variable(item) for item in custom_params]
        else:
            params = [stringify_variable(value) for value in options.variables.values()]
        recipient: dict[str, Any] = {"phone": phone}
        if params:
            recipient["templateParam"] = params
        body: dict[str, Any] = {
            "templateCode": options.template_id.strip(),
            "reserve": "Y" if options.scheduled_at is not None else "N",
            "list": [recipient],
        }
        if options.scheduled_at is not None:
            body["sendDate"] = _format_kst(options.scheduled_at)

        failover = options.failover
        sender = self._sender(options, sms_first=False)
        re_send = _yn(extra.get("reSend"))
        if re_send is None and failover is not None and failover.enabled is not None:
            re_send = "Y" if failover.enabled else "N"
        if re_send is None:
            re_send = "Y" if sender else "N"
        body["reSend"] = re_send

        callback_option = _opt_str(extra, "resendCallback")
        callback = digits_only(callback_option) if callback_option else sender
        if re_send == "Y" and not callback:
            return fail_invalid_request(
                "resendCallback is required when reSend is 'Y' "
                "(options.from, config.sender_number or providerOptions.resendCallback)",
                provider_id=PROVIDER_ID,
            )
        if callback:
            body["resendCallback"] = callback

        resend_type_option = _opt_str(extra, "resendType")
        if resend_type_option is not None:
            resend_type = _yn(resend_type_option)
            if resend_type is None:
                return fail_invalid_request(
                    "resendType must be 'Y' or 'N'", provider_id=PROVIDER_ID
                )
            body["resendType"] = resend_type
        elif failover is not None and failover.fallback_channel is not None:
            body["resendType"] = "Y" if failover.fallback_channel is FallbackChannel.LMS else "N"

        title = _opt_str(extra, "resendTitle") or (
            (failover.fallback_title or "").strip() if failover else ""
        )
        if title:
            body["resendTitle"] = title
        content = _opt_str(extra, "resendContent") or (
            (failover.fallback_content or "") if failover else ""
        )
        if content:
            body["resendContent"] = content
        return Ok(body)

    async def _send_alimtalk(self, options: AlimTalkSendOptions) -> Result[SendResult, KMsgError]:
        built = self.build_alimtalk_body(options)
        if isinstance(built, Fail):
            return built
        body = built.value
        url = join_url(self._base_url, self._send_endpoint)

        return await self._request(
            "POST",
            url,
            lambda response: self._alimtalk_result(options, response),
            headers=self._alimtalk_headers,
            json_body=body,
        )

    def _alimtalk_payload(self, response: HttpResponse) -> Result[dict[str, Any], KMsgError]:
        parsed = parse_json(response.text)
        if isinstance(parsed, MalformedResponse):
            numeric = _as_int(parsed.text)
            if numeric is not None:
                return Ok({"code": numeric, "message": parsed.text.strip()})
            if response.ok:
                return Fail(malformed_response_error(PROVIDER_ID, response))
            return Ok({"code": response.status, "message": parsed.text.strip()[:200], _HTTP: True})
        if isinstance(parsed, dict):
            if "code" not in parsed and not response.ok:
                return Ok({**parsed, "code": response.status, _HTTP: True})
            return Ok(parsed)
        numeric = _as_int(parsed)
        return Ok(
            {"code": numeric if numeric is not None else response.status, "message": str(parsed)}
        )

    def _alimtalk_reply(self, response: HttpResponse) -> Result[dict[str, Any], KMsgError]:
        """The payload of an AlimTalk API answer that succeeded (HTTP 2xx and code 200)."""
        payload = self._alimtalk_payload(response)
        if isinstance(payload, Fail):
            return payload
        if not (response.ok and _as_int(payload.value.get("code")) == 200):
            return Fail(self._alimtalk_error(payload.value, response))
        return payload

    def _alimtalk_error(self, payload: Mapping[str, Any], response: HttpResponse) -> KMsgError:
        code = _as_int(payload.get("code"))
        message = str(payload.get("message") or f"IWINV request failed (code {code})")
        # Codes taken from the HTTP status keep HTTP meaning: IWINV's own 502-517 range
        # means "invalid request", but an HTTP 503 from a proxy does not.
        kind = _map_http_status(code) if payload.get(_HTTP) else map_iwinv_code(code)
        return KMsgError(
            kind,
            message,
            provider_id=PROVIDER_ID,
            provider_error_code=str(code) if code is not None else None,
            provider_error_text=message,
            http_status=response.status,
            retry_after_ms=response.retry_after_ms(),
            details={"originalCode": code},
        )

    def _alimtalk_result(
        self, options: AlimTalkSendOptions, response: HttpResponse
    ) -> Result[SendResult, KMsgError]:
        reply = self._alimtalk_reply(response)
        if isinstance(reply, Fail):
            return reply
        data = reply.value
        seq = data.get("seqNo")
        seq_int = _as_int(seq)
        return Ok(
            SendResult(
                message_id=options.message_id or "",
                provider_id=PROVIDER_ID,
                status=MessageStatus.PENDING if options.scheduled_at else MessageStatus.SENT,
                type=options.type,
                to=options.to,
                provider_message_id=str(seq_int) if seq_int is not None else None,
                raw=data,
            )
        )

    # SMS / LMS / MMS ---------------------------------------------------------------------

    def _sms_common(self, options: SmsSendOptions) -> Result[dict[str, str], KMsgError]:
        phone = digits_only(options.to)
        if not phone:
            return fail_invalid_request("to is required", provider_id=PROVIDER_ID)
        if not options.text.strip():
            return fail_invalid_request("text is required for SMS/LMS/MMS", provider_id=PROVIDER_ID)
        sender = self._sender(options, sms_first=True)
        if not sender:
            return fail_invalid_request(
                "from is required for SMS/LMS/MMS (options.from or config.sms_sender_number)",
                provider_id=PROVIDER_ID,
            )
        fields = {"to": phone, "from": sender}
        if options.type is not MessageType.SMS:
            fields["title"] = (options.subject or "").strip() or options.text[:20]
        if options.scheduled_at is not None:
            fields["date"] = _format_kst(options.scheduled_at)
        return Ok(fields)

    async def _send_sms(self, options: SmsSendOptions) -> Result[SendResult, KMsgError]:
        common = self._sms_common(options)
        if isinstance(common, Fail):
            return common
        fields = common.value
        url = join_url(self._sms_base_url, self._send_endpoint)

        if options.type is MessageType.MMS:
            image = options.media.image if options.media else None
            if image is None or image.data is None:
                if options.image_url or (image is not None and image.ref):
                    message = "IWINV MMS needs the image bytes in options.media.image.data"
                else:
                    message = "image is required for MMS (options.media.image.data)"
                return fail_invalid_request(message, provider_id=PROVIDER_ID)
            if len(image.data) > MAX_MMS_IMAGE_BYTES:
                return fail_invalid_request("MMS image must be <= 100KB", provider_id=PROVIDER_ID)
            filename = image.filename or "image"
            if "." not in filename:
                filename += _image_extension(image.content_type)
            image_data = image.data
            content_type = image.content_type or "image/jpeg"

            def mms_form() -> aiohttp.FormData:
                form = aiohttp.FormData()
                form.add_field("version", "1.0")
                form.add_field("from", fields["from"])
                form.add_field("to", fields["to"])
                form.add_field("title", fields["title"])
                form.add_field("text", options.text)
                if "date" in fields:
                    form.add_field("date", fields["date"])
                form.add_field("image", image_data, filename=filename, content_type=content_type)
                return form

            return await self._request(
                "POST",
                url,
                lambda response: self._sms_result(options, response),
                headers=partial(self._sms_headers, multipart=True),
                form=mms_form,
            )

        body: dict[str, Any] = {
            "version": "1.0",
            "from": fields["from"],
            "to": [fields["to"]],
            "text": options.text,
        }
        if "title" in fields:
            body["title"] = fields["title"]
        if options.type is MessageType.SMS:
            body["msgType"] = _opt_str(options.provider_options, "msgType") or options.type.value
        if "date" in fields:
            body["date"] = fields["date"]

        return await self._request(
            "POST",
            url,
            lambda response: self._sms_result(options, response),
            headers=self._sms_headers,
            json_body=body,
        )

    def _sms_result(
        self, options: SmsSendOptions, response: HttpResponse
    ) -> Result[SendResult, KMsgError]:
        parsed = parse_json(response.text)
        if isinstance(parsed, MalformedResponse):
            if response.ok and _as_int(parsed.text) is None:
                return Fail(malformed_response_error(PROVIDER_ID, response))
            data: dict[str, Any] = {"resultCode": parsed.text.strip()}
        elif isinstance(parsed, dict):
            data = parsed
        else:
            data = {"resultCode": parsed}
        raw_code = data.get("resultCode", data.get("code"))
        code = str(raw_code).strip() if raw_code is not None else ""
        if response.ok and code == "0":
            request_no = data.get("requestNo")
            provider_message_id = (
                request_no.strip()
                if isinstance(request_no, str) and request_no.strip()
                else (str(data["msgid"]) if data.get("msgid") is not None else None)
            )
            return Ok(
                SendResult(
                    message_id=options.message_id or "",
                    provider_id=PROVIDER_ID,
                    status=MessageStatus.PENDING if options.scheduled_at else MessageStatus.SENT,
                    type=options.type,
                    to=options.to,
                    provider_message_id=provider_message_id,
                    raw=data,
                )
            )
        message = str(
            data.get("message") or SMS_RESULT_MESSAGES.get(code) or f"IWINV SMS error {code}"
        )
        return Fail(
            KMsgError(
                map_iwinv_sms_code(code, http_ok=response.ok),
                message,
                provider_id=PROVIDER_ID,
                provider_error_code=code or None,
                provider_error_text=message,
                http_status=response.status,
                retry_after_ms=response.retry_after_ms(),
                details={"originalCode": code},
            )
        )

    # delivery status ---------------------------------------------------------------------

    async def get_delivery_status(
        self, query: DeliveryStatusQuery
    ) -> Result[DeliveryStatusResult | None, KMsgError]:
        try:
            if query.type is MessageType.ALIMTALK:
                return await self._alimtalk_status(query)
            if query.type in _SMS_TYPES:
                return await self._sms_status(query)
            return fail_invalid_request(
                f"IWINV delivery status does not support type {query.type.value}",
                provider_id=PROVIDER_ID,
            )
        except Exception as exc:
            return Fail(unexpected_error(PROVIDER_ID, exc))

    async def _alimtalk_status(
        self, query: DeliveryStatusQuery
    ) -> Result[DeliveryStatusResult | None, KMsgError]:
        body: dict[str, Any] = {
            "pageNum": 1,
            "pageSize": 15,
            "phone": digits_only(query.to),
            "startDate": _format_kst(query.requested_at - timedelta(days=1)),
            "endDate": _format_kst(now_utc()),
        }
        seq = _as_int(query.provider_message_id)
        if seq is not None:
            body["seqNo"] = seq
        if query.scheduled_at is not None:
            body["reserve"] = "Y"
        url = join_url(self._base_url, "/api/history/")

        def read(response: HttpResponse) -> Result[DeliveryStatusResult | None, KMsgError]:
            payload = self._alimtalk_payload(response)
            if isinstance(payload, Fail):
                return payload
            data = payload.value
            if _as_int(data.get("code")) != 200:
                return Fail(self._alimtalk_error(data, response))
            items = [item for item in data.get("list") or [] if isinstance(item, dict)]
            if not items:
                return Ok(None)
            item = next(
                (i for i in items if seq is not None and _as_int(i.get("seqNo")) == seq), items[0]
            )
            status_code = str(item.get("statusCode") or "")
            status_name = str(item.get("statusCodeName") or "")
            send_date = parse_kst(item.get("sendDate"))
            receive_date = parse_kst(item.get("receiveDate"))
            if status_code == "OK" or "성공" in status_name:
                status = DeliveryStatus.DELIVERED
            elif send_date is not None:
                status = DeliveryStatus.FAILED
            else:
                status = DeliveryStatus.PENDING
            return Ok(
                DeliveryStatusResult(
                    provider_id=PROVIDER_ID,
                    provider_message_id=query.provider_message_id,
                    status=status,
                    status_code=status_code or None,
                    status_message=status_name or None,
                    sent_at=send_date,
                    delivered_at=(receive_date or send_date)
                    if status is DeliveryStatus.DELIVERED
                    else None,
                    failed_at=send_date if status is DeliveryStatus.FAILED else None,
                    raw=item,
                )
            )

        return await self._request(
            "POST", url, read, headers=self._alimtalk_headers, json_body=body
        )

    async def _sms_status(
        self, query: DeliveryStatusQuery
    ) -> Result[DeliveryStatusResult | None, KMsgError]:
        if not self._config.sms_company_id:
            return fail_invalid_request(
                "sms_company_id required for history (IWINV_SMS_COMPANY_ID)",
                provider_id=PROVIDER_ID,
            )
        if not self._sms_secret:
            return fail_invalid_request("SMS v2 configuration missing", provider_id=PROVIDER_ID)
        start = to_kst(query.requested_at - timedelta(days=1))
        end = to_kst(now_utc())
        if end - start > timedelta(days=90):
            return fail_invalid_request(
                "IWINV SMS history covers at most 90 days", provider_id=PROVIDER_ID
            )
        body = {
            "version": "1.0",
            "companyid": self._config.sms_company_id,
            "startDate": start.strftime("%Y-%m-%d"),
            "endDate": end.strftime("%Y-%m-%d"),
            "requestNo": query.provider_message_id,
            "pageNum": 1,
            "pageSize": 15,
            "phone": digits_only(query.to),
        }
        url = join_url(self._sms_base_url, "/api/history/")

        def read(response: HttpResponse) -> Result[DeliveryStatusResult | None, KMsgError]:
            parsed = parse_json(response.text)
            if not isinstance(parsed, dict) or _as_int(parsed.get("resultCode")) != 0:
                message = (
                    str(parsed.get("message"))
                    if isinstance(parsed, dict) and parsed.get("message")
                    else "IWINV SMS history request failed"
                )
                return Fail(
                    KMsgError(
                        KMsgErrorCode.PROVIDER_ERROR,
                        message,
                        provider_id=PROVIDER_ID,
                        http_status=response.status,
                    )
                )
            items = [item for item in parsed.get("list") or [] if isinstance(item, dict)]
            if not items:
                return Ok(None)
            item = next(
                (i for i in items if str(i.get("requestNo")) == query.provider_message_id),
                items[0],
            )
            code = str(item.get("sendStatusCode") or "").strip()
            message = str(item.get("sendStatusMsg") or item.get("sendStatus") or "").strip()
            status = _sms_delivery_status(code, message)
            send_date = parse_kst(item.get("sendDate"))
            return Ok(
                DeliveryStatusResult(
                    provider_id=PROVIDER_ID,
                    provider_message_id=query.provider_message_id,
                    status=status,
                    status_code=code or None,
                    status_message=message or None,
                    sent_at=send_date,
                    delivered_at=send_date if status is DeliveryStatus.DELIVERED else None,
                    failed_at=send_date if status is DeliveryStatus.FAILED else None,
                    raw=item,
                )
            )

        return await self._request("POST", url, read, headers=self._sms_headers, json_body=body)

    # balance -----------------------------------------------------------------------------

    async def get_balance(
        self, query: BalanceQuery | None = None
    ) -> Result[BalanceResult, KMsgError]:
        channel = (query.channel if query else None) or MessageType.ALIMTALK
        try:
            if channel is MessageType.ALIMTALK:
                return await self._balance(
                    channel,
                    join_url(self._base_url, "/api/charge/"),
                    self._alimtalk_headers,
                    {},
                    success=lambda data: _as_int(data.get("code")) == 200,
                )
            if channel in _SMS_TYPES:
                if not (self._config.sms_api_key and self._config.sms_auth_key):
                    return fail_invalid_request(
                        "sms_api_key and sms_auth_key are required for the SMS balance",
                        provider_id=PROVIDER_ID,
                    )
                return await self._balance(
                    channel,
                    join_url(self._sms_base_url, "/api/charge/"),
                    self._sms_headers,
                    {"version": "1.0"},
                    success=lambda data: _as_int(data.get("code", data.get("resultCode"))) == 0,
                )
            return fail_invalid_request(
                f"IWINV balance does not support channel {channel.value}", provider_id=PROVIDER_ID
            )
        except Exception as exc:
            return Fail(unexpected_error(PROVIDER_ID, exc))

    async def _balance(
        self,
        channel: MessageType,
        url: str,
        headers: Callable[[], dict[str, str]],
        body: dict[str, Any],
        *,
        success: Callable[[Mapping[str, Any]], bool],
    ) -> Result[BalanceResult, KMsgError]:
        def read(response: HttpResponse) -> Result[BalanceResult, KMsgError]:
            parsed = parse_json(response.text)
            if not isinstance(parsed, dict):
                return Fail(malformed_response_error(PROVIDER_ID, response))
            if not (response.ok and success(parsed)):
                if channel is MessageType.ALIMTALK:
                    return Fail(self._alimtalk_error(parsed, response))
                return Fail(
                    KMsgError(
                        KMsgErrorCode.PROVIDER_ERROR,
                        str(parsed.get("message") or "IWINV balance request failed"),
                        provider_id=PROVIDER_ID,
                        http_status=response.status,
                    )
                )
            amount = _as_float(parsed.get("charge"))
            if amount is None:
                return Fail(
                    KMsgError(
                        KMsgErrorCode.PROVIDER_ERROR,
                        "IWINV balance response has no numeric charge",
                        provider_id=PROVIDER_ID,
                    )
                )
            return Ok(BalanceResult(PROVIDER_ID, amount, channel=channel, raw=parsed))

        return await self._request("POST", url, read, headers=headers, json_body=body)

    # templates (``/api/template/...``; IWINV has no inspection request: a created or
    # modified template goes to review by itself) ----------------------------------------

    async def create_template(
        self, template: TemplateInput, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        try:
            checked = validate_template(template, provider_id=PROVIDER_ID)
            if isinstance(checked, Fail):
                return checked
            body: dict[str, Any] = {
                "templateName": template.name,
                "templateContent": template.content,
            }
            if template.buttons:
                body["buttons"] = _iwinv_buttons(template.buttons)

            def read(data: dict[str, Any]) -> Result[Template, KMsgError]:
                code = data.get("templateCode")
                if not isinstance(code, str) or not code:
                    return Fail(
                        KMsgError(
                            KMsgErrorCode.PROVIDER_ERROR,
                            "IWINV accepted the template but returned no templateCode",
                            provider_id=PROVIDER_ID,
                            retryable=False,  # the vendor may have acted: never resend
                        )
                    )
                now = now_utc()
                return Ok(
                    Template(
                        id=code,
                        code=code,
                        name=template.name,
                        content=template.content,
                        status=TemplateStatus.INSPECTION,
                        provider_id=PROVIDER_ID,
                        category=template.category,
                        buttons=template.buttons,
                        variables=placeholders(template.content),
                        created_at=now,
                        updated_at=now,
                        raw=data,
                    )
                )

            return await self._template_call("/api/template/add/", body, read)
        except Exception as exc:
            return Fail(unexpected_error(PROVIDER_ID, exc))

    async def update_template(
        self, code: str, update: TemplateUpdate, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        try:
            current = await self.get_template(code)
            if isinstance(current, Fail):
                return current
            merged = update.apply(current.value)
            checked = validate_template(merged, provider_id=PROVIDER_ID)
            if isinstance(checked, Fail):
                return checked
            body: dict[str, Any] = {
                "templateCode": code,
                "templateName": merged.name,
                "templateContent": merged.content,
                # Always sent: IWINV keeps the old buttons when the field is absent, so an
                # empty list is the only way to clear them.
                "buttons": _iwinv_buttons(merged.buttons),
            }

            def read(data: dict[str, Any]) -> Result[Template, KMsgError]:
                revised = revised_template(current.value, merged, TemplateStatus.INSPECTION)
                return Ok(replace(revised, raw=data))

            return await self._template_call("/api/template/modify/", body, read)
        except Exception as exc:
            return Fail(unexpected_error(PROVIDER_ID, exc))

    async def delete_template(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[None, KMsgError]:
        try:
            if not code.strip():
                return fail_invalid_request("template code is required", provider_id=PROVIDER_ID)
            return await self._template_call(
                "/api/template/delete/", {"templateCode": code}, lambda data: Ok(None)
            )
        except Exception as exc:
            return Fail(unexpected_error(PROVIDER_ID, exc))

    async def get_template(
        self, code: str, *, sender_key: str | None = None
    ) -> Result[Template, KMsgError]:
        if not code.strip():
            return fail_invalid_request("template code is required", provider_id=PROVIDER_ID)
        listed = await self._list(code=code)
        if isinstance(listed, Fail):
            return listed
        return find_template(listed.value, code, PROVIDER_ID)

    async def list_templates(
        self,
        *,
        status: TemplateStatus | None = None,
        page: int = 1,
        limit: int = 15,
        sender_key: str | None = None,
    ) -> Result[tuple[Template, ...], KMsgError]:
        if page < 1 or not 1 <= limit <= MAX_TEMPLATE_PAGE_SIZE:
            return fail_invalid_request(
                f"page must be >= 1 and limit 1-{MAX_TEMPLATE_PAGE_SIZE}", provider_id=PROVIDER_ID
            )
        return await self._list(status=status, page=page, limit=limit)

    async def _list(
        self,
        *,
        code: str | None = None,
        status: TemplateStatus | None = None,
        page: int = 1,
        limit: int = 15,
    ) -> Result[tuple[Template, ...], KMsgError]:
        try:
            body: dict[str, Any] = {"pageNum": str(page), "pageSize": str(limit)}
            if code:
                body["templateCode"] = code
            if status is not None:
                body["templateStatus"] = _IWINV_STATUS_FILTER[status]

            def read(data: dict[str, Any]) -> Result[tuple[Template, ...], KMsgError]:
                items = data.get("list") or []
                return Ok(tuple(_iwinv_template(i) for i in items if isinstance(i, dict)))

            return await self._template_call("/api/template/", body, read, read_only=True)
        except Exception as exc:
            return Fail(unexpected_error(PROVIDER_ID, exc))

    async def _template_call(
        self,
        path: str,
        body: dict[str, Any],
        read: Callable[[dict[str, Any]], Result[T, KMsgError]],
        *,
        read_only: bool = False,
    ) -> Result[T, KMsgError]:
        """One template call; only ``read_only`` ones are retried (see ``_request``)."""

        def parse(response: HttpResponse) -> Result[T, KMsgError]:
            reply = self._alimtalk_reply(response)
            if isinstance(reply, Fail):
                return reply
            return read(reply.value)

        return await self._request(
            "POST",
            join_url(self._base_url, path),
            parse,
            headers=self._alimtalk_headers,
            json_body=body,
            retry=read_only,
        )


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace(",", "").strip())
        except ValueError:
            return None
    return None


def _sms_delivery_status(code: str, message: str) -> DeliveryStatus:
    if code in ("06", "1000") or "전송 성공" in message:
        return DeliveryStatus.DELIVERED
    if "대기" in message or "처리중" in message or code in ("00", "01"):
        return DeliveryStatus.PENDING
    if not code and not message:
        return DeliveryStatus.UNKNOWN
    return DeliveryStatus.FAILED
