"""SOLAPI over its REST API directly (no vendor SDK).

Wire facts (providers spec §4.3): JSON bodies; every request carries
``Authorization: HMAC-SHA256 apiKey=<key>, date=<ISO-8601>, salt=<random>, signature=<hex>``
where the signature is HMAC-SHA256 keyed with the API secret over ``date + salt``.
Sends go to ``POST /messages/v4/send`` as ``{"message": {...}}``; ALIMTALK variables are
sent with ``#{name}`` keys and filled in by SOLAPI. Numbers are trimmed, a leading ``+``
kept and every other non-digit removed (the original's intended rule). HTTP errors carry
``{"errorCode", "errorMessage"}``.

Error mapping: 401/403 → AUTHENTICATION_FAILED and 429 → RATE_LIMIT_EXCEEDED (the SDK-based
original reported both as INVALID_REQUEST), other 4xx → INVALID_REQUEST, 5xx →
PROVIDER_ERROR, connection failure → NETWORK_ERROR, timeout → NETWORK_TIMEOUT, a reply that
is not JSON → PROVIDER_ERROR (not retryable), a message the API refused to register →
PROVIDER_ERROR (not retryable), anything unexpected → UNKNOWN_ERROR.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from ..events import format_timestamp, parse_timestamp
from .errors import (
    KMsgError,
    KMsgErrorCode,
    ProviderConfigError,
    SenderKeyRequiredError,
    fail_invalid_request,
)
from .onboarding import ProviderOnboardingSpec, get_provider_onboarding_spec
from .phone import normalize_keep_plus
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
    require_env,
    unexpected_error,
    validate_base_url,
)
from .result import Fail, Ok, Result
from .templates import (
    stringify_variable,
)
from .types import (
    KMSG_MESSAGE_TYPES,
    AlimTalkSendOptions,
    BalanceQuery,
    BalanceResult,
    BinaryInput,
    DeliveryStatus,
    DeliveryStatusQuery,
    DeliveryStatusResult,
    FaxSendOptions,
    FriendTalkSendOptions,
    MessageButton,
    MessageStatus,
    MessageType,
    NsaSendOptions,
    ProviderHealth,
    RcsTemplateSendOptions,
    RcsTextSendOptions,
    SendOptions,
    SendResult,
    SendWarning,
    SendWarningCode,
    SmsSendOptions,
    Variables,
    VoiceSendOptions,
    VoiceType,
)

PROVIDER_ID = "solapi"
PROVIDER_NAME = "SOLAPI Messaging Provider"
DEFAULT_BASE_URL = "https://api.solapi.com"

_SALT_ALPHABET = string.ascii_letters + string.digits
_SENDER_REQUIRED = frozenset(
    {
        MessageType.SMS,
        MessageType.LMS,
        MessageType.MMS,
        MessageType.VOICE,
        MessageType.FAX,
        MessageType.RCS_SMS,
        MessageType.RCS_LMS,
        MessageType.RCS_MMS,
        MessageType.RCS_TPL,
        MessageType.RCS_ITPL,
        MessageType.RCS_LTPL,
    }
)
_FAILED_STATUS = re.compile(r"^[1-3]\d{3}$")


@dataclass(frozen=True, slots=True)
class SolapiConfig:
    api_key: str
    api_secret: str
    default_from: str | None = None
    kakao_pf_id: str | None = None
    rcs_brand_id: str | None = None
    naver_talk_id: str | None = None
    app_id: str | None = None
    default_country: str | None = None
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def random_salt() -> str:
    """32 characters from ``[0-9A-Za-z]``, fresh for every request."""
    return "".join(secrets.choice(_SALT_ALPHABET) for _ in range(32))


def solapi_signature(api_secret: str, date: str, salt: str) -> str:
    """Lowercase hex HMAC-SHA256 of ``date + salt`` keyed with the API secret."""
    return hmac.new(
        api_secret.encode("utf-8"), (date + salt).encode("utf-8"), hashlib.sha256
    ).hexdigest()


def solapi_authorization(api_key: str, api_secret: str, date: str, salt: str) -> str:
    """The ``Authorization`` header value."""
    signature = solapi_signature(api_secret, date, salt)
    return f"HMAC-SHA256 apiKey={api_key}, date={date}, salt={salt}, signature={signature}"


def map_solapi_delivery_status(code: str | None) -> DeliveryStatus:
    """SOLAPI ``statusCode`` → DeliveryStatus (the original's intended rule)."""
    if not code:
        return DeliveryStatus.UNKNOWN
    if code == "2000":
        return DeliveryStatus.PENDING
    if code == "3000":
        return DeliveryStatus.SENT
    if code == "4000":
        return DeliveryStatus.DELIVERED
    if _FAILED_STATUS.match(code):
        return DeliveryStatus.FAILED
    return DeliveryStatus.UNKNOWN


def map_solapi_http_status(status: int) -> KMsgErrorCode:
    if status in (401, 403):
        return KMsgErrorCode.AUTHENTICATION_FAILED
    if status == 429:
        return KMsgErrorCode.RATE_LIMIT_EXCEEDED
    if 400 <= status < 500:
        return KMsgErrorCode.INVALID_REQUEST
    return KMsgErrorCode.PROVIDER_ERROR


def _variables_with_hash_keys(variables: Variables | None) -> Result[dict[str, str], KMsgError]:
    out: dict[str, str] = {}
    for key, value in (variables or {}).items():
        name = key[2:-1] if key.startswith("#{") and key.endswith("}") else key
        if "." in name:
            return fail_invalid_request(
                f"SOLAPI variable names cannot contain '.': {key!r}", provider_id=PROVIDER_ID
            )
        out[f"#{{{name}}}"] = stringify_variable(value)
    return Ok(out)


def _plain_variables(variables: Variables | None) -> dict[str, str]:
    return {key: stringify_variable(value) for key, value in (variables or {}).items()}


def _kakao_buttons(buttons: tuple[MessageButton, ...]) -> list[dict[str, str]]:
    out = []
    for button in buttons:
        item = {"buttonName": button.name, "buttonType": button.type}
        if button.url_mobile:
            item["linkMo"] = button.url_mobile
        if button.url_pc:
            item["linkPc"] = button.url_pc
        out.append(item)
    return out


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None and value != []}


class SolapiProvider(HttpProviderBase):
    """SOLAPI: all 14 message types."""

    max_batch_size: int | None = None

    def __init__(
        self,
        config: SolapiConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn = asyncio.sleep,
        clock: Callable[[], datetime] = now_utc,
        salt: Callable[[], str] = random_salt,
    ) -> None:
        missing = tuple(
            name
            for name, value in (("api_key", config.api_key), ("api_secret", config.api_secret))
            if not isinstance(value, str) or not value.strip()
        )
        if missing:
            raise ProviderConfigError(
                f"solapi: {' and '.join(missing)} required",
                provider_id=PROVIDER_ID,
                missing=missing,
            )
        super().__init__(
            PROVIDER_ID, timeout=config.timeout, retry=config.retry, session=session, sleep=sleep
        )
        self._config = config
        self._base_url = validate_base_url(config.base_url, "base_url", PROVIDER_ID)
        self._clock = clock
        self._salt = salt

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn = asyncio.sleep,
    ) -> SolapiProvider:
        """Build from ``SOLAPI_API_KEY`` and ``SOLAPI_API_SECRET`` (required) and optional settings.

        Optional: ``SOLAPI_BASE_URL``, ``SOLAPI_DEFAULT_FROM``, ``SOLAPI_KAKAO_PF_ID``,
        ``SOLAPI_RCS_BRAND_ID``, ``SOLAPI_NAVER_TALK_ID``, ``SOLAPI_APP_ID``,
        ``SOLAPI_DEFAULT_COUNTRY``.
        """
        source = os.environ if env is None else env
        required = require_env(source, PROVIDER_ID, "SOLAPI_API_KEY", "SOLAPI_API_SECRET")
        config = SolapiConfig(
            api_key=required["SOLAPI_API_KEY"],
            api_secret=required["SOLAPI_API_SECRET"],
            default_from=env_value(source, "SOLAPI_DEFAULT_FROM"),
            kakao_pf_id=env_value(source, "SOLAPI_KAKAO_PF_ID"),
            rcs_brand_id=env_value(source, "SOLAPI_RCS_BRAND_ID"),
            naver_talk_id=env_value(source, "SOLAPI_NAVER_TALK_ID"),
            app_id=env_value(source, "SOLAPI_APP_ID"),
            default_country=env_value(source, "SOLAPI_DEFAULT_COUNTRY"),
            base_url=env_value(source, "SOLAPI_BASE_URL") or DEFAULT_BASE_URL,
        )
        return cls(config, session=session, sleep=sleep)

    @property
    def id(self) -> str:
        return PROVIDER_ID

    @property
    def name(self) -> str:
        return PROVIDER_NAME

    @property
    def supported_types(self) -> frozenset[MessageType]:
        return frozenset(KMSG_MESSAGE_TYPES)

    def get_onboarding_spec(self) -> ProviderOnboardingSpec:
        return get_provider_onboarding_spec(PROVIDER_ID)

    async def health_check(self) -> ProviderHealth:
        return ProviderHealth(
            healthy=True, data={"provider": PROVIDER_ID, "baseUrl": self._base_url}
        )

    # transport -----------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        date = format_timestamp(self._clock())
        return {
            "Authorization": solapi_authorization(
                self._config.api_key, self._config.api_secret, date, self._salt()
            ),
            "Content-Type": "application/json",
        }

    def _http_error(self, response: HttpResponse, payload: Any) -> KMsgError:
        body = payload if isinstance(payload, dict) else {}
        error_code = str(body.get("errorCode") or f"HTTP_{response.status}")
        error_message = str(body.get("errorMessage") or f"SOLAPI HTTP {response.status}")
        return KMsgError(
            map_solapi_http_status(response.status),
            error_message,
            provider_id=PROVIDER_ID,
            provider_error_code=error_code,
            provider_error_text=error_message,
            http_status=response.status,
            retry_after_ms=response.retry_after_ms(),
            details={"errorCode": error_code, "errorMessage": error_message},
        )

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
    ) -> Result[dict[str, Any], KMsgError]:
        """One API call with retries; a JSON object on success."""
        url = join_url(self._base_url, path)

        def read(response: HttpResponse) -> Result[dict[str, Any], KMsgError]:
            payload = parse_json(response.text)
            if not response.ok:
                return Fail(self._http_error(response, payload))
            if isinstance(payload, MalformedResponse) or not isinstance(payload, dict):
                return Fail(malformed_response_error(PROVIDER_ID, response))
            return Ok(payload)

        return await self._request(
            method, url, read, headers=self._headers, json_body=body, params=params
        )

    async def _read_file(self, source: BinaryInput) -> Result[tuple[bytes, str | None], KMsgError]:
        if source.data is not None:
            return Ok((source.data, source.filename))
        ref = (source.ref or "").strip()
        if not ref:
            return fail_invalid_request("file reference is empty", provider_id=PROVIDER_ID)
        if ref.startswith(("http://", "https://")):
            fetched = await self._transport.request("GET", ref)
            if isinstance(fetched, Fail):
                return fetched
            if not fetched.value.ok:
                return Fail(
                    KMsgError(
                        KMsgErrorCode.INVALID_REQUEST,
                        f"Could not download {ref} (HTTP {fetched.value.status})",
                        provider_id=PROVIDER_ID,
                    )
                )
            return Ok((fetched.value.body, source.filename or ref.rsplit("/", 1)[-1] or None))
        path = Path(ref)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            return fail_invalid_request(
                f"Cannot read file {ref}: {exc.strerror}", provider_id=PROVIDER_ID
            )
        return Ok((data, source.filename or path.name))

    async def upload_file(
        self, source: BinaryInput, file_type: str, *, link: str | None = None
    ) -> Result[str, KMsgError]:
        """Upload through ``POST /storage/v1/files``; the file id on success."""
        read = await self._read_file(source)
        if isinstance(read, Fail):
            return read
        data, name = read.value
        body = _drop_none(
            {
                "file": base64.b64encode(data).decode("ascii"),
                "type": file_type,
                "name": name,
                "link": link,
            }
        )
        uploaded = await self._call("POST", "/storage/v1/files", body=body)
        if isinstance(uploaded, Fail):
            return uploaded
        file_id = uploaded.value.get("fileId")
        if not isinstance(file_id, str) or not file_id:
            return Fail(
                KMsgError(
                    KMsgErrorCode.PROVIDER_ERROR,
                    f"Failed to upload {file_type} file",
                    provider_id=PROVIDER_ID,
                )
            )
        return Ok(file_id)

    # message building ----------------------------------------------------------------

    @staticmethod
    def _image_source(
        options: SmsSendOptions | FriendTalkSendOptions | RcsTextSendOptions,
    ) -> BinaryInput | None:
        if options.image_url and options.image_url.strip():
            return BinaryInput(ref=options.image_url.strip())
        return options.media.image if options.media else None

    def _pf_id(
        self, options: AlimTalkSendOptions | FriendTalkSendOptions
    ) -> Result[str, KMsgError]:
        profile = options.kakao.profile_id if options.kakao else None
        pf_id = (profile or self._config.kakao_pf_id or "").strip()
        if not pf_id:
            return Fail(
                SenderKeyRequiredError(
                    PROVIDER_ID,
                    "kakao profileId is required (options.kakao.profile_id or config.kakao_pf_id)",
                    setting="SOLAPI_KAKAO_PF_ID",
                )
            )
        return Ok(pf_id)

    async def build_message(
        self, options: SendOptions
    ) -> Result[tuple[dict[str, Any], tuple[SendWarning, ...]], KMsgError]:
        """The ``message`` object for ``/messages/v4/send`` and any warnings (uploads files)."""
        to = normalize_keep_plus(options.to)
        if not to.lstrip("+"):
            return fail_invalid_request("to is required", provider_id=PROVIDER_ID)
        solapi_type = options.type.value
        if isinstance(options, AlimTalkSendOptions):
            solapi_type = "ATA"
        elif isinstance(options, FriendTalkSendOptions):
            solapi_type = "CTI" if self._image_source(options) is not None else "CTA"
        message: dict[str, Any] = {"to": to, "type": solapi_type}
        country = options.country or self._config.default_country
        if country:
            message["country"] = country.lstrip("+")
        if options.custom_fields:
            message["customFields"] = {k: str(v) for k, v in options.custom_fields.items()}
        sender = normalize_keep_plus(options.from_ or self._config.default_from or "")
        if sender:
            message["from"] = sender
        elif options.type in _SENDER_REQUIRED:
            return fail_invalid_request(
                "from is required (options.from or config.default_from)", provider_id=PROVIDER_ID
            )
        if options.scheduled_at is not None:
            message["scheduledDate"] = format_timestamp(options.scheduled_at)

        warnings: tuple[SendWarning, ...] = ()
        if isinstance(options, SmsSendOptions):
            built = await self._sms_fields(options, message)
        elif isinstance(options, AlimTalkSendOptions):
            built = self._alimtalk_fields(options, message)
            if (
                isinstance(built, Ok)
                and options.failover is not None
                and options.failover.enabled is True
            ):
                warnings = (
                    SendWarning(
                        SendWarningCode.FAILOVER_PARTIAL_PROVIDER,
                        "SOLAPI maps failover only partly (no fallback channel choice); an "
                        "API-level fallback may follow for non-Kakao-user failures.",
                        provider_id=PROVIDER_ID,
                        mapped_fields=("kakao.disableSms", "text", "subject"),
                        unsupported_fields=("fallbackChannel",),
                    ),
                )
        elif isinstance(options, FriendTalkSendOptions):
            built = await self._friendtalk_fields(options, message)
        elif isinstance(options, NsaSendOptions):
            built = self._nsa_fields(options, message)
        elif isinstance(options, VoiceSendOptions):
            built = self._voice_fields(options, message)
        elif isinstance(options, FaxSendOptions):
            built = await self._fax_fields(options, message)
        else:
            built = await self._rcs_fields(options, message)
        if isinstance(built, Fail):
            return built
        return Ok((message, warnings))

    async def _sms_fields(
        self, options: SmsSendOptions, message: dict[str, Any]
    ) -> Result[None, KMsgError]:
        if not options.text:
            return fail_invalid_request("text is required", provider_id=PROVIDER_ID)
        message["text"] = options.text
        if options.subject and options.type is not MessageType.SMS:
            message["subject"] = options.subject
        if options.type is MessageType.MMS:
            source = self._image_source(options)
            if source is None:
                return fail_invalid_request("image is required for MMS", provider_id=PROVIDER_ID)
            uploaded = await self.upload_file(source, "MMS")
            if isinstance(uploaded, Fail):
                return uploaded
            message["imageId"] = uploaded.value
        return Ok(None)

    def _alimtalk_fields(
        self, options: AlimTalkSendOptions, message: dict[str, Any]
    ) -> Result[None, KMsgError]:
        pf_id = self._pf_id(options)
        if isinstance(pf_id, Fail):
            return pf_id
        if not options.template_id.strip():
            return fail_invalid_request(
                "templateId is required for ALIMTALK", provider_id=PROVIDER_ID
            )
        variables = _variables_with_hash_keys(options.variables)
        if isinstance(variables, Fail):
            return variables
        kakao = options.kakao
        failover = options.failover
        disable_sms = kakao.disable_sms if kakao else None
        if failover is not None and failover.enabled is True:
            disable_sms = False
        elif failover is not None and failover.enabled is False:
            disable_sms = True
        message["kakaoOptions"] = _drop_none(
            {
                "pfId": pf_id.value,
                "templateId": options.template_id.strip(),
                "variables": variables.value,
                "disableSms": disable_sms,
                "adFlag": kakao.ad_flag if kakao else None,
                "buttons": _kakao_buttons(kakao.buttons) if kakao and kakao.buttons else None,
                "imageId": kakao.image_id if kakao else None,
            }
        )
        if failover is not None:
            content = (failover.fallback_content or "").strip()
            if content:
                message["text"] = content
            if failover.fallback_title:
                message["subject"] = failover.fallback_title
        return Ok(None)

    async def _friendtalk_fields(
        self, options: FriendTalkSendOptions, message: dict[str, Any]
    ) -> Result[None, KMsgError]:
        if not options.text:
            return fail_invalid_request("text is required for FRIENDTALK", provider_id=PROVIDER_ID)
        pf_id = self._pf_id(options)
        if isinstance(pf_id, Fail):
            return pf_id
        message["text"] = options.text
        kakao = options.kakao
        if kakao and kakao.buttons:
            buttons = _kakao_buttons(kakao.buttons)
        else:
            web_links = tuple(b for b in options.buttons if b.type == "WL" and b.url_mobile)
            buttons = _kakao_buttons(web_links)
        image_id = kakao.image_id if kakao else None
        source = self._image_source(options)
        if source is not None:
            link = (kakao.image_link if kakao else None) or (
                buttons[0].get("linkMo") if buttons else None
            )
            if not link:
                return fail_invalid_request(
                    "FriendTalk images need kakao.image_link (or a button with a mobile URL)",
                    provider_id=PROVIDER_ID,
                )
            uploaded = await self.upload_file(source, "KAKAO", link=link)
            if isinstance(uploaded, Fail):
                return uploaded
            image_id = uploaded.value
        variables = _variables_with_hash_keys(options.variables)
        if isinstance(variables, Fail):
            return variables
        message["kakaoOptions"] = _drop_none(
            {
                "pfId": pf_id.value,
                "variables": variables.value or None,
                "disableSms": kakao.disable_sms if kakao else None,
                "adFlag": kakao.ad_flag if kakao else None,
                "buttons": buttons or None,
                "imageId": image_id,
            }
        )
        return Ok(None)

    def _nsa_fields(
        self, options: NsaSendOptions, message: dict[str, Any]
    ) -> Result[None, KMsgError]:
        naver = options.naver
        talk_id = ((naver.talk_id if naver else None) or self._config.naver_talk_id or "").strip()
        if not talk_id:
            return fail_invalid_request(
                "naver talkId is required (options.naver.talk_id or config.naver_talk_id)",
                provider_id=PROVIDER_ID,
            )
        variables = {**_plain_variables(options.variables)}
        if naver and naver.variables:
            variables.update(_plain_variables(naver.variables))
        message["naverOptions"] = _drop_none(
            {
                "talkId": talk_id,
                "templateId": (naver.template_id if naver else None) or options.template_id,
                "variables": variables or None,
                "disableSms": naver.disable_sms if naver else None,
                "buttons": _kakao_buttons(naver.buttons) if naver and naver.buttons else None,
            }
        )
        return Ok(None)

    def _voice_fields(
        self, options: VoiceSendOptions, message: dict[str, Any]
    ) -> Result[None, KMsgError]:
        if not options.text:
            return fail_invalid_request("text is required for VOICE", provider_id=PROVIDER_ID)
        message["text"] = options.text
        voice = options.voice
        message["voiceOptions"] = _drop_none(
            {
                "voiceType": (
                    voice.voice_type if voice and voice.voice_type else VoiceType.FEMALE
                ).value,
                "headerMessage": voice.header_message if voice else None,
                "tailMessage": voice.tail_message if voice else None,
                "replyRange": voice.reply_range if voice else None,
                "counselorNumber": voice.counselor_number if voice else None,
            }
        )
        return Ok(None)

    async def _fax_fields(
        self, options: FaxSendOptions, message: dict[str, Any]
    ) -> Result[None, KMsgError]:
        file_ids = list(options.fax.file_ids)
        if not file_ids:
            if not options.fax.file_urls:
                return fail_invalid_request(
                    "fax.fileIds or fax.fileUrls is required", provider_id=PROVIDER_ID
                )
            for url in options.fax.file_urls:
                uploaded = await self.upload_file(BinaryInput(ref=url), "FAX")
                if isinstance(uploaded, Fail):
                    return uploaded
                file_ids.append(uploaded.value)
        message["faxOptions"] = {"fileIds": file_ids}
        return Ok(None)

    async def _rcs_fields(
        self, options: RcsTextSendOptions | RcsTemplateSendOptions, message: dict[str, Any]
    ) -> Result[None, KMsgError]:
        rcs = options.rcs
        brand_id = ((rcs.brand_id if rcs else None) or self._config.rcs_brand_id or "").strip()
        if not brand_id:
            return fail_invalid_request(
                "rcs brandId is required (options.rcs.brand_id or config.rcs_brand_id)",
                provider_id=PROVIDER_ID,
            )
        variables = _plain_variables(options.variables)
        if rcs and rcs.variables:
            variables.update(_plain_variables(rcs.variables))
        rcs_options: dict[str, Any] = _drop_none(
            {
                "brandId": brand_id,
                "buttons": _kakao_buttons(rcs.buttons) if rcs and rcs.buttons else None,
                "copyAllowed": rcs.copy_allowed if rcs else None,
                "mmsType": rcs.mms_type if rcs else None,
                "commercialType": rcs.commercial_type if rcs else None,
                "disableSms": rcs.disable_sms if rcs else None,
                "variables": variables or None,
            }
        )
        if isinstance(options, RcsTemplateSendOptions):
            template_id = ((rcs.template_id if rcs else None) or options.template_id).strip()
            if not template_id:
                return fail_invalid_request("templateId is required", provider_id=PROVIDER_ID)
            rcs_options["templateId"] = template_id
        else:
            if not options.text:
                return fail_invalid_request("text is required", provider_id=PROVIDER_ID)
            message["text"] = options.text
            if options.subject:
                message["subject"] = options.subject
            body = rcs.additional_body if rcs else None
            source = self._image_source(options)
            image_id = body.image_id if body else None
            if options.type is MessageType.RCS_MMS and source is not None:
                uploaded = await self.upload_file(source, "RCS")
                if isinstance(uploaded, Fail):
                    return uploaded
                image_id = uploaded.value
            if body is not None or image_id is not None:
                # SOLAPI's field really is spelt "imaggeId".
                rcs_options["additionalBody"] = _drop_none(
                    {
                        "title": (body.title if body else None) or options.subject or "RCS",
                        "description": (body.description if body else None) or options.text,
                        "imaggeId": image_id,
                        "buttons": _kakao_buttons(body.buttons) if body and body.buttons else None,
                    }
                )
        message["rcsOptions"] = rcs_options
        return Ok(None)

    # provider API --------------------------------------------------------------------

    async def send(self, options: SendOptions) -> Result[SendResult, KMsgError]:
        try:
            built = await self.build_message(options)
            if isinstance(built, Fail):
                return built
            message, warnings = built.value
            body: dict[str, Any] = {"message": message}
            if self._config.app_id:
                body["agent"] = {"appId": self._config.app_id}
            sent = await self._call("POST", "/messages/v4/send", body=body)
            if isinstance(sent, Fail):
                return sent
            data = sent.value
            status_code = str(data.get("statusCode") or "")
            if status_code and map_solapi_delivery_status(status_code) is DeliveryStatus.FAILED:
                text = str(data.get("statusMessage") or "SOLAPI did not accept the message")
                return Fail(
                    KMsgError(
                        KMsgErrorCode.PROVIDER_ERROR,
                        text,
                        provider_id=PROVIDER_ID,
                        provider_error_code=status_code,
                        provider_error_text=text,
                        retryable=False,  # the vendor refused this message; resending won't help
                    )
                )
            provider_message_id = data.get("messageId")
            if not provider_message_id:
                listed = data.get("messageList")
                if isinstance(listed, list) and listed and isinstance(listed[0], dict):
                    provider_message_id = listed[0].get("messageId")
            return Ok(
                SendResult(
                    message_id=options.message_id or "",
                    provider_id=PROVIDER_ID,
                    status=MessageStatus.SENT,
                    type=options.type,
                    to=options.to,
                    provider_message_id=str(provider_message_id) if provider_message_id else None,
                    warnings=warnings,
                    raw=data,
                )
            )
        except Exception as exc:
            return Fail(unexpected_error(PROVIDER_ID, exc))

    async def get_delivery_status(
        self, query: DeliveryStatusQuery
    ) -> Result[DeliveryStatusResult | None, KMsgError]:
        try:
            listed = await self._call(
                "GET",
                "/messages/v4/list",
                params={
                    "messageId": query.provider_message_id,
                    "limit": "1",
                    "dateType": "CREATED",
                },
            )
            if isinstance(listed, Fail):
                return listed
            messages = listed.value.get("messageList")
            item: Any = None
            if isinstance(messages, dict):
                item = messages.get(query.provider_message_id) or next(
                    (
                        m
                        for m in messages.values()
                        if isinstance(m, dict) and m.get("messageId") == query.provider_message_id
                    ),
                    None,
                )
            elif isinstance(messages, list):
                item = next(
                    (
                        m
                        for m in messages
                        if isinstance(m, dict) and m.get("messageId") == query.provider_message_id
                    ),
                    None,
                )
            if not isinstance(item, dict):
                return Ok(None)
            code = str(item["statusCode"]) if item.get("statusCode") is not None else None
            return Ok(
                DeliveryStatusResult(
                    provider_id=PROVIDER_ID,
                    provider_message_id=query.provider_message_id,
                    status=map_solapi_delivery_status(code),
                    status_code=code,
                    status_message=str(item["statusMessage"])
                    if item.get("statusMessage")
                    else None,
                    sent_at=_parse_date(item.get("dateSent")),
                    delivered_at=_parse_date(item.get("dateCompleted")),
                    raw=item,
                )
            )
        except Exception as exc:
            return Fail(unexpected_error(PROVIDER_ID, exc))

    async def get_balance(
        self, query: BalanceQuery | None = None
    ) -> Result[BalanceResult, KMsgError]:
        try:
            fetched = await self._call("GET", "/cash/v1/balance")
            if isinstance(fetched, Fail):
                return fetched
            data = fetched.value
            amount = _as_float(data.get("balance"))
            if amount is None:
                amount = _as_float(data.get("point"))
            if amount is None:
                return Fail(
                    KMsgError(
                        KMsgErrorCode.UNKNOWN_ERROR,
                        "Invalid balance response from SOLAPI",
                        provider_id=PROVIDER_ID,
                    )
                )
            return Ok(
                BalanceResult(
                    PROVIDER_ID, amount, channel=query.channel if query else None, raw=data
                )
            )
        except Exception as exc:
            return Fail(unexpected_error(PROVIDER_ID, exc))


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _parse_date(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return parse_timestamp(value)
    except Exception:
        return None
